"""Run scenario case files (docs/contract.md, Scenario cases) through the real pipeline code.

``run_case(case)`` replays a case's steps as a ``TestStream`` (payloads and metadata
snapshots on two tags, an explicit processing-time clock, an explicit watermark that goes
to infinity after the last step) on the local runner (or Prism, or an embedded Flink at a
given parallelism), writes aggregates to a fresh table on the Bigtable emulator through
the production sink, and returns what was stored: rows, dead letters by reason, metrics and
``get_stats`` answers. ``check_case`` compares that with the case's ``expect`` and returns a
list of mismatches (empty when it passes). What differs by runner (the stream's shape,
where metadata travels, the wait for the end) follows its ``pipelines.runners.profile``.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import tempfile
import uuid
from collections import Counter

import apache_beam as beam
import orjson
from apache_beam.coders import BytesCoder, TupleCoder, VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Timestamp

from pipelines import runners
from pipelines.graph import count_and_store
from pipelines.options import SinkConfig
from pipelines.runners import RunnerProfile, runner_flags
from query.stats import QueryError, StatsReader
from schemas.archive import DeadLetter, local_lines
from schemas.event import US_PER_S, format_time_us, parse_event_time
from transforms import metrics
from transforms.enrich import EnrichFromSnapshots
from transforms.validate import AcceptancePolicy
from viewcounts.local.emulators import bigtable_emulator
from viewcounts.local.provision import create_table

PAYLOADS, METADATA = "payloads", "metadata"
# Alone, payloads travel on the tag "": Prism (2.70) drops the tag of every element event
# when it length-prefixes a TestStream's elements (``handleTestStream``), which sends them
# to "". The local runner fails on a "" tag, and Prism never gets the metadata tag.
LONE_PAYLOADS = ""
PROJECT, INSTANCE = "scenario", "scenario"
REL_TOL = 1e-9
# How long a case's job may run where its end can be awaited with a deadline: a case takes
# 12-30 s on Flink at parallelism 2; a job that never ends (seen on Flink before
# ``FirePanes`` cleared its early timer: a processing-time timer left at the end of the
# input held Beam's operator in its final flush for ever) is cancelled and reported instead
# of hanging the caller.
CASE_DEADLINE_S = 240


def payload_tag(with_metadata: bool) -> str:
    return PAYLOADS if with_metadata else LONE_PAYLOADS


def _messages(step: dict) -> list[bytes]:
    if "publish" in step:
        return [orjson.dumps(m) for m in step["publish"]]
    if "publish_raw" in step:
        return [s.encode("utf-8", "surrogatepass") for s in step["publish_raw"]]
    return [base64.b64decode(s) for s in step["publish_base64"]]


class UnsupportedOnRunner(RuntimeError):
    pass


def _snapshot(step: dict) -> dict:
    return {vid: (m.get("title"), m.get("channel")) for vid, m in step["metadata"].items()}


def changes_metadata_mid_stream(case: dict) -> bool:
    """Whether a metadata step comes after the first publishing step."""
    steps = case["steps"]
    first = next(
        (n for n, s in enumerate(steps) if not {"publish", "publish_raw", "publish_base64"}.isdisjoint(s)), len(steps)
    )
    return any("metadata" in s for s in steps[first:])


def _snapshots_read_once(case: dict, runner: str) -> list[tuple[int, dict]]:
    """The case's snapshots where they do not travel in its ``TestStream``
    (``metadata_in_stream``), read once at start: raises ``UnsupportedOnRunner`` when the
    case changes metadata mid-stream."""
    if changes_metadata_mid_stream(case):
        raise UnsupportedOnRunner(
            f"the case changes metadata mid-stream, which needs a triggered side "
            f"input fed by the case's TestStream; the {runner} runner cannot "
            f"(Prism: Beam issue 31438; Flink: one TestStream output only)"
        )
    return [(n, _snapshot(step)) for n, step in enumerate(case["steps"]) if "metadata" in step]


def metadata_in_stream(runner: RunnerProfile) -> bool:
    """Whether the case's metadata snapshots travel in its ``TestStream`` on a tag of their
    own, as a triggered side input: where the runner takes triggered side inputs and a
    ``TestStream`` of two outputs (else ``_snapshots_read_once``)."""
    return runner.triggered_side_inputs and not runner.test_stream_one_output


def build_test_stream(case: dict, runner: RunnerProfile) -> TestStream:
    """The case's steps as a ``TestStream`` for ``runner`` (docs/contract.md, Scenario cases:
    the clock rules): payloads, and metadata snapshots on a tag of their own where
    ``metadata_in_stream``. Each payload ``(bytes, arrival_us)`` carries the case's
    processing time (its arrival time), and is stamped with the watermark it arrives at.

    Without ``test_stream_processing_time`` (Beam's Flink runner refuses processing-time
    events) the carried arrival times are the only processing clock: they are what the
    acceptance checks read, and they fire early panes (``FirePanes``). With
    ``test_stream_round_robin`` each payload is keyed, ``(0, (bytes, arrival_us))``, for
    ``InSourceOrder``.

    Payloads alone are encoded, and typed, with Beam's standard coders (``(bytes, int)`` as
    a KV of bytes and varint, keyed as a KV of varint and that, in the events and on the
    output), which the Java side of a portable runner can decode: Flink decodes a
    TestStream's events in Java, and with Python's default ``FastPrimitivesCoder`` it fails
    every time (``Can't decode TestStream payload``: ``UnknownCoderWrapper``), restarting
    the job in a loop. Snapshots (dicts) need the default coder, so the two-tag stream
    keeps it."""
    with_metadata, keyed = metadata_in_stream(runner), runner.test_stream_round_robin
    start_us = parse_event_time(case["start"])
    processing_us = start_us
    watermark = Timestamp(micros=start_us)
    payloads = payload_tag(with_metadata)
    tags = (payloads, METADATA) if with_metadata else (payloads,)
    message_coder, message_type = TupleCoder([BytesCoder(), VarIntCoder()]), tuple[bytes, int]
    if keyed:
        message_coder, message_type = TupleCoder([VarIntCoder(), message_coder]), tuple[int, message_type]
    ts = (
        TestStream(output_tags=list(tags))
        if with_metadata
        else TestStream(coder=message_coder, output_tags=list(tags)).with_output_types(message_type)
    )
    for tag in tags:
        ts.advance_watermark_to(watermark, tag=tag)
    for n, step in enumerate(case["steps"]):
        if "metadata" in step:
            if with_metadata:
                ts.add_elements([beam.window.TimestampedValue((n, _snapshot(step)), watermark)], tag=METADATA)
        elif "advance_processing_time_s" in step:
            if step["advance_processing_time_s"] > 0:  # clocks never move back; 0 is no move
                processing_us += round(step["advance_processing_time_s"] * US_PER_S)
                if runner.test_stream_processing_time:
                    ts.advance_processing_time(step["advance_processing_time_s"])
        elif "advance_watermark" in step:
            target = Timestamp(micros=parse_event_time(step["advance_watermark"]))
            if target > watermark:
                watermark = target
                for tag in tags:
                    ts.advance_watermark_to(watermark, tag=tag)
        else:
            ts.add_elements(
                [
                    beam.window.TimestampedValue((0, (m, processing_us)) if keyed else (m, processing_us), watermark)
                    for m in _messages(step)
                ],
                tag=payloads,
            )
    for tag in tags:
        ts.advance_watermark_to_infinity(tag=tag)
    return ts


class InSourceOrder(beam.DoFn):
    """``(0, (payload, arrival_us))`` -> ``(payload, arrival_us)``, timestamps kept: the
    ``TestStream``'s payloads (keyed by ``build_test_stream`` where
    ``test_stream_round_robin``) in the order it emitted them, up to the dedup stage, as one
    Pub/Sub reader's messages reach it (the reader's task validates them). Without this,
    copies of an event dealt round robin reached the dedup stage in another order than the
    case published them (seen on Flink at parallelism 2), and which copy counts follows that
    order. A stateful DoFn on one key, reading the source's output directly: the runner
    sends every payload to one subtask over one channel, and the stages after it
    (validation) run in its task. The state (payloads passed) only makes the DoFn
    stateful."""

    PASSED = ReadModifyWriteStateSpec("payloads_passed", VarIntCoder())

    def process(self, element, passed=beam.DoFn.StateParam(PASSED)):
        passed.write((passed.read() or 0) + 1)
        yield element[1]


def policy_of_case(case: dict) -> tuple[AcceptancePolicy, int]:
    cfg = case.get("config", {})
    defaults = AcceptancePolicy()
    policy = AcceptancePolicy(
        cfg.get("allowed_lateness_s", defaults.allowed_lateness_s),
        cfg.get("max_future_skew_s", defaults.max_future_skew_s),
        cfg.get("max_event_age_s", defaults.max_event_age_s),
    )
    return policy, cfg.get("early_firing_s", 30)


@contextlib.contextmanager
def _bigtable_host():
    if os.environ.get("BIGTABLE_EMULATOR_HOST"):
        yield os.environ["BIGTABLE_EMULATOR_HOST"]
        return
    with bigtable_emulator() as emu:
        os.environ["BIGTABLE_EMULATOR_HOST"] = emu.host
        try:
            yield emu.host
        finally:
            del os.environ["BIGTABLE_EMULATOR_HOST"]


def case_sinks(project: str, instance: str, table: str, folder: str) -> SinkConfig:
    """Where a case's job writes: aggregates to ``table`` (an existing table on the Bigtable
    emulator), the raw archive to ``<folder>/archive`` and dead letters to
    ``<folder>/dead-letters`` (files only)."""
    return SinkConfig(
        project,
        instance,
        table,
        archive_path=f"{folder}/archive",
        dead_letter_topic=None,
        dead_letter_path=f"{folder}/dead-letters",
    )


def case_pipeline(case: dict, sinks: SinkConfig, runner: str = "local", parallelism: int = 1) -> tuple:
    """The streaming job of ``case`` on ``runner``, not run yet: the case's ``TestStream``
    through ``pipelines.graph.count_and_store`` into ``sinks``. ``parallelism``: the job's,
    where the runner ``sets_parallelism`` (Flink, embedded, with LOOPBACK workers); elsewhere
    1 only, else ``ValueError``. Returns ``(pipeline, count_and_store's outputs)``; run it
    with ``run_to_end``."""
    profile = runners.profile(runner)
    if parallelism != 1 and not profile.sets_parallelism:
        raise ValueError(f"parallelism {parallelism}: the {runner} runner does not take one")
    policy, early_firing_s = policy_of_case(case)
    options = PipelineOptions(runner_flags(runner, parallelism=parallelism, bounded=True))
    options.view_as(StandardOptions).streaming = True
    runners.prepare(options)
    pipeline = beam.Pipeline(options=options)
    in_stream = metadata_in_stream(profile)
    stream = pipeline | "case steps" >> build_test_stream(case, profile)
    snapshots = (
        stream[METADATA]
        if in_stream
        else pipeline | "metadata read once" >> beam.Create(_snapshots_read_once(case, runner))
    )
    payloads = stream[payload_tag(in_stream)]
    if profile.test_stream_round_robin:
        payloads = payloads | "in source order" >> beam.ParDo(InSourceOrder()).with_output_types(tuple[bytes, int])
    # The TestStream stamps each message at the watermark, as one reader of the portable
    # source does; with one TestStream those stamps are the runner's source watermark on
    # any runner and at any parallelism. Where the view comes from stamps anyway (Prism)
    # the job takes them; so it does where the TestStream takes no processing time (Flink):
    # the dedup stage's ladder of timers (the streaming job's view there) gets no rounds
    # between a case's steps, and lagged minutes behind after a watermark jump (cases 02,
    # 06, 09, 18 failed). The local runner keeps the ladder, the view of its native source.
    counted = count_and_store(
        payloads,
        EnrichFromSnapshots(snapshots, in_stream),
        policy,
        early_firing_s,
        sinks,
        stamped_watermark=profile.stamped_watermark or not profile.test_stream_processing_time,
    )
    return pipeline, counted


def run_to_end(pipeline: beam.Pipeline, runner: str) -> PipelineResult:
    """Run a case's job and wait for its end: within ``CASE_DEADLINE_S`` where the runner
    ``waits_with_deadline`` (else ``TimeoutError``, after cancelling it), without a deadline
    elsewhere (the local runner, in process). ``RuntimeError`` when it failed."""
    result = pipeline.run()
    if runners.profile(runner).waits_with_deadline:
        _finish_within(result, CASE_DEADLINE_S)
    else:
        result.wait_until_finish()
    return result


def run_case(case: dict, runner: str = "local", parallelism: int = 1) -> dict:
    """Run one case on ``runner`` at ``parallelism`` (``case_pipeline``); returns ``{"rows",
    "dead_letters", "metrics", "queries", "archived_events"}`` (``archived_events``: lines
    written to the raw archive)."""
    table = f"case-{uuid.uuid4().hex[:12]}"
    with _bigtable_host(), tempfile.TemporaryDirectory(prefix="scenario-") as tmp:
        create_table(PROJECT, INSTANCE, table)
        sinks = case_sinks(PROJECT, INSTANCE, table, tmp)
        pipeline, _ = case_pipeline(case, sinks, runner, parallelism)
        counters = metrics.committed_counters(run_to_end(pipeline, runner))
        dead = Counter(DeadLetter.from_json(line).reason for line in local_lines(sinks.dead_letter_path))
        archived = sum(1 for _ in local_lines(sinks.archive_path))
        with StatsReader(PROJECT, INSTANCE, table) as reader:
            rows = stored_rows(reader)
            queries = [_answer(reader, q) for q in case.get("expect", {}).get("queries", [])]
    return {
        "rows": rows,
        "dead_letters": dict(sorted(dead.items())),
        "metrics": dict(sorted(counters.items())),
        "queries": queries,
        "archived_events": archived,
    }


def _finish_within(result, deadline_s: float) -> None:
    """Wait for a portable job to end; raises ``TimeoutError`` (after cancelling it) when it is
    still running after ``deadline_s`` seconds, ``RuntimeError`` when it failed."""
    state = result.wait_until_finish(duration=deadline_s * 1000)
    if state != PipelineState.DONE:
        result.cancel()
        raise TimeoutError(f"the case's job did not finish within {deadline_s} s (state {state})")


def stored_rows(reader: StatsReader) -> list[dict]:
    """Every stored aggregate as a case's row dicts (docs/contract.md, Scenario cases)."""
    return [
        {
            "video_id": c.video_id,
            "event_type": c.event_type,
            "granularity": c.granularity,
            "window_start": format_time_us(c.window_start_s * US_PER_S),
            "count": c.aggregate.count,
            "value_count": c.aggregate.value_count,
            "sum": c.aggregate.sum,
            "avg": c.aggregate.avg,
            "min": c.aggregate.min,
            "max": c.aggregate.max,
            "title": c.title,
            "channel": c.channel,
        }
        for c in reader.all_cells()
    ]


def _answer(reader: StatsReader, q: dict) -> dict:
    out = {k: q[k] for k in ("video_id", "event_type", "function", "start", "end", "granularity")}
    try:
        out["value"] = reader.get_stats(
            q["video_id"], q["event_type"], q["function"], q["start"], q["end"], q["granularity"], q.get("tz")
        ).value
    except QueryError as exc:
        out["error"] = str(exc)
    return out


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0) or a == b
    return a == b


def _row_key(r: dict) -> tuple:
    return (r["video_id"], r["event_type"], r["granularity"], parse_event_time(r["window_start"]))


def check_case(case: dict, result: dict) -> list[str]:
    """Mismatches between ``result`` and ``case["expect"]`` (docs/contract.md, Scenario cases: tolerance, exact rows and counts)."""
    expect = case.get("expect", {})
    problems: list[str] = []
    stored = {_row_key(r): r for r in result["rows"]}
    for want in expect.get("rows", []):
        got = stored.get(_row_key(want))
        if got is None:
            problems.append(f"missing row {want}")
            continue
        for field in ("count", "value_count", "sum", "avg", "min", "max", "title", "channel"):
            if field in want and not _same(got[field], want[field]):
                problems.append(
                    f"row {_row_key(want)[:3]} {want['window_start']}: {field} is {got[field]!r}, "
                    f"expected {want[field]!r}"
                )
    if expect.get("rows_exact"):
        wanted = {_row_key(r) for r in expect.get("rows", [])}
        for k, r in stored.items():
            if k not in wanted:
                problems.append(f"unexpected row {r}")
    if "dead_letters" in expect:
        for reason in set(expect["dead_letters"]) | set(result["dead_letters"]):
            want_n, got_n = expect["dead_letters"].get(reason, 0), result["dead_letters"].get(reason, 0)
            if want_n != got_n:
                problems.append(f"dead letters {reason}: {got_n}, expected {want_n}")
    for name, want_n in expect.get("metrics", {}).items():
        got_n = result["metrics"].get(name, 0)
        if got_n != want_n:
            problems.append(f"metric {name}: {got_n}, expected {want_n}")
    for want, got in zip(expect.get("queries", []), result["queries"]):
        if want.get("error"):
            if "error" not in got:
                problems.append(f"query {want} should be refused, answered {got.get('value')!r}")
        elif "error" in got:
            problems.append(f"query {want} refused: {got['error']}")
        elif not _same(got["value"], want["value"]):
            problems.append(f"query {want}: got {got['value']!r}")
    return problems


def load_case(path: str) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.read())
