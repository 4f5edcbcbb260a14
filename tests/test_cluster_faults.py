"""Faults on a Flink session cluster (issue 13): the streaming job, submitted detached
(``python -m viewcounts.commands.submit``: the launcher exits once the job runs), runs distributed on
``viewcounts.local.flink.FlinkCluster`` (2 task managers of 2 slots, Python workers from the
EXTERNAL worker pool, retained checkpoints every 5 s), replays 3,000 flights with 5 %
duplicates, and every fault ends with 0 mismatches between the stored minute and hour
aggregates and the polars reference over the replay manifests.

Each replay is paced in chunks: the first half is counted (aggregates stored, so windows
have fired) and checkpointed, two more chunks are published, and the fault lands while the
job works on them; the rest is published while the job recovers.

The flights' times are shifted to end when the job runs and compressed into ``SPAN_S`` of
event time (half the allowed lateness, 600 s), as in a live stream: messages in flight
when a worker dies come back after the subscription's ack deadline (60 s), and with the
flights' real 2013 times (4 days of event time in 12 s of replay) the rest of the replay
would have moved the watermark days past them by then.

* A task manager killed (SIGKILL, with its Python SDK workers): Beam 2.70's Flink runner
  sets no restart strategy (``--number_of_execution_retries`` and
  ``--execution_retry_delay`` default to -1, "use the cluster's"), so Flink 1.19's default
  for a checkpointed job applies: exponential-delay. The job restarts in place from its
  last checkpoint (same job id, ``numRestarts`` >= 1, nothing resubmits it) on the
  surviving task manager's slots, as a cluster with spare slots does before any
  replacement arrives; the replacement task manager is started afterwards.
  Before ``transforms.pubsub_io.AckLedger`` this failed in 2 runs of 4 (373 and 409
  aggregates absent): Beam 2.70's Flink runner finalizes, at the completion notice of
  checkpoint N, every bundle finished so far (``ExecutableStageDoFnOperator.notifyCheckpointComplete``
  -> ``InMemoryFinalizer.finalizeAllOutstandingBundles``), including bundles that ran after
  checkpoint N's barrier, and the source acknowledged their messages at once, though no
  completed checkpoint held their effects (seen: the chunk published 2 s after checkpoint 2
  completed and 1 s before the kill was archived once, before the kill, and never
  redelivered; the job restored checkpoint 2). The source now acknowledges only after three
  later finalization rounds.
* Stop with a savepoint at parallelism 2, resume from it at parallelism 4: every vertex
  that ran 2 subtasks runs 4 (the Impulse source runs 1 at any parallelism), on both task
  managers, and the new job's restored checkpoint is that savepoint.
* The job manager killed (SIGKILL; no HA: the job dies with it): the job manager is
  started again, the task managers register again, and the job, submitted again with the
  same flags, resumes from the newest retained checkpoint (``pipelines.runners.prepare``;
  Flink reports a checkpoint restored through ``--savepoint_path`` as ``is_savepoint``).
"""

from __future__ import annotations

import glob
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from pipelines.runners import runner_flags
from query.stats import StatsReader
from tests.streaming_jobs import INSTANCE, PROJECT, Deployment, latest_checkpoint
from viewcounts.commands import replay
from viewcounts.local.flink import FlinkCluster

pytestmark = [pytest.mark.cluster, pytest.mark.faults, pytest.mark.flink, pytest.mark.slow, pytest.mark.emulator]

SPAN_S = 300  # event time of the whole replay, ending when the job runs: half the allowed lateness (600 s)
PLAN = replay.ReplayPlan(duplicate_rate=0.05, time_mode="shift", fit_span_s=SPAN_S, events_per_message=50)
EVENTS = 3000
CHUNKS = 12  # the replay in 12 chunks: 6 before the fault, 2 in flight at it, 4 after
CHUNK_PAUSE_S = 1.0
CONVERGE_S = 300
JOB_START_S = 180
TASK_MANAGERS = 2


@pytest.fixture(scope="module")
def cluster():
    with FlinkCluster(task_managers=TASK_MANAGERS, task_slots=2) as c:
        yield c


@pytest.fixture
def deployment(tmp_path, pubsub_host, bigtable_host, cluster):
    """A fresh deployment on a cluster with every task manager registered and no job running;
    cancels whatever job is left on the cluster at the end."""
    cluster.wait_for_taskmanagers()
    assert cluster.running_jobs() == [], "a job of an earlier test is still running"
    yield Deployment(str(tmp_path))
    for job_id in _try(cluster.running_jobs, []):
        _try(lambda: cluster.cancel(job_id), None)


def _try(call, default):
    try:
        return call()
    except OSError:
        return default


def _wait_for(predicate, timeout_s: float, what: str):
    """Poll ``predicate`` every second until it returns something truthy (returned); raises
    AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = _try(predicate, None)
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _flights() -> list[list[dict]]:
    """``EVENTS`` flights in time order with 5 % duplicates, their times shifted to end now
    and compressed into ``SPAN_S``, in ``CHUNKS`` chunks."""
    events = replay.plan_events(replay.read_source("flights", EVENTS), PLAN, time.time_ns() // 1000)
    size = -(-len(events) // CHUNKS)
    return [events[i : i + size] for i in range(0, len(events), size)]


def _publish(d: Deployment, chunks: list[list[dict]]) -> None:
    for chunk in chunks:
        d.publish(chunk, PLAN)
        time.sleep(CHUNK_PAUSE_S)


def _publish_in_background(d: Deployment, chunks: list[list[dict]]) -> threading.Thread:
    thread = threading.Thread(target=_publish, args=(d, chunks), daemon=True)
    thread.start()
    return thread


def _some_rows(d: Deployment) -> bool:
    with StatsReader(PROJECT, INSTANCE, d.table) as reader:
        return next(iter(reader.all_cells()), None) is not None


def _checkpoints(cluster: FlinkCluster, job_id: str) -> dict:
    """Flink's checkpoint statistics of ``job_id`` (counts, latest completed and restored)."""
    return cluster.rest(f"/jobs/{job_id}/checkpoints")


def _completed(cluster: FlinkCluster, job_id: str) -> int:
    return _checkpoints(cluster, job_id)["counts"]["completed"]


def _num_restarts(cluster: FlinkCluster, job_id: str) -> int:
    (metric,) = cluster.rest(f"/jobs/{job_id}/metrics?get=numRestarts")
    return int(metric["value"])


def _restart_strategy(cluster: FlinkCluster, job_id: str) -> str:
    """The restart back-off strategy the job master logged for ``job_id`` (its class and settings)."""
    for path in glob.glob(f"{cluster.dir}/log/jobmanager/*.log*"):
        for line in Path(path).read_text(errors="replace").splitlines():
            if "Using restart back off time strategy" in line and job_id in line:
                return line.split("strategy ", 1)[1]
    return ""


def _vertex_key(name: str) -> str:
    """A Flink vertex name with its fused stages in sorted order.

    Beam's portable fuser lists a fused vertex's stages in an order that may differ between two
    submissions of the same pipeline (``[9]{count events, enrich, top entities, ...}`` once,
    ``[9]{count events, top entities, enrich, ...}`` the next time); the set of stages is what names it.
    """
    match = re.fullmatch(r"(\[\d+\])\{(.*)\}", name)
    return name if match is None else f"{match[1]}{{{', '.join(sorted(match[2].split(', ')))}}}"


def _parallelisms(cluster: FlinkCluster, job_id: str) -> dict[str, int]:
    """Subtasks per vertex of ``job_id``, by vertex name with its fused stages sorted (``_vertex_key``)."""
    return {_vertex_key(v["name"]): v["parallelism"] for v in cluster.rest(f"/jobs/{job_id}")["vertices"]}


def _taskmanagers_of(cluster: FlinkCluster, job_id: str) -> set[str]:
    """Flink ids of the task managers running subtasks of ``job_id``."""
    return {
        tm["taskmanager-id"]
        for vertex in cluster.rest(f"/jobs/{job_id}")["vertices"]
        for tm in cluster.rest(f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]
    }


def _index_of(cluster: FlinkCluster, tm_id: str) -> int:
    """The ``FlinkCluster`` index of the task manager Flink calls ``tm_id`` (the one listening on its data port)."""
    (data_port,) = [tm["dataPort"] for tm in cluster.rest("/taskmanagers")["taskmanagers"] if tm["id"] == tm_id]
    for i in range(TASK_MANAGERS):
        pids = cluster.taskmanager_pids(i)
        if pids and any(
            c.laddr.port == data_port and c.status == psutil.CONN_LISTEN
            for c in psutil.Process(pids[0]).net_connections(kind="tcp")
        ):
            return i
    raise LookupError(f"no task manager process listens on {tm_id}'s data port {data_port}")


def _local(path: str) -> str:
    """A checkpoint or savepoint location as a plain path (Flink writes ``file:/...``)."""
    return path.removeprefix("file://").removeprefix("file:").rstrip("/")


def _flags(cluster: FlinkCluster, parallelism: int, checkpoints: str, *extra: str) -> list[str]:
    return [
        "--no_event_age_check",
        *runner_flags(
            "flink",
            flink_master=cluster.master,
            parallelism=parallelism,
            worker_pool=cluster.worker_pool,
            checkpoint_dir=checkpoints,
        ),
        *extra,
    ]


def _submit(d: Deployment, cluster: FlinkCluster, flags: list[str]) -> str:
    """Submit the job detached (``python -m viewcounts.commands.submit``: the launcher exits once every
    task runs; its log is ``submit-N.log`` in the deployment's folder); returns the Flink job id."""
    log_path = f"{d.folder}/submit-{len(glob.glob(f'{d.folder}/submit-*.log'))}.log"
    with open(log_path, "wb") as log:
        done = subprocess.run(
            [sys.executable, "-m", "viewcounts.commands.submit", *d.job_flags(*flags)],
            stdout=subprocess.PIPE,
            stderr=log,
            timeout=JOB_START_S + 60,
        )
    assert done.returncode == 0, f"the submission failed with {done.returncode}; see {log_path}"
    job_id = done.stdout.decode().split()[-1]
    assert cluster.running_jobs() == [job_id]
    return job_id


def _first_half_counted(d: Deployment, cluster: FlinkCluster, job_id: str, chunks) -> None:
    """Publish the first half, wait for stored aggregates and a checkpoint completed after them."""
    _publish(d, chunks[: CHUNKS // 2])
    _wait_for(lambda: _some_rows(d), CONVERGE_S, "the first aggregates")
    done = _completed(cluster, job_id)
    _wait_for(lambda: _completed(cluster, job_id) > done, 60, "a checkpoint after the first aggregates")


def _by_chunk(mismatches: list, chunks: list[list[dict]]) -> dict[int, int]:
    """How many events of each replay chunk (first copies only) fall in a mismatched
    aggregate's window: ``{chunk index: events}``."""
    windows = {(m.key[0], m.key[1], m.key[2]): set() for m in mismatches}
    for m in mismatches:
        windows[m.key[:3]].add(m.key[3])
    seen, found = set(), Counter()
    for i, chunk in enumerate(chunks):
        for e in chunk:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            t = int(datetime.fromisoformat(e["event_time"].replace("Z", "+00:00")).timestamp())
            for granularity, size in (("minute", 60), ("hour", 3600)):
                if t - t % size in windows.get((e.get("video_id"), e.get("event_type"), granularity), ()):
                    found[i] += 1
                    break
    return dict(sorted(found.items()))


def _exact(d: Deployment, tail: threading.Thread, chunks: list[list[dict]]) -> float:
    """Wait for the tail of the replay, then for every aggregate to equal the reference;
    returns the seconds waited after the tail. The failure message counts the mismatches
    per replay chunk (the fault lands after chunk ``CHUNKS // 2 + 1``)."""
    tail.join(timeout=120)
    mismatches, waited = d.converged(CONVERGE_S)
    assert mismatches == [], (len(mismatches), _by_chunk(mismatches, chunks), mismatches[:5])
    return waited


def test_a_killed_task_manager_is_recovered_by_the_restart_strategy_from_the_last_checkpoint(
    deployment, cluster, tmp_path
):
    d = deployment
    job_id = _submit(d, cluster, _flags(cluster, 2, str(tmp_path / "checkpoints")))
    chunks = _flights()
    _first_half_counted(d, cluster, job_id, chunks)
    assert _num_restarts(cluster, job_id) == 0
    strategy = _restart_strategy(cluster, job_id)
    assert strategy.startswith("ExponentialDelayRestartBackoffTimeStrategy("), strategy
    _publish(d, chunks[CHUNKS // 2 : CHUNKS // 2 + 2])
    victim_id = min(_taskmanagers_of(cluster, job_id))
    victim = _index_of(cluster, victim_id)
    killed = cluster.kill_taskmanager(victim)
    tail = _publish_in_background(d, chunks[CHUNKS // 2 + 2 :])
    fault_at = time.monotonic()
    _wait_for(lambda: _num_restarts(cluster, job_id) >= 1, 120, "Flink to restart the job")
    assert cluster.wait_for_running(timeout_s=120) == [job_id], "the job was not restarted in place"
    running_again = time.monotonic() - fault_at
    survivors = _taskmanagers_of(cluster, job_id)
    assert survivors and victim_id not in survivors, (victim_id, survivors)
    restored = _checkpoints(cluster, job_id)["latest"]["restored"]
    assert restored is not None and not restored["is_savepoint"], restored
    cluster.start_taskmanager(victim)  # the replacement joins the cluster
    waited = _exact(d, tail, chunks)
    assert [j["id"] for j in cluster.rest("/jobs")["jobs"]] == [job_id], "the job was resubmitted"
    print(
        f"task manager {victim} killed (pids {killed}): {_num_restarts(cluster, job_id)} restarts, running "
        f"again on {sorted(survivors)} after {running_again:.1f} s, restored checkpoint "
        f"{restored['id']}; {EVENTS} flights exact {waited:.1f} s after the replay ended"
    )


def test_stop_with_savepoint_at_parallelism_2_and_resume_at_4(deployment, cluster, tmp_path):
    d, checkpoints = deployment, str(tmp_path / "checkpoints")
    job_id = _submit(d, cluster, _flags(cluster, 2, checkpoints))
    chunks = _flights()
    before = _parallelisms(cluster, job_id)
    assert max(before.values()) == 2, before
    _first_half_counted(d, cluster, job_id, chunks)
    _publish(d, chunks[CHUNKS // 2 : CHUNKS // 2 + 2])
    savepoint = cluster.stop_with_savepoint(job_id, f"file://{tmp_path}/savepoints")
    tail = _publish_in_background(d, chunks[CHUNKS // 2 + 2 :])
    assert cluster.job_status(job_id) == "FINISHED"
    job_id = _submit(d, cluster, _flags(cluster, 4, checkpoints, f"--savepoint_path={savepoint}"))
    after = _parallelisms(cluster, job_id)
    assert after == {name: 4 if p == 2 else p for name, p in before.items()}, (before, after)
    assert len(_taskmanagers_of(cluster, job_id)) == TASK_MANAGERS
    restored = _checkpoints(cluster, job_id)["latest"]["restored"]
    assert restored is not None and restored["is_savepoint"], restored
    assert _local(restored["external_path"]) == _local(savepoint), (restored, savepoint)
    waited = _exact(d, tail, chunks)
    print(
        f"savepoint {savepoint} at parallelism 2, resumed at 4 (vertices at 1: "
        f"{[name for name, p in after.items() if p == 1]}): exact {waited:.1f} s after the replay ended"
    )


def test_a_killed_job_manager_restarted_and_the_job_resubmitted_resumes_from_its_retained_checkpoint(
    deployment, cluster, tmp_path
):
    d, checkpoints = deployment, str(tmp_path / "checkpoints")
    flags = _flags(cluster, 2, checkpoints)
    job_id = _submit(d, cluster, flags)
    chunks = _flights()
    _first_half_counted(d, cluster, job_id, chunks)
    _publish(d, chunks[CHUNKS // 2 : CHUNKS // 2 + 2])
    cluster.kill_jobmanager()
    retained = latest_checkpoint(checkpoints)
    assert retained is not None and Path(retained).parent.name == job_id
    cluster.start_jobmanager()
    cluster.wait_for_taskmanagers()
    assert cluster.rest("/jobs")["jobs"] == [], "the job survived its job manager: the fault did not happen"
    # the task managers run the old job's tasks until they notice the job manager is gone:
    # the rest of the replay is published once they have released every slot, so the
    # resubmitted job, not the old one, counts it
    _wait_for(
        lambda: all(tm["freeSlots"] == tm["slotsNumber"] for tm in cluster.rest("/taskmanagers")["taskmanagers"]),
        120,
        "the task managers to drop the old job's tasks",
    )
    tail = _publish_in_background(d, chunks[CHUNKS // 2 + 2 :])
    job_id = _submit(d, cluster, flags)
    restored = _checkpoints(cluster, job_id)["latest"]["restored"]  # is_savepoint: restored through the savepoint path
    assert restored is not None and _local(restored["external_path"]) == _local(retained), (restored, retained)
    with open(f"{d.folder}/submit-1.log", "rb") as log:
        assert b"resuming from the newest retained checkpoint" in log.read()
    waited = _exact(d, tail, chunks)
    print(
        f"job manager killed and restarted, job resubmitted from {retained}: "
        f"exact {waited:.1f} s after the replay ended"
    )
