"""Bigtable outages through a fault-injecting TCP proxy (Toxiproxy, ``viewcounts.local.faultproxy``)
between the writer and the real Bigtable emulator (the emulator keeps its data: it is never
restarted). Two kinds of outage: connections refused (the proxy disabled) and a partition
(connections accepted, no byte through: the client hangs until its own deadlines).

* The sink alone (``WriteAggregates``): an outage that ends within the write budget is ridden
  out with no dead letter, one reconnection healing the channel; an outage longer than the
  budget turns every cell of the flush into a ``write_failed`` dead letter within the budget,
  the same sink writes again as soon as the outage ends, and ``pipelines.redrive`` over
  those dead letters leaves every cell equal to its newest pane. The budget is per bundle:
  generated bundles of several flushes, with the outage from a generated flush on, are held
  at most the budget plus the attempts past it (one failed, or ones that wrote everything),
  on a virtual clock.
* The streaming job writing through the proxy with a 20 s budget, on the local runner
  (flights shifted to just before now) and on an embedded Flink with checkpoints (flights
  with their real 2013 times): mid-stream, connections refused for 60 s, then a partition of
  45 s. The job keeps reading: the events published during an outage reach the raw archive,
  on Flink before the outage ends (and checkpoints keep completing), on the local runner
  (one worker thread, which waits while a flush spends its budget) after it. The flushes
  that meet the outage become ``write_failed`` dead letters; the redrive over the dead-letter files then leaves
  every stored aggregate equal to the polars reference (0 mismatches).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
from google.rpc import code_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.runners import runner_flags
from query.stats import StatsReader
from schemas.archive import DeadLetter, local_lines
from schemas.event import WRITE_FAILED
from schemas.storage import Aggregate, cell_timestamp_us, wall_clock_ms
from tests.streaming_jobs import INSTANCE, PROJECT, Deployment, archive_missing, kill
from tests.test_streaming_runners import HISTORICAL, _some_rows, _wait_for
from transforms import bigtable_sink
from transforms.aggregate import AggregateRow
from transforms.bigtable_sink import WriteAggregates, row_from_json
from transforms.enrich import EnrichedRow
from transforms.top import TopRow
from viewcounts.commands import replay
from viewcounts.local.faultproxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.emulator, pytest.mark.slow]

H = 1_715_680_800  # 2024-05-14T10:00:00Z
ENV = "BIGTABLE_EMULATOR_HOST"


@pytest.fixture(scope="module")
def toxiproxy():
    with FaultProxy() as server:
        yield server


@pytest.fixture
def bigtable_proxy(toxiproxy, bigtable_host):
    proxy = toxiproxy.proxy(f"bigtable-{uuid.uuid4().hex[:8]}", bigtable_host)
    yield proxy
    proxy.delete()


FAULTS = {"refused": ("refuse", "restore"), "partition": ("blackhole", "remove_toxics")}


@contextlib.contextmanager
def _bigtable_at(host: str):
    """Point this process's Bigtable clients at ``host`` (clients made inside read it)."""
    old = os.environ[ENV]
    os.environ[ENV] = host
    try:
        yield
    finally:
        os.environ[ENV] = old


def _rows(n: int, count: int, ts_ms: int) -> list[EnrichedRow]:
    """``n`` minute panes of one video, each with ``count`` events."""
    return [
        EnrichedRow(
            AggregateRow(
                "V1",
                "view",
                "minute",
                H + 60 * i,
                Aggregate(count, 0, 0.0, None, None),
                0,
                cell_timestamp_us(ts_ms, count),
            ),
            None,
            None,
        )
        for i in range(n)
    ]


def _flush(sink: WriteAggregates, rows: list[EnrichedRow]) -> list[DeadLetter]:
    sink.start_bundle()
    return [d for d in sink.process(rows)] + [wv.value for wv in sink.finish_bundle()]


def _counts(table) -> dict[int, int]:
    with StatsReader(*table) as reader:
        return {c.window_start_s: c.aggregate.count for c in reader.all_cells()}


class _OnLog(logging.Handler):
    """Calls ``action`` once, at the first record whose message contains ``text``."""

    def __init__(self, text: str, action) -> None:
        super().__init__()
        self.text, self.action, self.seen = text, action, 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen += 1
            if self.seen == 1:
                self.action()


@pytest.mark.parametrize("fault", FAULTS)
def test_outage_within_the_budget_is_ridden_out(table, bigtable_proxy, fault):
    start, end = (getattr(bigtable_proxy, name) for name in FAULTS[fault])
    ends = _OnLog("Bigtable unreachable", end)  # the first failed attempt ends the outage
    logging.getLogger("transforms.bigtable_sink").addHandler(ends)
    try:
        with _bigtable_at(bigtable_proxy.listen):
            sink = WriteAggregates(*table, write_budget_s=60, attempt_timeout_s=2)
            sink.setup()
            start()
            dead = _flush(sink, _rows(30, 3, wall_clock_ms()))
            sink.teardown()
    finally:
        logging.getLogger("transforms.bigtable_sink").removeHandler(ends)
    assert dead == []
    assert ends.seen == 1  # the outage was met, and one new client healed the channel at once
    assert _counts(table) == {H + 60 * i: 3 for i in range(30)}


@pytest.mark.parametrize("fault", FAULTS)
def test_outage_longer_than_the_budget_becomes_write_failed_and_the_redrive_restores_it(
    table, bigtable_proxy, fault, tmp_path
):
    from pipelines import redrive

    start, end = (getattr(bigtable_proxy, name) for name in FAULTS[fault])
    budget_s, attempt_s = 3.0, 1.0
    base = wall_clock_ms()
    with _bigtable_at(bigtable_proxy.listen):
        sink = WriteAggregates(*table, write_budget_s=budget_s, attempt_timeout_s=attempt_s)
        sink.setup()
        assert _flush(sink, _rows(10, 1, base)) == []  # the first panes land
        start()
        started = time.monotonic()
        dead = _flush(sink, _rows(10, 2, base))  # the second panes meet the outage
        blocked_s = time.monotonic() - started
        end()
        # the same sink writes at once after the outage: a third pane of the first 4 windows
        assert _flush(sink, _rows(4, 3, base)) == []
        sink.teardown()
        assert [d.reason for d in dead] == [WRITE_FAILED] * 10
        assert blocked_s < budget_s + attempt_s + 30  # bounded (generous slack for a loaded machine)
        assert _counts(table) == {**{H + 60 * i: 1 for i in range(10)}, **{H + 60 * i: 3 for i in range(4)}}
        letters = tmp_path / "dead-letters" / "x.jsonl"
        letters.parent.mkdir()
        letters.write_bytes(b"".join(d.to_json() + b"\n" for d in dead))
        redrive.build_pipeline(
            [
                f"--dead_letter_glob={tmp_path}/dead-letters/**",
                "--runner=DirectRunner",
                f"--bigtable_project={table[0]}",
                f"--bigtable_instance={table[1]}",
                f"--bigtable_table={table[2]}",
            ]
        ).run().wait_until_finish()
    # each window holds its newest pane: the third where it was written, else the redriven second
    assert _counts(table) == {**{H + 60 * i: 2 for i in range(10)}, **{H + 60 * i: 3 for i in range(4)}}


class _VirtualClock:
    """The sink's ``time``: ``monotonic`` and ``sleep`` on a virtual clock (advanced by sleeps
    and by the test for each attempt), so bounds on how long a bundle is held are exact, with
    no waiting and no timing; ``time_ns`` real."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += max(0.0, s)

    @staticmethod
    def time_ns() -> int:
        return time.time_ns()


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    flushes=st.integers(2, 6),
    per_request=st.integers(1, 6),
    tail=st.integers(0, 5),
    outage_from=st.integers(0, 6),
    fault=st.sampled_from(sorted(FAULTS)),
    ok_s=st.floats(0, 2),
    budget_s=st.floats(1, 5),
    attempt_s=st.floats(0.2, 0.5),
)
def test_the_write_budget_is_per_bundle_however_many_flushes(
    bigtable_host, toxiproxy, flushes, per_request, tail, outage_from, fault, ok_s, budget_s, attempt_s
):
    """A bundle of ``flushes`` full requests (and a ``tail`` flushed at its end) meets an outage
    from flush ``outage_from`` on, through the proxy. On the virtual clock a failed attempt
    takes its whole timeout and one that wrote everything ``ok_s`` (at most its timeout).
    Every cell before the outage is written and every one after it is a dead letter, once;
    past the bundle's deadline (its first attempt + the budget) every attempt but the last
    wrote everything, and the bundle is held at most the budget plus the timeouts of those
    attempts: while Bigtable fails, budget + one attempt timeout, not flushes x budget."""
    from viewcounts.local.provision import create_table

    tail %= per_request  # fewer than a request: flushed by finish_bundle
    tbl = ("test-project", "test-instance", f"t-{uuid.uuid4().hex[:10]}")
    create_table(*tbl)
    proxy = toxiproxy.proxy(f"bigtable-{uuid.uuid4().hex[:8]}", bigtable_host)
    start, end = (getattr(proxy, name) for name in FAULTS[fault])
    n = flushes * per_request + tail
    base = wall_clock_ms()
    rows = [
        EnrichedRow(
            AggregateRow(
                f"B{i}", "view", "minute", H, Aggregate(i + 1, 0, 0.0, None, None), 0, cell_timestamp_us(base, i + 1)
            ),
            None,
            None,
        )
        for i in range(n)
    ]
    clock, attempts = _VirtualClock(), []  # (virtual start, timeout, wrote every cell)
    real_attempt = WriteAggregates._attempt

    def attempt(self, cells, timeout_s):
        started = clock.now
        codes = real_attempt(self, cells, timeout_s)
        ok = all(codes.get(key, (code_pb2.UNKNOWN, ""))[0] == code_pb2.OK for key, _ in cells)
        clock.now += min(ok_s, timeout_s) if ok else timeout_s
        attempts.append((started, timeout_s, ok))
        return codes

    try:
        with pytest.MonkeyPatch.context() as mp, _bigtable_at(proxy.listen):
            mp.setattr(WriteAggregates, "_attempt", attempt)
            mp.setattr(bigtable_sink, "time", clock)
            sink = WriteAggregates(
                *tbl, max_mutations_per_request=per_request, write_budget_s=budget_s, attempt_timeout_s=attempt_s
            )
            sink.setup()
            sink.start_bundle()
            began, dead = clock.now, []
            for k in range(flushes):
                if k == outage_from:
                    start()
                dead += [tv.value for tv in sink.process(rows[k * per_request : (k + 1) * per_request])]  # a flush
            if outage_from >= flushes:
                start()
            dead += [tv.value for tv in sink.process(rows[flushes * per_request :])]  # no flush: the tail
            dead += [wv.value for wv in sink.finish_bundle()]
            held = clock.now - began
            end()
            sink.teardown()
    finally:
        proxy.delete()
    met = min(outage_from, flushes) * per_request  # the cells written before the outage
    with StatsReader(*tbl) as reader:
        assert {c.video_id: c.aggregate.count for c in reader.all_cells()} == {f"B{i}": i + 1 for i in range(met)}
    assert {d.reason for d in dead} <= {WRITE_FAILED}
    assert sorted(row_from_json(d.payload).row.video_id for d in dead) == sorted(f"B{i}" for i in range(met, n))
    deadline = attempts[0][0] + budget_s
    late = [(t, ok) for s, t, ok in attempts if s >= deadline]
    assert all(ok for _, ok in late[:-1]), late  # past the deadline: no attempt after a failed one
    assert held <= budget_s + sum(t for t, _ in late) + 1e-6, (held, attempts)


BUDGET_S, ATTEMPT_S = 20, 5
OUTAGES = (("refused", 60), ("partition", 45))  # seconds: the second outlasts budget + attempt too
CONVERGE_S = 240
_SPENT = re.compile(rb"write budget spent: (\d+) cells .* after (\d+) attempts in ([\d.]+) s")


class _CheckpointWatch(threading.Thread):
    """Notes when each completed checkpoint (``chk-N/_metadata``) first appears under ``root``
    (Flink keeps only the newest, so they are watched rather than counted afterwards)."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.root, self.seen, self.stopped = root, {}, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for path in glob.glob(f"{self.root}/*/chk-*/_metadata"):
                self.seen.setdefault(int(path.rsplit("chk-", 1)[1].split("/")[0]), time.monotonic())

    def completed(self, since: float, until: float) -> list[int]:
        return sorted(n for n, t in self.seen.items() if since <= t <= until)


def _write_failed(folder: str) -> list[DeadLetter]:
    letters = (DeadLetter.from_json(line) for line in local_lines(f"{folder}/dead-letters"))
    return [d for d in letters if d.reason == WRITE_FAILED]


def _dead_lettered(folder: str) -> set[tuple]:
    """The (video, type, granularity, window) of every write_failed dead letter of an aggregate
    (reconcile's keys; top lists, which reconcile does not compare, are left out)."""
    rows = (row_from_json(d.payload) for d in _write_failed(folder))
    return {
        (e.row.video_id, e.row.event_type, e.row.granularity, e.row.window_start_s)
        for e in rows
        if not isinstance(e, TopRow)
    }


def _redrive(folder: str, table: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.redrive",
            f"--dead_letter_glob={folder}/dead-letters/**",
            f"--bigtable_project={PROJECT}",
            f"--bigtable_instance={INSTANCE}",
            f"--bigtable_table={table}",
            "--runner=DirectRunner",
        ],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:].decode(errors="replace")


def _redrive_until_equal(d: Deployment, job: subprocess.Popen) -> tuple[int, int, float]:
    """What an operator does after an outage: once every stale aggregate is in a write_failed
    dead letter (the job has settled), redrive the dead-letter files, again only if new ones
    came meanwhile (at most 3 runs); asserts 0 mismatches. Returns (aggregates stale before,
    redrive runs, seconds from the first redrive to equality)."""
    expected = d.expected()
    _wait_for(
        lambda: {m.key for m in d.mismatches(expected)} <= _dead_lettered(d.folder),
        CONVERGE_S,
        "every stale aggregate in a write_failed dead letter",
    )
    stale = len(d.mismatches(expected))
    started, redriven = time.monotonic(), []
    while len(redriven) < 3 and (not redriven or len(_write_failed(d.folder)) > redriven[-1]):
        redriven.append(len(_write_failed(d.folder)))
        _redrive(d.folder, d.table)
        mismatches, _ = d.converged(60, job)
        if not mismatches:
            break
    assert mismatches == [], mismatches[:5]
    return stale, len(redriven), time.monotonic() - started


def _budgets_spent(folder: str) -> list[float]:
    """Seconds of each flush that spent its write budget, from the job's log."""
    logs = b"".join(open(p, "rb").read() for p in glob.glob(f"{folder}/job-*.log"))
    return [float(m.group(3)) for m in _SPENT.finditer(logs)]


def test_a_row_that_cannot_be_encoded_is_a_dead_letter_at_once_and_holds_up_no_other(table, caplog):
    good = _rows(3, 1, wall_clock_ms())
    unstorable = Aggregate(1, 1, float("inf"), 1.0, 1.0)  # storage.encode_cell refuses it
    bad = good[0]._replace(row=good[0].row._replace(video_id="V2", aggregate=unstorable))  # a row of its own
    sink = WriteAggregates(*table, write_budget_s=600)
    sink.setup()
    dead = _flush(sink, [bad, *good])
    sink.teardown()
    assert [(d.reason, d.detail.split(":")[1].strip()) for d in dead] == [(WRITE_FAILED, "INVALID_ARGUMENT")]
    assert "unreachable" not in caplog.text  # not retried
    assert _counts(table) == {H + 60 * i: 1 for i in range(3)}


# the local runner's watermark is the wall clock: flights shifted to just before each publish
LOCAL_PLAN = replay.ReplayPlan(duplicate_rate=0.05, time_mode="shift", fit_span_s=60, events_per_message=100)


@pytest.mark.parametrize("runner", ["local", pytest.param("flink", marks=pytest.mark.flink)])
def test_job_rides_out_refused_and_partitioned_bigtable_and_the_redrive_restores_exact_values(
    runner, tmp_path, pubsub_host, bigtable_host, bigtable_proxy
):
    test_started = time.monotonic()
    d = Deployment(str(tmp_path))
    checkpoints = str(tmp_path / "checkpoints")
    flights = replay.read_source("flights", 3000)
    batches = [flights[i * 1000 : (i + 1) * 1000] for i in range(3)]
    if runner == "flink":
        plan, flags = HISTORICAL, ["--no_event_age_check", *runner_flags("flink", checkpoint_dir=checkpoints)]
    else:
        plan, flags = LOCAL_PLAN, runner_flags("local")

    def publish(batch: list[dict]) -> list[dict]:
        events = replay.plan_events(batch, plan, time.time_ns() // 1000)
        d.publish(events, plan)
        return events

    with _bigtable_at(bigtable_proxy.listen):
        job = d.start_job(f"--bigtable_write_budget_s={BUDGET_S}", f"--bigtable_attempt_timeout_s={ATTEMPT_S}", *flags)
    watch = _CheckpointWatch(checkpoints)
    watch.start()
    timeline = []
    try:
        publish(batches[0])
        _wait_for(lambda: _some_rows(d), CONVERGE_S, "the first aggregates")
        for (fault, seconds), batch in zip(OUTAGES, batches[1:]):
            start, end = (getattr(bigtable_proxy, name) for name in FAULTS[fault])
            t0, wall0 = time.monotonic(), time.time_ns() // 1000
            start()
            try:
                events = publish(batch)
                if runner == "flink":  # the job keeps reading: its reading stages run beside the blocked writes
                    _wait_for(
                        lambda: archive_missing(d.folder, events) == 0,
                        seconds - (time.monotonic() - t0),
                        f"the events published during the {fault} outage in the archive",
                    )
                    archived_s = time.monotonic() - t0
                time.sleep(max(0.0, seconds - (time.monotonic() - t0)))  # the outage's length, not a wait for a result
            finally:
                end()
            t1 = time.monotonic()
            if runner == "local":  # one worker thread: reading waits while a flush spends its budget, then goes on
                _wait_for(
                    lambda: archive_missing(d.folder, events) == 0,
                    CONVERGE_S,
                    f"the events published during the {fault} outage in the archive",
                )
                archived_s = time.monotonic() - t0
            timeline.append(
                {
                    "fault": fault,
                    "blocked_s": round(t1 - t0, 1),
                    "archived_after_s": round(archived_s, 1),
                    "checkpoints": watch.completed(t0, t1),
                    "since_us": wall0,
                }
            )
            if runner == "flink":
                assert timeline[-1]["checkpoints"], f"no checkpoint completed during the {fault} outage"
        # the flushes that met the outage (and outlasted the budget) are write_failed dead letters
        _wait_for(lambda: _write_failed(d.folder), 60, "write_failed dead letters")
        stale, redrives, redrive_s = _redrive_until_equal(d, job)
    finally:
        watch.stopped.set()
        kill(job)
    letters = _write_failed(d.folder)
    starts = [t.pop("since_us") for t in timeline] + [float("inf")]
    for t, since, until in zip(timeline, starts, starts[1:]):  # each dead letter to the last outage begun before it
        t["write_failed"] = sum(1 for x in letters if since <= x.processing_time_us < until)
    spent = _budgets_spent(d.folder)
    print(
        f"{runner}: timeline: {timeline}; write_failed {len(letters)} ({stale} aggregates stale before the redrive); "
        f"flushes that spent the budget: {len(spent)}, longest {max(spent, default=0):.1f} s; "
        f"{redrives} redrive(s), equal after {redrive_s:.1f} s; test {time.monotonic() - test_started:.0f} s"
    )
