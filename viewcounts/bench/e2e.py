"""End to end through the emulators: can the streaming job keep up with a steady stream, and
how fresh are the stored counts?

``measure_e2e(rate_events_per_s, seconds, early_firing_s, events_per_message=1000) -> dict``
runs the product as ``viewcounts demo`` does: real Pub/Sub and Bigtable emulators
(``viewcounts.local.emulators``, stopped by PID), the topic, subscription, dead-letter topic and
table from ``viewcounts.local.provision``, and the real streaming job ``pipelines.streaming`` on the
local runner (``pipelines.runners.runner_flags("local")``: BundleBasedDirectRunner, native
``ReadFromPubSub``, Bigtable sink, raw archive, metadata side input) with
``--early_firing_s``. The job runs in its own process (``python -m pipelines.streaming``, as
a deployment would), so the publisher and the poller below never share its GIL; the job is
stopped by its process-group id.

The stream. ``viewcounts.bench.workload.generate`` makes the events (UUID ids, Zipf videos,
view/like/watch with values, event times up to ``disorder_s`` behind their place in the
stream); their times are rebased so the stream starts at the wall clock when publishing
starts (the local runner's watermark is the wall clock, so event times must be "now"; the
rebase is done just before publishing, so event times trail the wall clock by the time it
takes, about 15 us per event, well inside the 600 s lateness).
Each message is a pre-serialized JSON array of ``events_per_message`` events:
``events_per_message - 1`` workload events plus one *probe* event (``video_id``
``bench-probe``) stamped at the message's send time. A publisher thread sends the messages
one RPC each (the Pub/Sub API's ``Publish``, no client-side batching delay) at a steady
``rate_events_per_s`` for ``seconds``, and records when each message was acknowledged by
the emulator (the *publish time*). The achieved publish rate is reported
(``e2e_publish_events_per_s``: events / (first send to last acknowledgement, scaled from
M-1 to M message intervals)) so a slow publisher shows. After the last message the
publisher keeps sending an empty batch (``[]``, a valid message with no events) every
``heartbeat_s`` until the measurement ends, as a live stream never goes idle. This matters
on the local runner: Beam's BundleBasedDirectRunner runs everything, its timer monitor
included, on one worker thread (``executor.NUM_WORKERS = 1``), and its Pub/Sub read blocks
that thread in ``pull(max_messages=10, timeout=30)`` while the subscription is empty, so
after the last message no processing-time timer (early pane) fires for up to 30 s. With
``heartbeat_s=None`` the drain lag measures that stall, not the job.

What is measured (all times from one monotonic clock in this process):

* **Progress**: every ``poll_s`` the poller reads the probe's minute counts with
  ``StatsReader.get_stats``: the number of messages counted and stored so far.
* **Everything counted** (``t_all``): the first poll at which every message's probe is
  counted and every sampled cell (below) equals its expected count, confirmed by a full
  scan (``StatsReader.all_cells``) in which every minute and hour aggregate equals the one
  computed here from what was published (a scan that differs is retried until
  ``drain_timeout_s``; then ``t_all`` is the end of the first scan that matches, an upper
  bound: a scan of ~70k cells takes a few seconds). The probe is one (video, type), so it
  follows one pane shard of the job; other shards can lag it, which the scan catches. A
  stored value above the expected one raises ``AssertionError`` (double counting).
* ``e2e_drain_lag_s`` = ``t_all`` - publish time of the last message.
* ``e2e_sustained_events_per_s`` = events counted / max(publish duration,
  ``t_all`` - first send - ``early_firing_s``): the rate at which published events became
  counted, not charged for the trigger's deliberate delay (a pane fires at most
  ``early_firing_s`` after its first element), and never above the achieved publish rate.
  When the job has not caught up within ``drain_timeout_s`` after the last publish, the
  events counted are those of the messages whose probe is counted, at the timeout.
* ``e2e_kept_up`` = everything counted and ``e2e_drain_lag_s <= early_firing_s + slack_s``:
  the backlog at the end of the stream was not more than the pipeline's fixed latency.
  Short runs blur this: at 20 s a job at ~70% of the rate needs ~9 s to drain.
* **Freshness** of sampled ``(video, event_type, minute window)`` cells: every minute cell
  of the ``top_keys`` busiest ``(video, type)`` pairs and ``tail_cells`` cells drawn at
  random from the rest. For each: the first poll at which ``get_stats`` (minute
  granularity, that cell's range) returns the expected count, minus the publish time of
  the last message holding one of its events. Resolution: one poll sweep (``poll_s`` plus
  the reads); cells still short at the end are not in the percentiles
  (``freshness_cells_pending``). Includes the trigger's delay: with early firing every E s
  a count is at most ~E s behind the last event it waits for, plus processing.

Returns ``{"e2e_target_events_per_s": int, "e2e_sustained_events_per_s": float,
"e2e_kept_up": bool, "freshness_p50_s": float | None, "freshness_p99_s": float | None,
"early_firing_s": int, "e2e_events": int}`` plus ``e2e_seconds``, ``e2e_publish_events_per_s``,
``e2e_drain_lag_s`` (None when not caught up), ``e2e_complete``, ``e2e_job_ready_s`` (job
start until a warm-up message is stored), ``freshness_cells``, ``freshness_cells_pending``
and ``*_cpu_cores`` (CPU seconds / wall seconds during the stream and the drain, per
process group: the job, the Pub/Sub emulator, the Bigtable emulator, this process).

``find_sustained_rate`` ramps ``measure_e2e`` over rising rates and stops at the first
rate not kept up.

On Flink (``flink=OnFlink(parallelism, sdk_worker_parallelism, task_managers, task_slots)``):
after the emulators, a session cluster (``viewcounts.local.flink.FlinkCluster``, stopped by PID)
starts, so its worker pool hands the emulators' addresses to the Python workers; the job is
submitted to it (``job_flags``: EXTERNAL workers from the pool, checkpoints under
``workdir``, ``--fresh_start``) by a launcher process that waits for it. While the stream
runs, ``viewcounts.local.job_metrics.flink_job_metrics`` is read every 2 s from the REST API:
``flink_metrics_reads``, the largest ``flink_watermark_lag_max_s`` and the last
``flink_watermark_lag_last_s``,
``flink_oldest_unacked_age_max_s`` and ``flink_backlog_max_messages`` seen, the last read's
``flink_counters`` and ``flink_vertices``. ``flink_cluster_cpu_cores`` is the CPU of the
job manager, task managers, worker pool and SDK workers (psutil) over the stream and drain.
On every runner ``job_cpu_s_per_million_events`` is the job's CPU seconds (launcher group,
plus the cluster on Flink) over the stream and drain per million events published.

Costs of measuring: the poller issues a few ``get_stats`` calls per sweep in this process
(~a few % of a core); the probe adds one event per message. With ``profile_path`` and a
``py-spy`` binary (``$PY_SPY``, on ``PATH`` or beside this interpreter), the job is sampled for the stream's
duration (``py-spy record --format raw``, collapsed stacks) without pausing it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import psutil

from pipelines.options import DEFAULT_TIMESTAMP_ATTRIBUTE
from pipelines.runners import runner_flags
from schemas import storage
from schemas.storage import EMPTY, Aggregate, merge
from viewcounts.bench import workload
from viewcounts.bench.queries import emulator_env
from viewcounts.local import provision
from viewcounts.local.emulators import bigtable_emulator, pubsub_emulator, stop_process

_LOG = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
PROJECT, INSTANCE, TABLE = storage.DEFAULT_PROJECT, storage.DEFAULT_INSTANCE, "bench-e2e"
TOPIC, SUBSCRIPTION = "bench-events", "bench-events-sub"
DEAD_TOPIC, DEAD_SUBSCRIPTION = "bench-dead-letters", "bench-dead-letters-sub"
PROBE, WARMUP = "bench-probe", "bench-warmup"
Cell = tuple[str, str, int]  # (video_id, event_type, minute window start, epoch s)
StoredKey = tuple[str, str, str, int]  # (video_id, event_type, granularity, window start s)


# --- the stream ------------------------------------------------------------------------


@dataclass
class Stream:
    """What is published and what must be stored. ``payloads[i]`` is sent at
    ``send_offsets_s[i]`` after the start; ``expected`` holds every minute and hour
    aggregate; ``last_msg[cell]`` is the last message holding an event of a minute cell."""

    payloads: list[bytes]
    attributes: list[dict[str, str]]
    send_offsets_s: np.ndarray
    events: int
    expected: dict[StoredKey, Aggregate]
    last_msg: dict[Cell, int]
    probe_minutes: tuple[int, int]  # [first, last + 60) minute starts of the probe events


def load_workload(spec: workload.WorkloadSpec, root: Path) -> tuple[list[dict], np.ndarray]:
    """The events of ``spec`` in arrival order and their event times in ms after ``workload.START``."""
    w = workload.generate(spec, root)
    start = workload.START
    events, offsets = [], []
    with open(w.events_path, "rb") as f:
        for line in f:
            ev = orjson.loads(line)
            events.append(ev)
            offsets.append((dt.datetime.fromisoformat(ev["event_time"]) - start) // dt.timedelta(milliseconds=1))
    return events, np.asarray(offsets, dtype=np.int64)


class _TimeFormatter:
    """RFC 3339 with milliseconds for epoch ms, caching the per-second part."""

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        s, frac = divmod(ms, 1000)
        head = self._seconds.get(s)
        if head is None:
            head = self._seconds[s] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return f"{head}.{frac:03d}Z"


def plan_stream(
    events: list[dict], offsets_ms: np.ndarray, t0_ms: int, seconds: float, events_per_message: int, run_id: str
) -> Stream:
    """Rebase ``events`` to start at ``t0_ms`` (epoch ms), cut them into messages of
    ``events_per_message - 1`` events plus a probe, and compute what must be stored."""
    per = events_per_message - 1
    n_msgs = math.ceil(len(events) / per)
    fmt = _TimeFormatter()
    payloads, attributes, seen = [], [], set()
    expected: dict[StoredKey, Aggregate] = {}
    last_msg: dict[Cell, int] = {}
    sent = 0
    for m in range(n_msgs):
        send_ms = t0_ms + round(m * seconds * 1000 / n_msgs)
        batch, earliest_ms = [], send_ms
        for i in range(m * per, min((m + 1) * per, len(events))):
            t_ms = t0_ms + int(offsets_ms[i])
            earliest_ms = min(earliest_ms, t_ms)
            ev = {**events[i], "event_time": fmt(t_ms)}
            batch.append(ev)
            if ev["event_id"] not in seen:
                seen.add(ev["event_id"])
                _expect(expected, last_msg, ev["video_id"], ev["event_type"], t_ms, ev.get("value"), m)
        probe = {
            "event_id": f"{PROBE}-{run_id}-{m}",
            "video_id": PROBE,
            "event_type": "view",
            "event_time": fmt(send_ms),
        }
        batch.append(probe)
        _expect(expected, last_msg, PROBE, "view", send_ms, None, m)
        payloads.append(orjson.dumps(batch))
        attributes.append({DEFAULT_TIMESTAMP_ATTRIBUTE: str(earliest_ms)})  # as viewcounts.commands.replay sets it
        sent += len(batch)
    offsets_s = np.arange(n_msgs) * (seconds / n_msgs)
    probe_first = (t0_ms // 60_000) * 60
    probe_end = ((t0_ms + round(seconds * 1000)) // 60_000) * 60 + 60
    return Stream(payloads, attributes, offsets_s, sent, expected, last_msg, (probe_first, probe_end))


def _expect(expected: dict, last_msg: dict, video_id: str, event_type: str, t_ms: int, value, msg: int) -> None:
    s = t_ms // 1000
    one = (
        Aggregate(1, 0, 0.0, None, None) if value is None else Aggregate(1, 1, float(value), float(value), float(value))
    )
    for gran, size in storage.GRANULARITY_SECONDS.items():
        key = (video_id, event_type, gran, s - s % size)
        expected[key] = merge(expected.get(key, EMPTY), one)
    last_msg[(video_id, event_type, s - s % 60)] = msg


# --- publishing ------------------------------------------------------------------------


class Publisher(threading.Thread):
    """Sends ``stream.payloads`` at their offsets from ``start()``, one ``Publish`` RPC per
    message, and records send and acknowledgement times (``time.monotonic``). Then, until
    ``stop()``, sends an empty batch (``[]``, a valid message with no events) every
    ``heartbeat_s`` (None: nothing), so the input never goes idle (see the module docstring)."""

    def __init__(self, stream: Stream, topic_path: str, heartbeat_s: float | None = 0.5) -> None:
        super().__init__(name="bench-publisher", daemon=True)
        from google.cloud import pubsub_v1

        self._stream, self._topic, self._heartbeat_s = stream, topic_path, heartbeat_s
        self._client = pubsub_v1.PublisherClient()
        self._halt = threading.Event()
        n = len(stream.payloads)
        self.sent_at = np.full(n, np.nan)
        self.acked_at = np.full(n, np.nan)
        self.acked = 0  # messages acknowledged so far, in order
        self.error: BaseException | None = None

    def run(self) -> None:
        from google.pubsub_v1.types import PubsubMessage

        s = self._stream
        messages = [PubsubMessage(data=p, attributes=a) for p, a in zip(s.payloads, s.attributes)]
        start = time.monotonic()
        try:
            for i, msg in enumerate(messages):
                delay = start + s.send_offsets_s[i] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing to the target rate
                self.sent_at[i] = time.monotonic()
                self._client.api.publish(topic=self._topic, messages=[msg], timeout=60)
                self.acked_at[i] = time.monotonic()
                self.acked = i + 1
            while self._heartbeat_s and not self._halt.wait(self._heartbeat_s):
                self._client.api.publish(topic=self._topic, messages=[PubsubMessage(data=b"[]")], timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported to the measuring thread
            self.error = exc
            _LOG.exception("publisher failed after %d messages", self.acked)

    def done(self) -> bool:
        return self.error is not None or self.acked == len(self._stream.payloads)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=70)


def publish_once(topic_path: str, events: list[dict]) -> None:
    from google.cloud import pubsub_v1

    client = pubsub_v1.PublisherClient()
    client.publish(topic_path, orjson.dumps(events)).result(timeout=60)
    client.stop()


# --- watching the stored aggregates -----------------------------------------------------


def _utc(s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(s, dt.timezone.utc)


@dataclass
class Watch:
    """Sampled minute cells, grouped by ``(video_id, event_type)``, until each is complete."""

    pending: dict[tuple[str, str], dict[int, int]]  # key -> {minute start: expected count}
    last_msg: dict[Cell, int]
    freshness_s: list[float] = field(default_factory=list)

    @classmethod
    def sample(cls, stream: Stream, top_keys: int, tail_cells: int, seed: int = 5) -> Watch:
        minute = {(v, t, w): a.count for (v, t, g, w), a in stream.expected.items() if g == "minute" and v != PROBE}
        totals: dict[tuple[str, str], int] = {}
        for (v, t, _w), c in minute.items():
            totals[(v, t)] = totals.get((v, t), 0) + c
        top = set(sorted(totals, key=lambda k: (-totals[k], k))[:top_keys])
        rest = sorted(c for c in minute if (c[0], c[1]) not in top)
        chosen = [c for c in minute if (c[0], c[1]) in top]
        chosen += random.Random(seed).sample(rest, min(tail_cells, len(rest)))
        pending: dict[tuple[str, str], dict[int, int]] = {}
        for v, t, w in chosen:
            pending.setdefault((v, t), {})[w] = minute[(v, t, w)]
        return cls(pending, stream.last_msg)

    def cells(self) -> int:
        return len(self.freshness_s) + self.left()

    def left(self) -> int:
        return sum(len(c) for c in self.pending.values())

    def sweep(self, reader, acked: int, acked_at: np.ndarray) -> None:
        """One read per key that has a cell whose last message is published; a cell that
        reads its expected count is done, one that reads more raises ``AssertionError``."""
        for (v, t), cells in list(self.pending.items()):
            ready = [w for w in cells if self.last_msg[(v, t, w)] < acked]
            if not ready:
                continue
            stats = reader.get_stats(v, t, "count", _utc(min(ready)), _utc(max(ready) + 60), "minute")
            seen_at = time.monotonic()
            for b in stats.buckets:
                w = int(b.start.timestamp())
                if w not in ready:
                    continue
                if b.aggregate.count > cells[w]:
                    raise AssertionError(
                        f"({v}, {t}, {_utc(w).isoformat()}): stored count {b.aggregate.count} "
                        f"> {cells[w]} published (double counting)"
                    )
                if b.aggregate.count == cells[w]:
                    self.freshness_s.append(seen_at - acked_at[self.last_msg[(v, t, w)]])
                    del cells[w]
            if not cells:
                del self.pending[(v, t)]


def probe_count(reader, stream: Stream) -> int:
    lo, hi = stream.probe_minutes
    return reader.get_stats(PROBE, "view", "count", _utc(lo), _utc(hi), "minute").combined.count


def stored_differences(reader, stream: Stream, limit: int = 5) -> list[str]:
    """Full scan: differences between every stored aggregate and ``stream.expected`` (empty
    when equal). Raises ``AssertionError`` when a stored count exceeds the expected one."""
    stored = {
        (c.video_id, c.event_type, c.granularity, c.window_start_s): c.aggregate
        for c in reader.all_cells()
        if c.video_id != WARMUP
    }
    out = []
    for key in stream.expected.keys() | stored.keys():
        want, got = stream.expected.get(key), stored.get(key)
        if got is not None and (want is None or got.count > want.count):
            raise AssertionError(f"{key}: stored {got}, published {want} (double counting)")
        if want != got and len(out) < limit:
            out.append(f"{key}: expected {want}, stored {got}")
        elif want != got:
            out.append("...")
            break
    return out


# --- the job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnFlink:
    """How ``measure_e2e`` runs the job on Flink: a session cluster
    (``viewcounts.local.flink.FlinkCluster``) of ``task_managers`` task managers with
    ``task_slots`` slots each and a Python worker pool, the job's ``parallelism`` and
    ``sdk_worker_parallelism`` (Python worker processes per task manager)."""

    parallelism: int
    sdk_worker_parallelism: int = 1
    task_managers: int = 2
    task_slots: int = 2


def job_flags(folder: Path, early_firing_s: int, flink: OnFlink | None = None, cluster=None) -> list[str]:
    """The demo's flags for ``pipelines.streaming`` on the bench's topic, table and folders:
    on the local runner, or (``flink``) submitted to a session cluster with EXTERNAL Python
    workers from its pool and checkpoints under ``folder``."""
    if flink is None:
        runner = runner_flags("local")
    else:
        runner = runner_flags(
            "flink",
            flink_master=cluster.master,
            parallelism=flink.parallelism,
            worker_pool=cluster.worker_pool,
            sdk_worker_parallelism=flink.sdk_worker_parallelism,
            checkpoint_dir=str(folder / "checkpoints"),
        ) + ["--fresh_start"]
    return [
        f"--input_subscription=projects/{PROJECT}/subscriptions/{SUBSCRIPTION}",
        f"--dead_letter_topic=projects/{PROJECT}/topics/{DEAD_TOPIC}",
        f"--archive_path={folder / 'archive'}",
        f"--metadata_path={folder / 'metadata.jsonl'}",
        f"--bigtable_project={PROJECT}",
        f"--bigtable_instance={INSTANCE}",
        f"--bigtable_table={TABLE}",
        f"--early_firing_s={early_firing_s}",
        *runner,
    ]


@contextlib.contextmanager
def streaming_job(flags: list[str], log_path: Path):
    """``python -m pipelines.streaming FLAGS`` in its own process group, stopped by its id."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.streaming", *flags],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _LOG.info("streaming job started (pid %d, log %s)", proc.pid, log_path)
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_until_ready(reader, proc: subprocess.Popen, topic_path: str, timeout_s: float) -> float:
    """Publish a warm-up message and wait until its events are stored; returns seconds waited.
    Raises ``RuntimeError`` if the job dies and ``TimeoutError`` after ``timeout_s``."""
    started = time.monotonic()
    now_s = int(time.time())
    events = [
        {
            "event_id": f"{WARMUP}-{now_s}-{i}",
            "video_id": WARMUP,
            "event_type": "view",
            "event_time": _utc(now_s).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for i in range(10)
    ]
    publish_once(topic_path, events)
    minute = now_s - now_s % 60
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the streaming job exited with {proc.returncode} before storing anything")
        if reader.get_stats(WARMUP, "view", "count", _utc(minute), _utc(minute + 60), "minute").combined.count >= 10:
            return time.monotonic() - started
        time.sleep(0.5)  # polling with a timeout
    raise TimeoutError(f"the streaming job stored nothing within {timeout_s} s")


def _group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "pid (comm)": state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _py_spy() -> str | None:
    """``$PY_SPY``, else ``py-spy`` on ``PATH``, else the one beside this interpreter (the
    venv's, pinned in requirements.lock)."""
    return (
        os.environ.get("PY_SPY")
        or shutil.which("py-spy")
        or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    )


# --- the measurement --------------------------------------------------------------------


@dataclass
class _Run:
    stream: Stream
    publisher: Publisher
    watch: Watch
    job: subprocess.Popen
    counted_msgs: int = 0
    last_poll: float = 0.0
    t_all: float | None = None


def _poll_until_counted(reader, run: _Run, early_firing_s: int, poll_s: float, drain_timeout_s: float) -> None:
    """Poll progress and sampled cells until everything is counted (sets ``run.t_all``) or
    ``drain_timeout_s`` after the last publish."""
    pub, n_msgs = run.publisher, len(run.stream.payloads)
    next_report = time.monotonic()
    while True:
        sweep_start = time.monotonic()
        acked = pub.acked
        run.watch.sweep(reader, acked, pub.acked_at)
        run.counted_msgs = probe_count(reader, run.stream)
        run.last_poll = time.monotonic()
        if sweep_start >= next_report:
            _LOG.info(
                "published %d/%d messages, %d counted, %d sampled cells pending",
                acked,
                n_msgs,
                run.counted_msgs,
                run.watch.left(),
            )
            next_report = sweep_start + 5.0
        if run.counted_msgs > n_msgs:
            raise AssertionError(f"probe counted {run.counted_msgs} > {n_msgs} messages (double counting)")
        if pub.error is not None:
            raise RuntimeError("publishing failed") from pub.error
        if run.job.poll() is not None:
            raise RuntimeError(f"the streaming job exited with {run.job.returncode} during the run")
        if pub.done() and run.counted_msgs == n_msgs and not run.watch.left():
            run.t_all = time.monotonic()
            return
        if pub.done() and time.monotonic() - pub.acked_at[-1] > drain_timeout_s:
            _LOG.warning(
                "not caught up %.0f s after the last publish: %d/%d messages counted",
                drain_timeout_s,
                run.counted_msgs,
                n_msgs,
            )
            return
        time.sleep(max(0.0, poll_s - (time.monotonic() - sweep_start)))  # polling cadence


def _confirm(reader, run: _Run, deadline: float) -> None:
    """Full scan until the stored aggregates equal the expected ones; moves ``t_all`` to the
    end of the first matching scan if the first one differs, clears it at ``deadline``."""
    first = True
    while True:
        diff = stored_differences(reader, run.stream)
        if not diff:
            if not first:
                run.t_all = time.monotonic()
            return
        _LOG.info("full scan: %s", "; ".join(diff))
        first = False
        if time.monotonic() > deadline:
            _LOG.warning("stored aggregates still differ at the deadline: %s", "; ".join(diff))
            run.t_all = None
            return
        time.sleep(2.0)  # polling with a deadline


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _figures(run: _Run, rate: int, seconds: float, early_firing_s: int) -> dict:
    s, pub = run.stream, run.publisher
    first_send, last_ack = float(pub.sent_at[0]), float(np.nanmax(pub.acked_at))
    n = len(s.payloads)
    # M messages sent at offsets 0 .. (M-1)/M of the span: the span is (M / (M-1)) x first send to last ack.
    publish_s = max(last_ack - first_send, 1e-9) * (n / (n - 1) if n > 1 else 1.0)
    per_msg = s.events / len(s.payloads)
    if run.t_all is not None:
        counted, t_end = s.events, run.t_all
    else:
        counted, t_end = round(run.counted_msgs * per_msg), run.last_poll
    sustained = counted / max(publish_s, t_end - first_send - early_firing_s)
    drain = run.t_all - last_ack if run.t_all is not None else None
    return {
        "e2e_target_events_per_s": rate,
        "e2e_sustained_events_per_s": round(sustained, 1),
        "e2e_kept_up": False,
        "freshness_p50_s": _percentile(run.watch.freshness_s, 50),
        "freshness_p99_s": _percentile(run.watch.freshness_s, 99),
        "early_firing_s": early_firing_s,
        "e2e_events": s.events,
        "e2e_seconds": seconds,
        "e2e_publish_events_per_s": round(s.events / publish_s, 1),
        "e2e_drain_lag_s": round(drain, 2) if drain is not None else None,
        "e2e_complete": run.t_all is not None,
        "freshness_cells": run.watch.cells(),
        "freshness_cells_pending": run.watch.left(),
    }


def measure_e2e(
    rate_events_per_s: int,
    seconds: int,
    early_firing_s: int,
    events_per_message: int = 1000,
    *,
    videos: int = 100_000,
    disorder_s: int = 30,
    duplicate_rate: float = 0.0,
    top_keys: int = 5,
    tail_cells: int = 40,
    poll_s: float = 0.5,
    slack_s: float = 10.0,
    drain_timeout_s: float = 180.0,
    heartbeat_s: float | None = 0.5,
    ready_timeout_s: float = 180.0,
    workdir: Path | None = None,
    workload_root: Path | None = None,
    profile_path: Path | None = None,
    flink: OnFlink | None = None,
) -> dict:
    """See the module docstring. ``workdir``: job log, archive and metadata (a temporary
    folder, removed, when None); ``workload_root``: where generated workloads are cached
    (inside ``workdir`` when None); ``heartbeat_s``: empty messages after the stream (None:
    let the input go idle); ``flink``: run the job on a Flink session cluster instead of the
    local runner (see "On Flink" in the module docstring)."""
    if events_per_message < 2 or rate_events_per_s * seconds < events_per_message:
        raise ValueError("events_per_message must be >= 2 and the stream must hold at least one message")
    with contextlib.ExitStack() as stack:
        folder = (
            Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-e2e-")))
        )
        folder.mkdir(parents=True, exist_ok=True)
        n_msgs = round(rate_events_per_s * seconds / events_per_message)
        spec = workload.WorkloadSpec(
            events=n_msgs * (events_per_message - 1),
            videos=videos,
            events_per_message=events_per_message - 1,
            duplicate_rate=duplicate_rate,
            disorder_s=disorder_s,
            span_s=seconds,
        )
        events, offsets_ms = load_workload(spec, Path(workload_root) if workload_root else folder / "workloads")
        _write_metadata(folder / "metadata.jsonl", min(videos, 1000))
        env = _start_product(stack, folder, early_firing_s, flink)
        ready_s = wait_until_ready(env.reader, env.job, env.topic_path, ready_timeout_s)
        if env.cluster is not None:
            env.flink_job_id = env.cluster.wait_for_running(timeout_s=30)[0]
        _LOG.info("job ready after %.1f s; planning %d events", ready_s, len(events) + n_msgs)
        stream = plan_stream(
            events,
            offsets_ms,
            time.time_ns() // 1_000_000,
            seconds,
            events_per_message,
            f"{os.getpid()}-{time.time_ns()}",
        )
        run = _Run(
            stream, Publisher(stream, env.topic_path, heartbeat_s), Watch.sample(stream, top_keys, tail_cells), env.job
        )
        stack.callback(run.publisher.stop)  # before the emulators stop
        cpu = _stream_and_drain(env, run, seconds, early_firing_s, poll_s, drain_timeout_s, profile_path)
        out = _figures(run, rate_events_per_s, seconds, early_firing_s)
        out["e2e_kept_up"] = bool(out["e2e_complete"] and out["e2e_drain_lag_s"] <= early_firing_s + slack_s)
        out.update(cpu, e2e_job_ready_s=round(ready_s, 1))
        _LOG.info("e2e at %d events/s: %s", rate_events_per_s, out)
        return out


@dataclass
class _Product:
    pubsub_pid: int
    bigtable_pid: int
    job: subprocess.Popen
    reader: object  # query.stats.StatsReader
    topic_path: str
    cluster: object = None  # viewcounts.local.flink.FlinkCluster on Flink
    flink_job_id: str | None = None


def _start_product(stack: contextlib.ExitStack, folder: Path, early_firing_s: int, flink: OnFlink | None) -> _Product:
    """Emulators, topics, subscription, table, on Flink a session cluster (started after the
    emulators: its worker pool passes their addresses on to the Python workers through its
    environment), the streaming job and a reader, all stopped by ``stack``."""
    from query.stats import StatsReader
    from viewcounts.local.flink import FlinkCluster

    pubsub = stack.enter_context(emulator_env(pubsub_emulator()))
    bigtable = stack.enter_context(emulator_env(bigtable_emulator()))
    _provision()
    cluster = None
    if flink is not None:
        cluster = stack.enter_context(FlinkCluster(task_managers=flink.task_managers, task_slots=flink.task_slots))
    job = stack.enter_context(streaming_job(job_flags(folder, early_firing_s, flink, cluster), folder / "job.log"))
    reader = stack.enter_context(StatsReader(PROJECT, INSTANCE, TABLE))
    return _Product(pubsub.proc.pid, bigtable.proc.pid, job, reader, f"projects/{PROJECT}/topics/{TOPIC}", cluster)


def _stream_and_drain(
    env: _Product,
    run: _Run,
    seconds: int,
    early_firing_s: int,
    poll_s: float,
    drain_timeout_s: float,
    profile_path: Path | None,
) -> dict:
    """Publish, poll until counted, confirm with a full scan; returns the CPU use
    (``*_cpu_cores``) from the first publish to the end of polling."""
    groups = {"job": env.job.pid, "pubsub_emulator": env.pubsub_pid, "bigtable_emulator": env.bigtable_pid}
    cluster = env.cluster
    cpu0, wall0, self0 = {k: _group_cpu_s(g) for k, g in groups.items()}, time.monotonic(), time.process_time()
    cluster0 = cluster.cpu_seconds() if cluster else {}
    profiler = _start_profiler(cluster.process_pids() if cluster else [env.job.pid], seconds, profile_path)
    run.publisher.start()
    watcher = _MetricsWatcher(cluster.master, env.flink_job_id, run.publisher) if cluster else None
    try:
        _poll_until_counted(env.reader, run, early_firing_s, poll_s, drain_timeout_s)
    finally:
        if watcher:
            watcher.stop()
    wall = time.monotonic() - wall0
    used = {k: _group_cpu_s(g) - cpu0[k] for k, g in groups.items()}
    cpu = {f"{k}_cpu_cores": round(v / wall, 2) for k, v in used.items()}
    cpu["bench_cpu_cores"] = round((time.process_time() - self0) / wall, 2)
    job_cpu_s = used["job"]
    if cluster:
        cluster1 = cluster.cpu_seconds()
        cluster_cpu_s = sum(cluster1[p] - cluster0.get(p, 0.0) for p in cluster1)
        cpu["flink_cluster_cpu_cores"] = round(cluster_cpu_s / wall, 2)
        job_cpu_s += cluster_cpu_s
        cpu.update(watcher.figures())
    cpu["job_cpu_s_per_million_events"] = round(job_cpu_s / run.stream.events * 1e6, 1)
    if run.t_all is not None:
        _confirm(env.reader, run, time.monotonic() + drain_timeout_s)
    _finish_profiler(profiler)
    return cpu


def _provision() -> None:
    provision.create_topic_and_subscription(PROJECT, TOPIC, SUBSCRIPTION)
    provision.create_topic_and_subscription(PROJECT, DEAD_TOPIC, DEAD_SUBSCRIPTION)
    provision.create_table(PROJECT, INSTANCE, TABLE)


def _write_metadata(path: Path, videos: int) -> None:
    with open(path, "wb") as f:
        for i in range(1, videos + 1):
            f.write(
                orjson.dumps({"video_id": f"video-{i:07d}", "title": f"Video {i}", "channel": f"ch-{i % 97}"}) + b"\n"
            )


def _python_pids(pids: list[int]) -> list[int]:
    """The Python interpreters among ``pids`` (what py-spy can sample; not the JVMs)."""
    out = []
    for pid in pids:
        try:
            if "python" in psutil.Process(pid).name():
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def _start_profiler(pids: list[int], seconds: float, profile_path: Path | None) -> list[subprocess.Popen]:
    """One ``py-spy record`` per Python process of ``pids`` (a job on the local runner: its
    launcher; on Flink: the worker pool and its SDK workers), for ``seconds``; the first
    writes to ``profile_path``, the others to ``profile_path`` with ``.<pid>`` appended."""
    if profile_path is None:
        return []
    exe = _py_spy()
    if exe is None:
        _LOG.warning("no py-spy (set PY_SPY or put it on PATH): not profiling")
        return []
    procs = []
    for n, pid in enumerate(_python_pids(pids)):
        out = profile_path if n == 0 else profile_path.with_name(f"{profile_path.name}.{pid}")
        procs.append(
            subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(seconds))),
                    "--rate",
                    "50",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def _finish_profiler(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)


class _MetricsWatcher(threading.Thread):
    """Reads ``viewcounts.local.job_metrics.flink_job_metrics`` every ``period_s`` while the
    stream runs (published messages from the publisher, for the backlog); ``figures()``
    summarises what it read: ``flink_metrics_reads``, the largest watermark lag, oldest
    unacked age and backlog seen, the last read's watermark lag
    (``flink_watermark_lag_last_s``), counters (``flink_counters``) and vertices."""

    def __init__(self, rest_url: str, job_id: str, publisher: Publisher, period_s: float = 2.0) -> None:
        super().__init__(name="bench-flink-metrics", daemon=True)
        self._rest, self._job, self._pub, self._period_s = rest_url, job_id, publisher, period_s
        self._halt = threading.Event()
        self.reads: list[dict] = []
        self.start()

    def run(self) -> None:
        from viewcounts.local.job_metrics import flink_job_metrics

        while not self._halt.wait(self._period_s):
            try:
                self.reads.append(flink_job_metrics(self._rest, self._job, self._pub.acked))
            except OSError as exc:  # the REST API busy or restarting: skip this read
                _LOG.warning("reading the job's metrics failed: %s", exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def figures(self) -> dict:
        def peak(key: str):
            seen = [r[key] for r in self.reads if r[key] is not None]
            return max(seen) if seen else None

        return {
            "flink_metrics_reads": len(self.reads),
            "flink_watermark_lag_max_s": peak("watermark_lag_s"),
            "flink_watermark_lag_last_s": self.reads[-1]["watermark_lag_s"] if self.reads else None,
            "flink_oldest_unacked_age_max_s": peak("oldest_unacked_age_s"),
            "flink_backlog_max_messages": peak("backlog_messages"),
            "flink_counters": self.reads[-1]["counters"] if self.reads else {},
            "flink_vertices": self.reads[-1]["vertices"] if self.reads else [],
        }


def find_sustained_rate(
    rates: tuple[int, ...] = (5_000, 10_000, 20_000, 40_000), seconds: int = 20, early_firing_s: int = 2, **kwargs
) -> dict:
    """``measure_e2e`` at each rate in turn until one is not kept up. Returns
    ``{"e2e_sustained_rate": highest rate kept up (0 when none), "steps": [figures...]}``."""
    kwargs.setdefault("drain_timeout_s", 60.0)
    steps, best = [], 0
    for rate in rates:
        figures = measure_e2e(rate, seconds, early_firing_s, **kwargs)
        steps.append(figures)
        if not figures["e2e_kept_up"]:
            break
        best = rate
    return {"e2e_sustained_rate": best, "steps": steps}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="end-to-end throughput and freshness on the local runner or Flink")
    p.add_argument("--rate", type=int, nargs="+", default=[2000])
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--early-firing-s", type=int, default=2)
    p.add_argument("--events-per-message", type=int, default=1000)
    p.add_argument("--videos", type=int, default=100_000, help="distinct videos in the workload (Zipf)")
    p.add_argument("--drain-timeout-s", type=float, default=180.0)
    p.add_argument("--no-heartbeat", action="store_true", help="let the input go idle after the stream")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of the job (first rate)")
    p.add_argument(
        "--flink-parallelism",
        type=int,
        default=None,
        help="run the job on a Flink session cluster (2 task managers x 2 slots) at this parallelism",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    for n, rate in enumerate(args.rate):
        wd = args.workdir / f"r{rate}" if args.workdir else None
        res = measure_e2e(
            rate,
            args.seconds,
            args.early_firing_s,
            args.events_per_message,
            videos=args.videos,
            drain_timeout_s=args.drain_timeout_s,
            workdir=wd,
            heartbeat_s=None if args.no_heartbeat else 0.5,
            profile_path=args.profile if n == 0 else None,
            flink=OnFlink(args.flink_parallelism) if args.flink_parallelism else None,
        )
        sys.stdout.write(orjson.dumps(res).decode() + "\n")
