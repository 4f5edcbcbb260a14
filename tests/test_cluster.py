"""The production recipe on a Flink session cluster: 2 task managers with 2 slots each and a
Python worker pool (EXTERNAL environment), the streaming job submitted detached
(``viewcounts.commands.submit``: the launcher exits, the job keeps running), at parallelism 2 and 4.
Each run replays flights with their real 2013 times and ends with every stored aggregate
equal to the polars reference; the work must have spread: SDK worker processes of the pool
(at least 2) and subtasks on both task managers. One cluster for the module, stopped by PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from pipelines.runners import runner_flags
from tests.streaming_jobs import Deployment, archive_missing
from viewcounts.commands import replay
from viewcounts.local.flink import FlinkCluster

pytestmark = [pytest.mark.cluster, pytest.mark.flink, pytest.mark.slow, pytest.mark.emulator]

HISTORICAL = replay.ReplayPlan(duplicate_rate=0.05, time_mode="real", events_per_message=100)
CONVERGE_S = 240
SUBMIT_S = 300


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    with FlinkCluster(task_managers=2, task_slots=2) as c:
        yield c
    print(f"cluster module: {time.monotonic() - started:.0f} s with the cluster up")


@pytest.fixture
def deployment(tmp_path, pubsub_host, bigtable_host):
    return Deployment(str(tmp_path))


def _group_alive(pgid: int) -> list[int]:
    """PIDs still in process group ``pgid``."""
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return alive


def _launch(
    d: Deployment, cluster: FlinkCluster, parallelism: int, *flags: str, checkpointing_interval_ms: int = 5000
) -> subprocess.Popen:
    """``python -m viewcounts.commands.submit`` in a process group of its own (stdout piped, stderr to
    ``submit.log`` in the deployment's folder)."""
    argv = [
        sys.executable,
        "-m",
        "viewcounts.commands.submit",
        "--no_event_age_check",
        *d.job_flags(
            *runner_flags(
                "flink",
                flink_master=cluster.master,
                parallelism=parallelism,
                worker_pool=cluster.worker_pool,
                checkpoint_dir=f"{d.folder}/checkpoints",
                checkpointing_interval_ms=checkpointing_interval_ms,
            ),
            *flags,
        ),
    ]
    with open(f"{d.folder}/submit.log", "wb") as log:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, start_new_session=True)


def submit_detached(d: Deployment, cluster: FlinkCluster, parallelism: int, *flags: str) -> str:
    """``python -m viewcounts.commands.submit``; waits for it to exit, then kills whatever is left of
    its group; returns the Flink job id it printed."""
    launcher = _launch(d, cluster, parallelism, *flags)
    out, _ = launcher.communicate(timeout=SUBMIT_S)
    assert launcher.returncode == 0, f"submission failed; see {d.folder}/submit.log"
    try:
        os.killpg(launcher.pid, 9)  # anything the launcher left behind (its job server exits with it)
    except ProcessLookupError:
        pass
    assert _group_alive(launcher.pid) == []
    return out.decode().split()[-1]


@pytest.mark.parametrize("parallelism", [2, 4])
def test_detached_job_spreads_over_the_cluster_and_equals_the_reference(cluster, deployment, parallelism):
    started = time.monotonic()
    job_id = submit_detached(deployment, cluster, parallelism)
    submitted_s = time.monotonic() - started
    try:
        assert cluster.job_status(job_id) == "RUNNING"
        # the launcher returns only once the job is healthy: a checkpoint completed, no exception
        assert cluster.rest(f"/jobs/{job_id}/checkpoints")["counts"]["completed"] >= 1
        assert cluster.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"] == []
        events = replay.plan_events(replay.read_source("flights", 3000), HISTORICAL, time.time_ns() // 1000)
        figures = deployment.publish(events, HISTORICAL)
        workers = cluster.sdk_workers()
        mismatches, waited = deployment.converged(CONVERGE_S)
        workers = max(workers, cluster.sdk_workers())
        assert mismatches == [], mismatches[:5]
        deadline = time.monotonic() + 60
        while archive_missing(deployment.folder, events) and time.monotonic() < deadline:
            time.sleep(1)
        assert archive_missing(deployment.folder, events) == 0
        assert cluster.job_status(job_id) == "RUNNING"
        assert workers >= 2, f"{workers} SDK worker processes"
        assert cluster.job_taskmanagers(job_id) == cluster.taskmanager_ids()
        print(
            f"parallelism {parallelism}: submitted in {submitted_s:.0f} s; {figures['published']} events, "
            f"every aggregate equal {waited:.1f} s after publishing; {workers} SDK workers"
        )
    finally:
        _cancel(cluster, job_id)


def test_a_launcher_stopped_before_the_job_is_healthy_cancels_it_and_leaves_nothing(cluster, deployment):
    """SIGTERM to the launcher while it waits (a 10-minute checkpoint interval keeps the job
    from being healthy, so the launcher is still waiting when the job already runs): the job
    it submitted is cancelled and no process of its group (Beam's Java job server) is left."""
    before = {j["jid"] for j in cluster.rest("/jobs/overview")["jobs"]}
    launcher = _launch(deployment, cluster, 2, checkpointing_interval_ms=600_000)
    try:
        job_id = None
        deadline = time.monotonic() + SUBMIT_S
        while job_id is None and time.monotonic() < deadline:
            assert launcher.poll() is None, f"the launcher exited early; see {deployment.folder}/submit.log"
            job_id = next(iter(cluster.running_jobs()), None)
            time.sleep(0.5)
        assert job_id is not None, "the job never ran"
        launcher.terminate()
        launcher.wait(timeout=60)
        assert launcher.returncode != 0
        deadline = time.monotonic() + 30
        while _group_alive(launcher.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _group_alive(launcher.pid) == [], "processes of the launcher outlived it"
        deadline = time.monotonic() + 60  # the launcher asked for the cancellation; Flink does it asynchronously
        while cluster.job_status(job_id) != "CANCELED" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.job_status(job_id) == "CANCELED"
    finally:
        try:
            os.killpg(launcher.pid, 9)
        except ProcessLookupError:
            pass
        _cancel_jobs_since(cluster, before)


def test_the_recompute_runs_as_a_batch_job_on_the_cluster(cluster, table, tmp_path):
    """``viewcounts recompute`` submitted to the session cluster at parallelism 2 with the
    worker pool (the production recipe, in Flink's batch mode): it ends, the job is FINISHED
    on the cluster, and the stored aggregates equal the model of the archive (copies across
    files and hours included)."""
    from tests.test_recompute import H0, model, write_archive
    from tests.test_recompute_runs import _args, _copies, _stored
    from viewcounts.cli import main
    from viewcounts.commands.reconcile import reconcile

    copies = _copies(4000, H0, 6 * 3600, seed=11)
    archive = str(tmp_path / "archive")
    write_archive(archive, copies)
    before = {j["jid"] for j in cluster.rest("/jobs/overview")["jobs"]}
    flags = runner_flags("flink", flink_master=cluster.master, parallelism=2, worker_pool=cluster.worker_pool)
    assert main(_args(table, archive, H0, H0 + 6 * 3600, "--", *flags)) == 0
    jobs = [j for j in cluster.rest("/jobs/overview")["jobs"] if j["jid"] not in before]
    assert [j["state"] for j in jobs] == ["FINISHED"]
    assert reconcile(model(copies), _stored(table)) == []


def _cancel_jobs_since(cluster: FlinkCluster, before: set[str], settle_s: float = 20.0) -> None:
    """Cancel every job not in ``before`` and wait for each to end. A launcher killed while it
    submitted may have handed its job to the cluster a moment before: jobs appearing within
    ``settle_s`` are cancelled too, so a failed test leaves no job to the next."""
    deadline = time.monotonic() + settle_s
    while True:
        for j in cluster.rest("/jobs/overview")["jobs"]:
            if j["jid"] not in before:
                _cancel(cluster, j["jid"])
        if time.monotonic() >= deadline:
            return
        time.sleep(2)


def _cancel(cluster: FlinkCluster, job_id: str) -> None:
    """Cancel ``job_id`` and wait until it has ended (its slots are free again)."""
    if cluster.job_status(job_id) not in ("CANCELED", "FAILED", "FINISHED"):
        cluster.cancel(job_id)
    deadline = time.monotonic() + 60
    while cluster.job_status(job_id) not in ("CANCELED", "FAILED", "FINISHED") and time.monotonic() < deadline:
        time.sleep(0.5)
