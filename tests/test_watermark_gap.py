"""The windows stage's input watermark keeps up with the dedup stage's on the Flink session
cluster at parallelism 2 (issue 13; ``transforms.dedup``: the search for the watermark).

The dedup stage's output watermark is held at its pending event-time timers. Its watermark
ladder used to climb from the minimum of time: for the first ~41 rounds of timers every key
held rungs below the watermark, and the windows stage's input watermark trailed the dedup
stage's by 1.5 years, then 118,000 years (read here from Flink's REST API), so on-time panes
and window cleanup waited. Now the ladder is found by a search from a guess (the probes'
wall clock, the elements' stamps), and every rung below the watermark fires in the next round.

The property, while a stream flows (several event-time shapes: live times within the last
seconds or the last 10 minutes, and flights at their real 2013 times): at every poll where
both stages have a watermark, the windows stage's input watermark is at most ``GAP_S`` (the
allowed lateness) behind the dedup stage's. Before the change it was 48,298,308 s behind
(and 3,727,610,149,183 s one poll earlier); now the gap is the distance from the search's
guess to the watermark for one round, then seconds. Also: the windows stage gets a watermark.
"""

from __future__ import annotations

import signal
import time

import pytest

from pipelines.runners import runner_flags
from tests.streaming_jobs import Deployment, kill
from viewcounts.commands import replay
from viewcounts.local.flink import FlinkCluster

pytestmark = [pytest.mark.slow, pytest.mark.emulator, pytest.mark.flink, pytest.mark.cluster]

GAP_S = 600  # the allowed lateness (AcceptancePolicy's default)
STREAM_S = 50
DEDUP, WINDOWS = "dedup", "windows"
SHAPES = {
    "live, last 10 s": replay.ReplayPlan(fit_span_s=10, events_per_message=50),
    "live, last 10 min": replay.ReplayPlan(fit_span_s=600, events_per_message=50),
    "flights of 2013": replay.ReplayPlan(time_mode="real", events_per_message=50),
}
_FINITE_MS = 2**62


def stage_watermarks(cluster: FlinkCluster, job_id: str) -> dict[str, int | None]:
    """``{"dedup": ms, "windows": ms}``: the lowest input watermark over the subtasks of the
    vertex holding the dedup stage (named for the count stage only) and of the one holding
    the windows and the sink (``write to Bigtable``); ``None`` while a subtask has none."""
    out: dict[str, int | None] = {}
    for v in cluster.rest(f"/jobs/{job_id}")["vertices"]:
        name = v["name"]
        if "count events" not in name or "read Pub" in name or "probe keys" in name:
            continue
        stage = WINDOWS if "write to Bigtable" in name else DEDUP
        marks = [
            int(w["value"])
            for w in cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/watermarks")
            if w["id"].endswith("currentInputWatermark")
        ]
        out[stage] = min(marks) if marks and all(abs(m) < _FINITE_MS for m in marks) else None
    return out


def lagging_reads(reads: list[tuple[float, dict]], gap_s: float) -> list[tuple[int, int]]:
    """The polls at which the windows' input watermark was more than ``gap_s`` behind the
    dedup's: ``(poll time, how far behind, s)``."""
    return [
        (round(t), (r[DEDUP] - r[WINDOWS]) // 1000)
        for t, r in reads
        if r.get(DEDUP) is not None and r.get(WINDOWS) is not None and r[DEDUP] - r[WINDOWS] > gap_s * 1000
    ]


@pytest.fixture(scope="module")
def cluster():
    with FlinkCluster(task_managers=2, task_slots=2) as c:
        yield c


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_windows_watermark_keeps_up_with_the_dedup_watermark(cluster, tmp_path, pubsub_host, bigtable_host, shape):
    plan = SHAPES[shape]
    d = Deployment(str(tmp_path))
    job = d.start_job(
        "--no_event_age_check",
        *runner_flags(
            "flink",
            flink_master=cluster.master,
            parallelism=2,
            worker_pool=cluster.worker_pool,
            checkpoint_dir=str(tmp_path / "chk"),
        ),
    )
    try:
        job_id = cluster.wait_for_running(timeout_s=180)[0]
        flights = replay.read_source("flights", 3000)
        reads: list[tuple[float, dict]] = []
        start = time.monotonic()
        for i in range(0, len(flights), 100):
            d.publish(replay.plan_events(flights[i : i + 100], plan, time.time_ns() // 1000), plan)
            if time.monotonic() - start > STREAM_S:
                break
            reads.append((time.monotonic() - start, stage_watermarks(cluster, job_id)))
            time.sleep(1)
        print(shape, [(round(t), {k: v and round(time.time() - v / 1000) for k, v in r.items()}) for t, r in reads])
        exceptions = cluster.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        assert exceptions == [], exceptions[0]["stacktrace"][exceptions[0]["stacktrace"].find("Traceback") :][:4000]
        assert any(r.get(WINDOWS) is not None for _, r in reads[-5:]), "the windows stage never had a watermark"
        assert lagging_reads(reads, GAP_S) == []
    finally:
        kill(job, signal.SIGTERM)  # the job's process group: its Flink job server too
        for j in cluster.running_jobs():
            cluster.cancel(j)
