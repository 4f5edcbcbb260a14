"""Top lists written by the streaming job (``pipelines.graph.count_and_store`` with
``transforms.top.TopEntities``) equal a plain Python reference computed from the events:
random streams with duplicates, late and too-late events and watermark jumps over several
hours, many videos; a second branch keeps only ``k`` = 2 entries over 3 shards, so that the
bounded per-shard state evicts (the exactness argument of ``transforms.top``) all the time.
The reference: docs/contract.md, Acceptance (``tests.test_properties.model``), then per (type,
granularity, window) sort by (-count, video_id) and keep the first K; a day sums its hours."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import runners
from pipelines.graph import bigtable_writer
from pipelines.options import SinkConfig
from query.top import TopReader
from schemas import storage
from schemas.event import US_PER_S, format_time_us
from tests.test_properties import _EXAMPLES, LATENESS_S, START_US, _case, model
from transforms.count_events import DAY_COUNTS, ROWS
from transforms.top import TopEntities
from viewcounts.commands.scenario import case_pipeline, case_sinks, policy_of_case, run_to_end
from viewcounts.local import provision

pytestmark = [pytest.mark.emulator, pytest.mark.slow]
PROJECT, INSTANCE = "test-project", "test-instance"
VIDEOS = [f"V{i}" for i in range(12)] + ["V#1", "é", "%23"]
SMALL_K, SMALL_SHARDS = 2, 3


@st.composite
def streams(draw, earliest_s: int = -900):
    """Steps as ``tests.test_properties`` takes them, over more videos and up to hours of event
    time: ("publish", [event, ...]), ("wait", s), ("watermark", us). Events are up to
    ``-earliest_s`` seconds behind the watermark (past ``LATENESS_S``: too late)."""
    steps, known = [], []
    proc_us = wm_us = START_US
    for _ in range(draw(st.integers(3, 12))):
        kind = draw(st.sampled_from(["publish", "publish", "publish", "wait", "watermark"]))
        if kind == "wait":
            s = draw(st.integers(1, 2400))
            proc_us += s * US_PER_S
            steps.append(("wait", s))
        elif kind == "watermark":
            wm_us = min(wm_us + draw(st.integers(0, 2400)) * US_PER_S, proc_us + 60 * US_PER_S)
            steps.append(("watermark", wm_us))
        else:
            events = []
            for _ in range(draw(st.integers(1, 12))):
                if known and draw(st.integers(0, 4)) == 0:
                    events.append(dict(draw(st.sampled_from(known))))  # a same-time copy: a duplicate
                    continue
                t = wm_us + draw(st.integers(earliest_s, 200)) * US_PER_S
                boundary = wm_us - LATENESS_S * US_PER_S
                if abs(t - boundary) < 10 * US_PER_S:
                    t = boundary + 20 * US_PER_S
                e = {
                    "event_id": f"e{len(known)}",
                    "video_id": draw(st.sampled_from(VIDEOS)),
                    "event_type": draw(st.sampled_from(["view", "like"])),
                    "event_time": format_time_us(t),
                }
                events.append(e)
                known.append(e)
            steps.append(("publish", events))
    return steps


def reference_tops(rows: dict, k: int) -> dict:
    """``{(event_type, granularity, window_start_s): [(video_id, count), ...]}`` from the model's
    ``{(video_id, event_type, granularity, window_start_s): (count, ...)}``: the first ``k`` by
    (-count, video_id); days sum their hours."""
    counts: dict = defaultdict(lambda: defaultdict(int))
    for (video, etype, g, w), agg in rows.items():
        counts[(etype, g, w)][video] += agg[0]
        if g == "hour":
            counts[(etype, "day", w - w % 86400)][video] += agg[0]
    return {key: sorted(per_video.items(), key=lambda vc: (-vc[1], vc[0]))[:k] for key, per_video in counts.items()}


def run_stream(case: dict, table: str, small_table: str, tmp: str | None = None, flink_parallelism: int = 0) -> None:
    """The streaming job of ``case`` as ``viewcounts.commands.scenario.case_pipeline`` builds it
    (``count_and_store``: the full job, its archive under ``tmp``, default a temporary folder)
    on the local runner, or on an embedded Flink at ``flink_parallelism``, plus a second
    ``TopEntities`` branch with ``SMALL_K`` entries over ``SMALL_SHARDS`` into ``small_table``;
    run to its end (``run_to_end``)."""
    runner = "flink" if flink_parallelism else "local"
    with contextlib.nullcontext(tmp) if tmp else tempfile.TemporaryDirectory(prefix="top-") as tmp:
        sinks = case_sinks(PROJECT, INSTANCE, table, tmp)
        pipeline, counted = case_pipeline(case, sinks, runner, flink_parallelism or 1)
        small = SinkConfig(
            PROJECT,
            INSTANCE,
            small_table,
            archive_path=None,
            dead_letter_topic=None,
            dead_letter_path=f"{tmp}/dead-letters-small",
        )
        (
            (counted[ROWS], counted[DAY_COUNTS])
            | "small top"
            >> TopEntities(
                policy_of_case(case)[0].allowed_lateness_s,
                SMALL_SHARDS,
                SMALL_K,
                runners.top_cleanup_grace_s(pipeline.options),
            )
            | "write small top" >> bigtable_writer(small)
        )
        run_to_end(pipeline, runner)


def stored_tops(table: str, windows) -> dict:
    """The stored top list of each of ``windows`` (``(event_type, granularity, window_start_s)``)
    read through ``query.top`` (absent: an empty list)."""
    with TopReader(PROJECT, INSTANCE, table) as reader:
        return {
            (t, g, w): reader.get_top(t, g, format_time_us(w * US_PER_S), storage.TOP_K).items for t, g, w in windows
        }


def _new_table() -> str:
    name = f"top-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, name)
    return name


def check_stream(steps, flink_parallelism: int = 0) -> None:
    rows, _ = model(steps)
    table, small_table = _new_table(), _new_table()
    run_stream(_case(steps, 3), table, small_table, flink_parallelism=flink_parallelism)
    want, want_small = reference_tops(rows, storage.TOP_K), reference_tops(rows, SMALL_K)
    # every window of the reference, and windows next to them that must hold nothing
    probes = set(want) | {(t, g, w + storage.TOP_GRANULARITY_SECONDS[g]) for t, g, w in want}
    assert stored_tops(table, probes) == {key: want.get(key, []) for key in probes}
    assert stored_tops(small_table, probes) == {key: want_small.get(key, []) for key in probes}


@settings(max_examples=8, **_EXAMPLES)
@given(streams())
def test_streaming_top_lists_equal_the_reference(bigtable_host, steps):
    check_stream(steps)


@pytest.mark.flink
@settings(max_examples=2, **_EXAMPLES)
@given(streams())
def test_streaming_top_lists_equal_the_reference_on_flink_at_parallelism_2(bigtable_host, steps):
    check_stream(steps, flink_parallelism=2)


def all_top_lists(table: str) -> dict:
    """Every stored top list: ``{(row key, qualifier): [(video_id, count), ...]}`` (a scan of the
    top rows, for tests)."""
    from google.cloud.bigtable.row_filters import CellsColumnLimitFilter

    from pipelines.bigtable_scan import rows_matching

    rows = rows_matching(
        PROJECT, INSTANCE, table, b"(?s)^" + storage.TOP_ROW_PREFIX + b".*$", CellsColumnLimitFilter(1)
    )
    return {
        (row.row_key, q): storage.decode_top(cells[0].value)
        for row in rows
        for q, cells in row.cells[storage.FAMILY].items()
    }


@settings(max_examples=2, **_EXAMPLES)
@given(streams(earliest_s=-500))
def test_streaming_and_the_batch_recompute_write_the_same_top_lists(bigtable_host, tmp_path_factory, steps):
    """One archive (a stream with no too-late event: streaming counts what the archive holds):
    the streaming job's top lists and the batch recompute's over the whole day are the same."""
    from pipelines import batch_recompute

    tmp = str(tmp_path_factory.mktemp("agree"))
    table, small_table, batch_table = _new_table(), _new_table(), _new_table()
    run_stream(_case(steps, 3), table, small_table, tmp)
    day_s = START_US // US_PER_S - START_US // US_PER_S % 86400
    batch_recompute.build_pipeline(
        [
            f"--archive_path={tmp}/archive",
            f"--start={format_time_us(day_s * US_PER_S)}",
            f"--end={format_time_us((day_s + 86400) * US_PER_S)}",
            f"--bigtable_project={PROJECT}",
            f"--bigtable_instance={INSTANCE}",
            f"--bigtable_table={batch_table}",
            f"--dead_letter_path={tmp}/recompute-dead-letters",
        ]
    ).run().wait_until_finish()
    streamed = all_top_lists(table)
    assert streamed == all_top_lists(batch_table)
    assert streamed == {
        (storage.top_row_key(t, g, w), storage.qualifier(w)): items
        for (t, g, w), items in reference_tops(model(steps)[0], storage.TOP_K).items()
    }
