"""The streaming job on Flink (and Prism), against the emulators: embedded (``[local]``) and submitted to
a session cluster from the apache-flink wheels, with checkpoints, replaying flights with
their real 2013 times; every stored minute and hour aggregate is compared with the polars
reference over the replay manifests (no loss, no double count).

Restores: after a kill, from the last retained checkpoint (embedded); after
stop-with-savepoint (session cluster). Metadata on Flink and Prism is read by the enriching
workers and refreshed (``transforms.enrich.EnrichFromFile``). The replay and the refresh
also run on Prism. ``make runners`` builds what these tests need.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from pipelines.runners import runner_flags
from query.stats import StatsReader
from tests.streaming_jobs import INSTANCE, PROJECT, Deployment, archive_missing, kill, latest_checkpoint
from viewcounts.commands import replay
from viewcounts.local.flink import FlinkCluster

pytestmark = [pytest.mark.slow, pytest.mark.emulator, pytest.mark.flink]

HISTORICAL = replay.ReplayPlan(duplicate_rate=0.05, time_mode="real", events_per_message=100)
CONVERGE_S = 240


def _flights(n: int, plan: replay.ReplayPlan = HISTORICAL) -> list[dict]:
    return replay.plan_events(replay.read_source("flights", n), plan, time.time_ns() // 1000)


@pytest.fixture
def deployment(tmp_path, pubsub_host, bigtable_host):
    return Deployment(str(tmp_path))


@pytest.fixture(scope="module")
def cluster():
    with FlinkCluster() as c:
        yield c


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _job_flags(runner: str, tmp_path, flink_master: str = "[local]") -> list[str]:
    """Prism's flags, or Flink's with checkpoints retained under ``tmp_path``."""
    if runner == "prism":
        return runner_flags("prism")
    return runner_flags("flink", flink_master=flink_master, checkpoint_dir=str(tmp_path / "checkpoints"))


def _some_rows(d: Deployment) -> bool:
    with StatsReader(PROJECT, INSTANCE, d.table) as reader:
        return next(iter(reader.all_cells()), None) is not None


@pytest.mark.parametrize(
    "where",
    [
        "embedded",
        "session-cluster",
        pytest.param("prism", marks=pytest.mark.prism),
    ],
)
def test_historical_replay_equals_the_reference(deployment, tmp_path, where, request):
    cluster = request.getfixturevalue("cluster") if where == "session-cluster" else None
    master = cluster.master if cluster else "[local]"
    job = deployment.start_job(
        "--no_event_age_check", *_job_flags("prism" if where == "prism" else "flink", tmp_path, master)
    )
    try:
        events = _flights(3000)
        figures = deployment.publish(events, HISTORICAL)
        mismatches, waited = deployment.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        print(f"{where}: {figures['published']} events, every aggregate equal {waited:.1f} s after publishing")
        # the event-time watermark closes every archive window once the stream is idle
        _wait_for(lambda: archive_missing(deployment.folder, events) == 0, 60, "every event in the raw archive")
    finally:
        if cluster:
            for job_id in cluster.running_jobs():
                cluster.cancel(job_id)
        kill(job)


def test_killed_job_restored_from_its_last_checkpoint_counts_exactly_once(deployment, tmp_path):
    events = _flights(3000)
    half = len(events) // 2
    checkpoints = str(tmp_path / "checkpoints")
    job = deployment.start_job("--no_event_age_check", *runner_flags("flink", checkpoint_dir=checkpoints))
    try:
        deployment.publish(events[:half], HISTORICAL)
        _wait_for(lambda: _some_rows(deployment), CONVERGE_S, "the first aggregates")
        before = latest_checkpoint(checkpoints)
        _wait_for(lambda: latest_checkpoint(checkpoints) not in (None, before), 60, "a checkpoint after them")
    finally:
        kill(job, signal.SIGKILL)
    restore_from = latest_checkpoint(checkpoints)
    deployment.publish(events[half:], HISTORICAL)
    job = deployment.start_job(
        "--no_event_age_check", *runner_flags("flink", checkpoint_dir=checkpoints, savepoint_path=restore_from)
    )
    try:
        mismatches, _ = deployment.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
    finally:
        kill(job)


def test_stop_with_savepoint_and_resume_on_a_session_cluster(deployment, cluster, tmp_path):
    events = _flights(3000)
    half = len(events) // 2
    flags = ["--no_event_age_check", *runner_flags("flink", flink_master=cluster.master)]
    job = deployment.start_job(*flags)
    try:
        deployment.publish(events[:half], HISTORICAL)
        _wait_for(lambda: _some_rows(deployment), CONVERGE_S, "the first aggregates")
        (job_id,) = _wait_for(cluster.running_jobs, 60, "the job on the cluster")
        savepoint = cluster.stop_with_savepoint(job_id, f"file://{tmp_path}/savepoints")
        job.wait(timeout=120)
    finally:
        kill(job)
    deployment.publish(events[half:], HISTORICAL)
    job = deployment.start_job(*flags, f"--savepoint_path={savepoint}")
    try:
        mismatches, _ = deployment.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
    finally:
        for job_id in cluster.running_jobs():
            cluster.cancel(job_id)
        kill(job)


@pytest.mark.parametrize("runner", ["flink", pytest.param("prism", marks=pytest.mark.prism)])
def test_metadata_refresh_reaches_later_panes(deployment, tmp_path, runner):
    metadata = tmp_path / "metadata.jsonl"

    def write_title(title: str) -> None:
        metadata.write_bytes(orjson.dumps({"video_id": "JFK", "title": title, "channel": "NY"}) + b"\n")

    def titles() -> set:
        with StatsReader(PROJECT, INSTANCE, deployment.table) as reader:
            return {c.title for c in reader.all_cells() if c.video_id == "JFK"}

    def events(minute: int) -> list[dict]:
        return [
            {
                "event_id": f"m{minute}-{i}",
                "video_id": "JFK",
                "event_type": "view",
                "event_time": f"2013-01-01T05:{minute:02d}:{i:02d}Z",
            }
            for i in range(5)
        ]

    write_title("Kennedy")
    job = deployment.start_job(
        "--no_event_age_check", f"--metadata_path={metadata}", "--metadata_refresh_s=2", *_job_flags(runner, tmp_path)
    )
    try:
        plan = replay.ReplayPlan(time_mode="real", events_per_message=5)
        deployment.publish(events(1), plan)
        _wait_for(lambda: "Kennedy" in titles(), CONVERGE_S, "rows titled Kennedy")
        write_title("John F. Kennedy International")
        time.sleep(6)  # a few refreshes
        deployment.publish(events(2), plan)
        _wait_for(lambda: "John F. Kennedy International" in titles(), 60, "rows with the refreshed title")
    finally:
        kill(job)
