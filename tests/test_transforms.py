"""Each transform on the local runner with TestStream and assert_that (docs/contract.md: "Acceptance", "Aggregates", "Dead letters")."""

import glob
import os
import uuid

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from pipelines import direct_runner_fix
from schemas.archive import parse_file_path
from schemas.event import US_PER_S, parse_event_time
from schemas.storage import Aggregate, merge
from transforms.aggregate import AggregateRow, aggregate_events
from transforms.count_events import DEAD_LETTERS, ROWS, CountEvents
from transforms.enrich import Enrich, _EnrichFromFileFn
from transforms.files import WriteJsonlByHour
from transforms.validate import ARCHIVE, DEAD_LETTER, AcceptancePolicy, ValidateEvents, shard_of

START = "2024-05-14T10:00:00Z"
START_US = parse_event_time(START)


def _pipeline():
    direct_runner_fix.apply()
    o = PipelineOptions(runner="BundleBasedDirectRunner")
    o.view_as(StandardOptions).streaming = True
    return beam.Pipeline(options=o)


def _ev(eid, t, vid="V1", et="view", value=None):
    d = {"event_id": eid, "video_id": vid, "event_type": et, "event_time": t}
    if value is not None:
        d["value"] = value
    return d


def _msg(*events):
    return orjson.dumps(list(events)) if len(events) != 1 else orjson.dumps(events[0])


class _Clock:
    """Builds a TestStream of ``(payload, arrival_us)`` with explicit processing time and watermark."""

    def __init__(self):
        self.proc_us = START_US
        self.wm = Timestamp(micros=START_US)
        self.ts = _TestStream().advance_watermark_to(self.wm)

    def publish(self, *payloads):
        self.ts.add_elements([beam.window.TimestampedValue((p, self.proc_us), self.wm) for p in payloads])
        return self

    def wait(self, seconds):
        self.proc_us += seconds * US_PER_S
        self.ts.advance_processing_time(seconds)
        return self

    def watermark(self, rfc3339):
        self.wm = Timestamp(micros=parse_event_time(rfc3339))
        self.ts.advance_watermark_to(self.wm)
        return self

    def stream(self):
        return self.ts.advance_watermark_to_infinity()


_COLLECTED: dict[str, list] = {}


def _collect(batches) -> list:
    """Every row of every firing, gathered in this process as the pipeline runs (the local
    runner runs in-process). Not ``assert_that``: panes fired by timers at the final
    watermark reach a downstream ``GroupByKey`` after its global window closed there."""
    token = uuid.uuid4().hex
    _COLLECTED[token] = rows = []
    batches | f"collect {token}" >> beam.ParDo(_Collect(token))
    return rows


class _Collect(beam.DoFn):
    def __init__(self, token):
        self._token = token

    def process(self, batch):
        _COLLECTED[self._token].extend(batch)


def _final(rows) -> dict:
    """The last pane of each (video, type, granularity, window): what storage ends with."""
    out = {}
    for r in sorted(rows, key=lambda r: r.pane_index):
        out[(r.video_id, r.event_type, r.granularity, r.window_start_s)] = tuple(r.aggregate)
    return out


def test_validate_splits_by_shard_and_minute_and_reports_reasons():
    policy = AcceptancePolicy(dedup_shards=4)
    clock = (
        _Clock()
        .wait(60)
        .publish(
            _msg(
                _ev("a", "2024-05-14T10:00:05Z"),
                _ev("b", "2024-05-14T10:00:50Z"),
                _ev("c", "2024-05-14T10:01:00Z"),
                17,
                _ev("d", "2024-05-14T10:07:00.000001Z"),
                _ev("e", "2024-05-07T10:00:59Z"),
            ),
            b"\xff",
            b"[]",
        )
    )
    with _pipeline() as p:
        out = p | clock.stream() | beam.ParDo(ValidateEvents(policy)).with_outputs(DEAD_LETTER, ARCHIVE, main="chunks")
        assert_that(
            out.chunks | beam.Map(lambda kv: (kv[0], sorted(e.event_id for e in kv[1][1]))),
            equal_to(_by_shard(["a", "b", "c"], 4)),
            label="chunks",
        )
        assert_that(
            out[DEAD_LETTER] | beam.Map(lambda d: d.reason),
            equal_to(["not_an_object", "future_timestamp", "too_old", "decode_error"]),
            label="dead",
        )
        assert_that(
            out[ARCHIVE]
            | beam.Map(lambda hour_lines: (hour_lines[0], [orjson.loads(line)["event_id"] for line in hour_lines[1]])),
            equal_to([(1715680800, ["a", "b", "c"])]),
            label="archive: one element per message and hour",
        )


def _by_shard(ids, shards):
    out = {}
    for eid in ids:
        out.setdefault((0, shard_of(eid, shards)), []).append(eid)
    return [(k, sorted(v)) for k, v in out.items()]


def test_validate_without_age_checks_keeps_old_and_future_events():
    policy = AcceptancePolicy(check_age=False)
    clock = _Clock().publish(_msg(_ev("old", "2013-01-01T00:00:00Z"), _ev("new", "2030-01-01T00:00:00Z")))
    with _pipeline() as p:
        out = p | clock.stream() | beam.ParDo(ValidateEvents(policy)).with_outputs(DEAD_LETTER, ARCHIVE, main="chunks")
        assert_that(out[DEAD_LETTER], equal_to([]), label="dead")
        assert_that(out.chunks | beam.FlatMap(lambda kv: [e.event_id for e in kv[1][1]]), equal_to(["old", "new"]))


def _count(clock, policy=AcceptancePolicy(), early=30, stamped=False):  # noqa: B008 (a frozen dataclass)
    """``stamped``: the dedup stage reads the watermark from the elements' timestamps (the
    ``_Clock`` stamps them at the watermark, as the portable Pub/Sub source does), else
    from its ladder of timers."""
    p = _pipeline()
    out = p | clock.stream() | CountEvents(policy, early, stamped)
    return p, out


WATERMARK_VIEWS = pytest.mark.parametrize("stamped", [False, True], ids=["ladder", "stamped"])


def test_dedup_within_a_batch_across_messages_and_across_ids_with_other_fields():
    clock = (
        _Clock()
        .wait(10)
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z"), _ev("e1", "2024-05-14T10:00:05Z")))
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z", vid="OTHER")))
        .wait(900)
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z")))
        .watermark("2024-05-14T10:09:30Z")
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z")))
    )
    p, out = _count(clock)
    rows = _collect(out[ROWS])
    assert_that(out[DEAD_LETTERS], equal_to([]), label="no dead letters before the horizon")
    p.run().wait_until_finish()
    assert _final(rows) == {
        ("V1", "view", "minute", 1715680800): (1, 0, 0.0, None, None),
        ("V1", "view", "hour", 1715680800): (1, 0, 0.0, None, None),
    }


def test_a_restamped_copy_is_a_duplicate_while_its_id_is_remembered():
    clock = (
        _Clock()
        .wait(10)
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z")))
        .publish(_msg(_ev("e1", "2024-05-14T10:03:05Z")))  # another minute
        .wait(600)
        .watermark("2024-05-14T10:10:30Z")  # the first copy's minute is still remembered
        .publish(_msg(_ev("e1", "2024-05-14T10:05:00Z")))
        .watermark("2024-05-14T10:11:30Z")  # forgotten: a re-stamped copy counts again
        .publish(_msg(_ev("e1", "2024-05-14T10:06:00Z")))
    )
    p, out = _count(clock)
    rows = _collect(out[ROWS])
    result = p.run()
    result.wait_until_finish()
    assert sorted((k[2], k[3], agg[0]) for k, agg in _final(rows).items()) == [
        ("hour", 1715680800, 2),
        ("minute", 1715680800, 1),
        ("minute", 1715681160, 1),
    ]
    dup = [c.committed for c in result.metrics().query()["counters"] if c.key.metric.name == "duplicates_dropped"]
    assert sum(dup) == 2


@WATERMARK_VIEWS
@pytest.mark.parametrize(
    "advance_to,accepted",
    [
        ("2024-05-14T10:10:55Z", True),  # 5 s past the boundary's other side: t >= W - L
        ("2024-05-14T10:11:20Z", False),  # 20 s late: too_late (the contract: may go either way within 5 s)
    ],
)
def test_lateness_boundary_after_an_idle_watermark_move(advance_to, accepted, stamped):
    # nothing else arrives: the ladders, or the element's stamp, must know where the watermark is
    clock = _Clock().watermark(advance_to).wait(600).publish(_msg(_ev("x", "2024-05-14T10:01:00Z")))
    p, out = _count(clock, stamped=stamped)
    assert_that(
        out[DEAD_LETTERS] | beam.Map(lambda d: d.reason), equal_to([] if accepted else ["too_late"]), label="dead"
    )
    rows = _collect(out[ROWS])
    p.run().wait_until_finish()
    assert {(r.granularity, r.aggregate.count) for r in rows} == ({("minute", 1), ("hour", 1)} if accepted else set())


@WATERMARK_VIEWS
def test_late_copy_of_a_counted_event_is_too_late_not_a_duplicate(stamped):
    clock = (
        _Clock()
        .wait(10)
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z")))
        .watermark("2024-05-14T10:12:00Z")
        .publish(_msg(_ev("e1", "2024-05-14T10:00:05Z")))
    )
    p, out = _count(clock, stamped=stamped)
    assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: d.reason), equal_to(["too_late"]))
    result = p.run()
    result.wait_until_finish()
    dup = [c.committed for c in result.metrics().query()["counters"] if c.key.metric.name == "duplicates_dropped"]
    assert sum(dup) == 0


def _early_on_time_and_late_panes() -> list:
    """The rows of every firing of a stream that fires early, on-time and late panes of
    minute 10:00 (events at 10:00:05, 10:00:20 and, after the watermark passed, 10:00:50)."""
    clock = (
        _Clock()
        .wait(5)
        .publish(_msg(_ev("a", "2024-05-14T10:00:05Z", value=1)))
        .wait(31)
        .publish(_msg(_ev("b", "2024-05-14T10:00:20Z", value=2)))
        .wait(31)
        .watermark("2024-05-14T10:02:00Z")
        .publish(_msg(_ev("c", "2024-05-14T10:00:50Z", value=4)))
        .wait(31)
    )
    p, out = _count(clock, early=30)
    rows = _collect(out[ROWS])
    p.run().wait_until_finish()
    return rows


def test_early_and_late_panes_carry_running_totals():
    rows = _early_on_time_and_late_panes()
    _check_running_totals(
        [(r.pane_index, r.aggregate.count, r.aggregate.sum) for r in rows if r.granularity == "minute"], final=(3, 7.0)
    )


def _check_running_totals(panes, final):
    panes = sorted(panes)
    assert len(panes) >= 3, panes  # early, on-time, late
    counts = [c for _, c, _ in panes]
    assert counts == sorted(counts), panes  # accumulating: never a delta, never a reset
    assert panes[-1][1:] == final


def test_batch_mode_one_pane_per_window():
    events = [_ev(f"e{i}", f"2024-05-14T10:{i % 3:02d}:{i % 60:02d}Z", value=i) for i in range(30)]
    policy = AcceptancePolicy(check_age=False)
    p = beam.Pipeline(runner="DirectRunner")
    rows = _collect(
        (
            p
            | beam.Create([(_msg(*events[:17]), 0), (_msg(*events[17:]), 0)])
            | CountEvents(policy, early_firing_s=None)
        )[ROWS]
    )
    p.run().wait_until_finish()
    assert sorted((r.granularity, r.window_start_s, r.pane_index, r.aggregate.count) for r in rows) == sorted(
        [("minute", 1715680800 + 60 * k, 0, 10) for k in range(3)] + [("hour", 1715680800, 0, 30)]
    )


def test_merge_never_mutates_and_avg_uses_value_count():
    a = aggregate_events([_E(1.0), _E(None), _E(3.0)])[("V", "t")]
    b = merge(a, Aggregate(1, 1, 10.0, 10.0, 10.0))
    assert a == Aggregate(3, 2, 4.0, 1.0, 3.0) and b == Aggregate(4, 3, 14.0, 1.0, 10.0)
    assert b.avg == 14.0 / 3
    assert merge(merge(Aggregate(0, 0, 0.0, None, None), a), Aggregate(0, 0, 0.0, None, None)) == a
    assert Aggregate(1, 0, 0.0, None, None).avg is None


def test_enrich_sees_a_new_snapshot_in_a_list_of_the_same_length():
    row = AggregateRow("V1", "view", "minute", 0, Aggregate(1, 0, 0.0, None, None), 0, 1000)
    fn = Enrich()
    fn.start_bundle()
    assert next(fn.process([row], [(1, {"V1": ("Old", "C")})]))[0].title == "Old"
    assert next(fn.process([row], [(2, {"V1": ("New", "C")})]))[0].title == "New"


class _E:
    def __init__(self, value):
        self.video_id, self.event_type, self.value = "V", "t", value


def test_enrich_uses_the_newest_snapshot_and_keeps_unknown_entities():
    row = AggregateRow("V1", "view", "minute", 0, Aggregate(1, 0, 0.0, None, None), 0, 1000)
    fn = Enrich()
    fn.start_bundle()
    snaps = [(0, {"V1": ("Old", "C")}), (2, {"V1": ("New", "C")}), (1, {"V1": ("Mid", "C")})]
    assert next(fn.process([row], snaps))[0].title == "New"
    assert next(fn.process([row._replace(video_id="V9")], snaps))[0][1:] == (None, None)
    assert next(fn.process([row], []))[0][1:] == (None, None)


def test_enrich_from_file_rereads_after_refresh_and_keeps_the_snapshot_when_a_reread_fails(tmp_path, monkeypatch):
    path = tmp_path / "metadata.jsonl"
    path.write_bytes(b'{"video_id": "V1", "title": "Old", "channel": "C"}\n')
    clock = [100.0]
    monkeypatch.setattr("transforms.enrich.time.monotonic", lambda: clock[0])
    row = AggregateRow("V1", "view", "minute", 0, Aggregate(1, 0, 0.0, None, None), 0, 1000)
    fn = _EnrichFromFileFn(str(path), refresh_s=10)
    fn.setup()
    path.write_bytes(b'{"video_id": "V1", "title": "New", "channel": "C"}\n')
    clock[0] = 109.0
    assert next(fn.process([row]))[0].title == "Old"  # not yet due
    clock[0] = 110.0
    assert next(fn.process([row]))[0].title == "New"
    path.write_bytes(b"not json\n")
    clock[0] = 125.0
    assert next(fn.process([row]))[0].title == "New"  # a bad re-read keeps the previous snapshot
    assert next(fn.process([row._replace(video_id="V9")]))[0][1:] == (None, None)
    unenriched = _EnrichFromFileFn(None, None)
    unenriched.setup()
    assert next(unenriched.process([row]))[0][1:] == (None, None)


@pytest.mark.parametrize("refresh_s", [10, None])
@pytest.mark.parametrize("broken", [b'{"video_id": "V1", "title": "A"}\n{"video_id": "V2", "title": 5}\n', None])
def test_enrich_from_file_starts_empty_when_its_first_read_fails_and_reads_again_later(
    tmp_path, monkeypatch, broken, refresh_s
):
    """A (re)started worker whose metadata file has a bad line or is missing does not fail
    (a Flink failover loop): it stamps nulls and reads again at the next refresh, or every
    RETRY_S seconds when not refreshing."""
    path = tmp_path / "metadata.jsonl"
    if broken is not None:
        path.write_bytes(broken)
    clock = [100.0]
    monkeypatch.setattr("transforms.enrich.time.monotonic", lambda: clock[0])
    row = AggregateRow("V1", "view", "minute", 0, Aggregate(1, 0, 0.0, None, None), 0, 1000)
    fn = _EnrichFromFileFn(str(path), refresh_s=refresh_s)
    fn.setup()
    assert next(fn.process([row]))[0][1:] == (None, None)
    path.write_bytes(b'{"video_id": "V1", "title": "A", "channel": "C"}\n')
    retry_s = refresh_s or _EnrichFromFileFn.RETRY_S
    clock[0] += retry_s - 1
    assert next(fn.process([row]))[0][1:] == (None, None)  # not yet due
    clock[0] += 1
    assert next(fn.process([row]))[0][1:] == ("A", "C")
    path.write_bytes(b"not json\n")
    clock[0] += 10 * retry_s
    assert next(fn.process([row]))[0][1:] == ("A", "C")  # read once (or a failed re-read): kept


def test_files_land_in_their_hour_folder_in_files_named_by_run(tmp_path):
    root = str(tmp_path / "archive")
    h10, h09 = 1715680800, 1715677200
    clock = (
        _Clock()
        .publish((h10, [b'{"n":1}']), (h10, [b'{"n":2}']))
        .watermark("2024-05-14T10:01:30Z")
        .publish((h10, [b'{"n":3}']), (h09, [b'{"n":4}']))
        .watermark("2024-05-14T12:00:00Z")
        .publish((h09, [b'{"n":5}']))
    )  # days late for its hour: still its own folder
    with _pipeline() as p:
        (p | clock.stream() | beam.Map(lambda e: e[0]) | WriteJsonlByHour(root, "events", "0123456789"))
    files = sorted(glob.glob(f"{root}/**/*.jsonl", recursive=True))
    names = [os.path.basename(f) for f in files]
    assert len(names) == len(set(names)) >= 2, files  # one file per bundle and hour
    by_folder = {}
    for f in files:
        by_folder.setdefault(os.path.dirname(f)[len(root) :], []).extend(open(f, "rb").read().split())
    assert {k: sorted(v) for k, v in by_folder.items()} == {
        "/2024/05/14/10": [b'{"n":1}', b'{"n":2}', b'{"n":3}'],
        "/2024/05/14/09": [b'{"n":4}', b'{"n":5}'],
    }
    assert all(parse_file_path(f).run_id == "0123456789" for f in files), names
    assert {parse_file_path(f).hour_s for f in files} == {h09, h10}


def test_a_later_pane_wins_when_its_workers_clock_is_behind(monkeypatch):
    """docs/contract.md, "Aggregates": pane order comes from pipeline state. Every clock read here runs an hour
    behind the one before (as if each pane fired on a worker whose clock is further behind), yet
    each window's cell timestamps never go down from pane to pane and grow with every pane that
    adds events, and a window's state rebuilt elsewhere keeps its base."""
    import transforms.aggregate as aggregate_module
    from transforms.aggregate import _ShardWindows

    reads = iter(range(10**12, 0, -3_600_000))
    monkeypatch.setattr(aggregate_module, "wall_clock_ms", lambda: next(reads))
    rows = _early_on_time_and_late_panes()
    by_window: dict = {}
    for r in sorted(rows, key=lambda r: r.pane_index):
        by_window.setdefault((r.granularity, r.window_start_s), []).append((r.aggregate.count, r.cell_timestamp_us))
    assert len(by_window[("minute", 1715680800)]) >= 3 and len(by_window[("hour", 1715680800)]) >= 2, by_window
    for panes in by_window.values():
        for (count0, ts0), (count1, ts1) in zip(panes, panes[1:]):
            assert ts1 >= ts0 and (ts1 > ts0) == (count1 > count0), panes
    shard = _ShardWindows(0, None, [], None)
    shard.window(60, 1715680800)
    rebuilt = _ShardWindows(1, shard.bookkeeping(), [], None)
    assert rebuilt.windows[(60, 1715680800)].base_ms == shard.windows[(60, 1715680800)].base_ms
