"""The linear batch recompute (``transforms/batch_count.py``, ``pipelines/batch_recompute.py``).

* The batch function against an independent model (``viewcounts.commands.reconcile``'s polars computation): for any
  split of the events into files, shards and batches, any delivery order, exact duplicates
  and re-stamped copies (another time, entity, value, hour), the stored aggregates are those
  of the copy first in archive order (written time, file name, line) of each ``event_id``.
* The Beam job on the FnApiRunner over archive files against the same model, with
  unreadable lines as dead letters.
* Linearity without timing: every stage's element count and the ids one dedup shard holds are
  bounded by the events read, whatever the span of event time (1 day or 30 days).
"""

from __future__ import annotations

import os
import random
import tempfile

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.archive import file_name, hour_folder
from schemas.event import US_PER_S, format_time_us
from transforms.batch_count import EventBatch, MergeMinutePartials, first_copies, fold_minutes, rows_of
from transforms.validate import shard_of
from viewcounts.commands.reconcile import expected_aggregates, reconcile

H0 = 1_715_680_800  # 2024-05-14T10:00:00Z


def model(copies: list[dict]) -> dict[tuple, tuple]:
    """Independent of the pipeline: the copies sorted by ``(written_ms, file_name, line)``,
    then ``viewcounts.commands.reconcile.expected_aggregates`` (polars: the first copy of each
    ``event_id``, count/value_count/sum/min/max per (video, type, minute or hour))."""
    if not copies:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as manifest:
        for c in sorted(copies, key=lambda c: (c["written_ms"], c["file_name"], c["line"])):
            manifest.write(
                orjson.dumps(
                    {
                        "event_id": c["event_id"],
                        "video_id": c["video_id"],
                        "event_type": c["event_type"],
                        "event_time": format_time_us(c["t_us"]),
                        "value": c["value"],
                    }
                )
                + b"\n"
            )
        manifest.flush()
        return expected_aggregates(manifest.name)


def _as_stored(rows) -> dict[tuple, tuple]:
    return {(r.video_id, r.event_type, r.granularity, r.window_start_s): tuple(r.aggregate) for r in rows}


@st.composite
def archives(draw):
    """Copies of events in files: ``[{event fields, written_ms, file_name, line}]``. Ids come
    from a small pool, so many copies share one; a copy is exact or re-stamped (any time in
    3 hours, entity, type or value)."""
    n_ids = draw(st.integers(1, 25))
    n_files = draw(st.integers(1, 6))
    files = [(draw(st.integers(0, 3)), f"events-{i:02d}-{draw(st.integers(0, 9))}.jsonl") for i in range(n_files)]
    originals = {}
    copies = []
    lines = [0] * n_files
    for _ in range(draw(st.integers(0, 60))):
        eid = f"e{draw(st.integers(0, n_ids - 1))}"
        if eid not in originals or draw(st.booleans()):
            ev = {
                "event_id": eid,
                "video_id": draw(st.sampled_from(["V1", "V2", "x#%"])),
                "event_type": draw(st.sampled_from(["view", "like"])),
                "t_us": H0 * US_PER_S + draw(st.integers(0, 3 * 3600 * US_PER_S - 1)),
                "value": draw(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3)))),
            }
            originals.setdefault(eid, ev)
        else:
            ev = originals[eid]
        f = draw(st.integers(0, n_files - 1))
        lines[f] += draw(st.integers(1, 3))
        copies.append({**ev, "written_ms": files[f][0], "file_name": files[f][1], "line": lines[f]})
    return copies


def _batches(copies: list[dict], shards: int, rnd: random.Random) -> dict[int, list[EventBatch]]:
    """The copies as ``EventBatch``es per shard: each file's copies split at random points."""
    by_file: dict[tuple, list[dict]] = {}
    for c in copies:
        by_file.setdefault((c["written_ms"], c["file_name"]), []).append(c)
    out: dict[int, list[EventBatch]] = {}
    for (written_ms, name), cs in by_file.items():
        per_shard: dict[int, list[dict]] = {}
        for c in cs:
            per_shard.setdefault(shard_of(c["event_id"], shards), []).append(c)
        for shard, part in per_shard.items():
            while part:
                k = rnd.randint(1, len(part))
                chunk, part = part[:k], part[k:]
                out.setdefault(shard, []).append(
                    EventBatch(
                        written_ms,
                        name,
                        [c["line"] for c in chunk],
                        [c["event_id"] for c in chunk],
                        [c["video_id"] for c in chunk],
                        [c["event_type"] for c in chunk],
                        [c["t_us"] for c in chunk],
                        [c["value"] for c in chunk],
                    )
                )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(archives(), st.integers(1, 5), st.randoms(use_true_random=False))
def test_the_batch_function_equals_the_model_for_any_batching_and_copies(copies, shards, rnd):
    combine = MergeMinutePartials()
    per_entity: dict[tuple, list] = {}
    for shard, batches in _batches(copies, shards, rnd).items():
        rnd.shuffle(batches)
        # batches cross the shuffle as bytes
        best, n = first_copies(EventBatch.decode(b.encode()) for b in batches)
        assert n == len([c for c in copies if shard_of(c["event_id"], shards) == shard])
        for key, partial in fold_minutes(best).items():
            per_entity.setdefault(key, []).append(partial)
    rows = []
    for (video, etype), partials in per_entity.items():
        rnd.shuffle(partials)
        # combiner lifting: partial accumulators, merged in any grouping
        cut = rnd.randint(0, len(partials))
        accs = [combine.add_input(combine.create_accumulator(), p) for p in partials[:cut]]
        if partials[cut:]:
            acc = combine.create_accumulator()
            for p in partials[cut:]:
                acc = combine.add_input(acc, p)
            accs.append(acc)
        rows += rows_of(video, etype, combine.extract_output(combine.merge_accumulators(accs)), 1_000)
    got = _as_stored(rows)
    assert len(got) == len(rows)  # one row per (entity, granularity, window)
    assert reconcile(model(copies), got) == []
    assert all(r.pane_index == 0 and r.cell_timestamp_us == (1_000 + r.aggregate.count) * 1000 for r in rows)


def write_archive(root: str, copies: list[dict], run_id: str = "0123456789") -> None:
    """Write ``copies`` (``archives`` shape; ``file_name`` is a tag) as archive files laid out
    by ``schemas.archive``: one file per (tag, event hour), lines at their ``line`` numbers
    (blank lines between), files named with their ``written_ms`` and the tag (so they sort as
    ``(written_ms, tag)`` do)."""
    files: dict[tuple, dict[int, bytes]] = {}
    for c in copies:
        hour_s = c["t_us"] // US_PER_S // 3600 * 3600
        event = {
            "event_id": c["event_id"],
            "video_id": c["video_id"],
            "event_type": c["event_type"],
            "event_time": format_time_us(c["t_us"]),
        }
        if c["value"] is not None:
            event["value"] = c["value"]
        files.setdefault((c["written_ms"], c["file_name"], hour_s), {})[c["line"]] = orjson.dumps(event)
    for (written_ms, tag, hour_s), lines in files.items():
        folder = hour_folder(root, hour_s)
        os.makedirs(folder, exist_ok=True)
        unique = tag.encode().hex()  # file names sort as their tags do
        with open(os.path.join(folder, file_name("events", written_ms, run_id, unique)), "wb") as f:
            f.write(b"\n".join(lines.get(i, b"") for i in range(1, max(lines) + 1)) + b"\n")


def _recompute_rows(tmp_path, archive: str, start_s: int, end_s: int, *extra: str):
    """Run the recompute job on the FnApiRunner with ``--rows_path``; ``(rows, result)``."""
    from pipelines import batch_recompute
    from viewcounts.commands.recompute import read_row_files

    rows_path = tmp_path / f"rows-{len(os.listdir(tmp_path))}"
    result = batch_recompute.build_pipeline(
        [
            f"--archive_path={archive}",
            f"--start={format_time_us(start_s * US_PER_S)}",
            f"--end={format_time_us(end_s * US_PER_S)}",
            f"--rows_path={rows_path}",
            f"--dead_letter_path={tmp_path / 'dead-letters'}",
            *extra,
        ]
    ).run()
    result.wait_until_finish()
    return read_row_files(str(rows_path)), result


def random_copies(n: int, distinct: int, hours: int, values: list, seed: int) -> list[dict]:
    """``n`` archived view copies (``write_archive``'s shape) of ``distinct`` event ids
    (``e{i % distinct}``), each drawn anew: one of 4 videos, a time in the ``hours`` from ``H0``,
    one of ``values``, one of 3 files written within 5 s (the copies of an id differ)."""
    rnd = random.Random(seed)
    return [
        {
            "event_id": f"e{i % distinct}",
            "video_id": f"V{rnd.randrange(4)}",
            "event_type": "view",
            "t_us": H0 * US_PER_S + rnd.randrange(hours * 3600 * US_PER_S),
            "value": rnd.choice(values),
            "written_ms": 1_700_000_000_000 + rnd.randrange(5) * 1000,
            "file_name": f"f{rnd.randrange(3)}",
            "line": i + 1,
        }
        for i in range(n)
    ]


def test_the_job_over_archive_files_takes_the_first_copy_in_archive_order(tmp_path):
    from transforms import metrics

    copies = random_copies(400, 300, 3, [None, 1.5, -2.0], seed=5)
    write_archive(str(tmp_path / "archive"), copies)
    folder = hour_folder(str(tmp_path / "archive"), H0)
    with open(os.path.join(folder, "hand-made.jsonl"), "wb") as f:  # not the layout: ordered by its mtime
        f.write(b'{"event_id": "bad"\n{"event_id": "e1", "video_id": "V9", "event_type": "view"}\n')
    rows, result = _recompute_rows(tmp_path, str(tmp_path / "archive"), H0, H0 + 3 * 3600)
    assert reconcile(model(copies), rows) == []
    c = metrics.committed_counters(result)
    assert (c["events_in"], c["events_accepted"], c["duplicates_dropped"]) == (402, 300, 100)
    assert (c["dead_letters_json_error"], c["dead_letters_missing_field"]) == (1, 1)
    # a range of one hour reads that hour's folder only
    rows_1h, _ = _recompute_rows(tmp_path, str(tmp_path / "archive"), H0 + 3600, H0 + 7200)
    assert {k[3] - k[3] % 3600 for k in rows_1h} == {H0 + 3600}


def _element_counts(result) -> dict[str, int]:
    from apache_beam.metrics import monitoring_infos as mi

    return {
        info.labels[mi.PCOLLECTION_LABEL]: mi.extract_counter_value(info)
        for info in result.monitoring_infos()
        if info.urn == mi.ELEMENT_COUNT_URN
    }


def test_work_is_linear_in_events_whatever_the_span_of_event_time(tmp_path):
    """The old path's dedup kept every minute's ids of the range and intersected each chunk
    with all of them (events x minutes). Here, for the same events over 1 day and over 30
    days: every stage's element count is at most the events read (elements are batches:
    files x shards, shards x entities, entities), and one dedup shard holds its share of the
    distinct ids, never the range's minutes."""
    from transforms.batch_count import IDS_PER_SHARD
    from transforms.metrics import NAMESPACE

    n, shards = 6000, 8
    runs = {}
    for days in (1, 30):
        rnd = random.Random(days)
        copies = [
            {
                "event_id": f"e{i}",
                "video_id": f"V{rnd.randrange(20)}",
                "event_type": "view",
                "t_us": H0 * US_PER_S + rnd.randrange(days * 86400 * US_PER_S),
                "value": None,
                "written_ms": 1_700_000_000_000,
                "file_name": "f",
                "line": i + 1,
            }
            for i in range(n)
        ]
        copies += [dict(c, line=n + k + 1) for k, c in enumerate(copies[: n // 10])]
        archive = str(tmp_path / f"archive-{days}")
        write_archive(archive, copies)
        _, result = _recompute_rows(tmp_path, archive, H0, H0 + days * 86400, f"--dedup_shards={shards}")
        ids = result.metrics().query()["distributions"]
        [held] = [
            d.committed for d in ids if d.key.metric.namespace == NAMESPACE and d.key.metric.name == IDS_PER_SHARD
        ]
        runs[days] = (_element_counts(result), held)
    (counts_1, held_1), (counts_30, held_30) = runs[1], runs[30]
    events = int(n * 1.1)
    for held in (held_1, held_30):
        assert held.count == shards and held.sum == n and held.max < 2 * n / shards
    assert max(counts_30.values()) <= events and max(counts_1.values()) <= events
    assert sum(counts_30.values()) <= 4 * events


def test_hours_compacted_to_parquet_count_as_their_jsonl_does(tmp_path):
    """Some hours read from the Parquet archive (``pipelines.compact``), the others from the
    JSONL: the same aggregates as the model, with copies (exact and re-stamped across hours)
    split between the two."""
    from pipelines.compact import compact

    copies = random_copies(600, 400, 4, [None, 3.0], seed=11)
    archive, parquet = str(tmp_path / "archive"), str(tmp_path / "parquet")
    write_archive(archive, copies)
    compact(archive, parquet, now_s=H0 + 10 * 86400, hours=range(H0, H0 + 2 * 3600, 3600))
    rows, _ = _recompute_rows(tmp_path, archive, H0, H0 + 4 * 3600, f"--parquet_path={parquet}")
    assert reconcile(model(copies), rows) == []
    # the Parquet hours are read from Parquet: without their JSONL folders the result is the same
    import shutil

    for h in (H0, H0 + 3600):
        shutil.rmtree(hour_folder(archive, h))
    rows_without_jsonl, _ = _recompute_rows(tmp_path, archive, H0, H0 + 4 * 3600, f"--parquet_path={parquet}")
    assert rows_without_jsonl == rows
