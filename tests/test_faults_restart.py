"""Restarts never leave stored aggregates below the truth (docs/contract.md, "Aggregates":
overwrites; ``pipelines/runners.py``, ``pipelines/restarts.py``, ``pipelines/batch_recompute.py``).

* Planning: which hours a start without state puts at risk, from restart markers and the
  archive's file names; which are closed; the newest retained checkpoint; the flags that
  make Flink resume from it by default (no job run).
* On an embedded Flink with retained checkpoints, real 2013 flight times, one chain of jobs:
  job 1 counts batch A and is killed (SIGKILL); job 2, started with the same flags,
  resumes from the newest retained checkpoint by itself and counts batch B, which shares
  A's last windows: 0 mismatches against the reference of A+B; job 2 is killed; job 3
  starts with ``--fresh_start`` and counts batch C (its backlog when it starts), spread over
  every window of A and B:
  the stored aggregates of C's windows hold only C's events (below the reference: the
  hazard is real), then ``batch_recompute --after_restarts`` recomputes the hours the
  restart marker points at: 0 mismatches against the reference of A+B+C.
  Each job is killed only once every message it pulled is acknowledged
  (``_wait_acknowledged``), and each batch is published only once the killed job's last pull
  has expired (``LAST_PULL_EXPIRED_S``). Else the fresh job receives B again (counted, and
  after B its watermark is hours past C's times) and C a minute later, when C's events are
  ``too_late`` (docs/contract.md, "Acceptance"; seen: 693 of C's 838).
"""

from __future__ import annotations

import inspect
import os
import signal
import tempfile
import time

import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipelines import batch_recompute
from pipelines.restarts import plan_recompute
from pipelines.runners import FlinkJobOptions, latest_checkpoint, prepare, runner_flags
from schemas.archive import file_name, hour_folder
from schemas.closed_windows import CLOSE_MARGIN_S
from schemas.restart_markers import marker_path
from tests.streaming_jobs import INSTANCE, PROJECT, Deployment, archive_missing, kill, restart_markers
from tests.test_streaming_runners import _wait_for
from transforms.pubsub_io import ACK_ROUNDS, PullWatermark, ReadFromPubSubPortable, pull_deadline_s
from viewcounts.commands import replay
from viewcounts.commands.reconcile import reconcile

pytestmark = pytest.mark.faults

H = 1_715_680_800  # 2024-05-14T10:00:00Z
MS = 1000


def _file(root: str, hour_s: int, written_s: float, run_id: str) -> None:
    folder = hour_folder(root, hour_s)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, file_name("events", round(written_s * MS), run_id, os.urandom(6).hex())), "wb") as f:
        f.write(b"{}\n")


def _marker(root: str, started_s: float, run_id: str, lateness_s: int = 600) -> None:
    path = marker_path(root, round(started_s * MS), run_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(orjson.dumps({"run_id": run_id, "started_ms": round(started_s * MS), "allowed_lateness_s": lateness_s}))


def test_recompute_plan_takes_the_hours_a_start_without_state_shares_with_earlier_files(tmp_path):
    root = str(tmp_path / "archive")
    old, resumed, fresh = "0000000001", "0000000002", "0000000003"
    _marker(root, H, old)  # the first job: nothing before it
    _file(root, H, H + 60, old)  # hour 10: old only
    _file(root, H + 3600, H + 3700, old)  # hour 11: old, then the fresh job
    _file(root, H + 3600, H + 7300, fresh)
    _file(root, H + 7200, H + 7250, old)  # hour 12: old, a resumed job (no marker), the fresh job
    _file(root, H + 7200, H + 7260, resumed)
    _file(root, H + 7200, H + 7400, fresh)
    _file(root, H + 10800, H + 11000, fresh)  # hour 13: the fresh job only
    _marker(root, H + 7300, fresh)
    closed_at = H + 3 * 3600 + 600 + CLOSE_MARGIN_S  # hour 12's end + lateness + margin
    assert plan_recompute(root, closed_at - 1).closed == [H + 3600]
    assert plan_recompute(root, closed_at - 1).open == [H + 7200]
    assert plan_recompute(root, closed_at).closed == [H + 3600, H + 7200]
    assert plan_recompute(root, closed_at, range(H + 7200, H + 10800, 3600)).closed == [H + 7200]
    assert plan_recompute(str(tmp_path / "nothing"), closed_at).closed == []


STATELESS, OTHERS = "00000000bb", ("00000000aa", "00000000cc")


@settings(max_examples=150, deadline=None)
@given(
    started_s=st.integers(-3600, 7200),
    files=st.lists(st.tuples(st.sampled_from((STATELESS, *OTHERS)), st.integers(-600, 7200)), max_size=6),
)
def test_recompute_plan_takes_every_hour_the_stateless_run_shares_with_another_run_whenever_written(started_s, files):
    """An hour holding files of a run that started without state and of any other run is
    recomputed, whether the other run wrote before or after that start (an old job drained
    after the new one started also counted part of the hour)."""
    with tempfile.TemporaryDirectory() as root:
        _marker(root, H + started_s, STATELESS)
        for run_id, written_s in files:
            _file(root, H, H + written_s, run_id)
        runs = {run_id for run_id, _ in files}
        shared = STATELESS in runs and bool(runs - {STATELESS})
        assert plan_recompute(root, H + 10 * 3600).closed == ([H] if shared else [])


@settings(max_examples=100, deadline=None)
@given(
    lateness_s=st.integers(0, 3600),
    pull_gap_s=st.floats(0.1, 10),
    phase=st.floats(0, 1),
    delays_s=st.lists(st.floats(0, 230), min_size=1, max_size=20),
)
@example(lateness_s=0, pull_gap_s=9.9, phase=0.6162, delays_s=[230.0])  # lags 299.2 s: the worst case
def test_an_hour_called_closed_admits_no_event_of_it_any_more(lateness_s, pull_gap_s, phase, delays_s):
    """When the plan calls an hour closed, the portable source's watermark (the earliest
    timestamp pulled in its sample period) is past the hour's end plus the allowed lateness
    for a job that keeps up (pulls at most 10 s apart) with publishers up to 230 s behind:
    no late pane of the hour can follow the recompute's cell."""
    sample_s = inspect.signature(ReadFromPubSubPortable).parameters["sample_s"].default
    with tempfile.TemporaryDirectory() as root:
        _file(root, H, H + 100, "00000000aa")
        _marker(root, H + 1800, STATELESS, lateness_s)
        _file(root, H, H + 1900, STATELESS)
        closed_at = H + 3600 + lateness_s + CLOSE_MARGIN_S
        assert plan_recompute(root, closed_at - 1).closed == [] and plan_recompute(root, closed_at).closed == [H]
    watermark, t, i = PullWatermark(None, now_s=closed_at - 600), closed_at - 600 + phase * pull_gap_s, 0
    while t <= closed_at:
        delay_s = delays_s[i % len(delays_s)]
        watermark.pulled([round((t - delay_s) * 1_000_000)], t, sample_s)
        t, i = t + pull_gap_s, i + 1
    assert watermark.current_watermark().micros >= (H + 3600 + lateness_s) * 1_000_000


def _checkpoint(root, job: str, n: int, mtime: float) -> str:
    folder = root / job / f"chk-{n}"
    folder.mkdir(parents=True)
    (folder / "_metadata").write_bytes(b"x")
    os.utime(folder / "_metadata", (mtime, mtime))
    return str(folder)


def test_flink_resumes_from_the_newest_retained_checkpoint_unless_told_not_to(tmp_path):
    ck = tmp_path / "checkpoints"
    _checkpoint(ck, "job1", 9, 1000.0)
    newest = _checkpoint(ck, "job2", 3, 2000.0)  # a later job, fewer checkpoints
    (ck / "job2" / "chk-4").mkdir()  # in progress: no _metadata
    assert latest_checkpoint(f"file://{ck}") == newest == latest_checkpoint(str(ck))
    assert latest_checkpoint(str(tmp_path / "none")) is None
    base = ["--runner=FlinkRunner", "--externalized_checkpoints_enabled", f"--state_backend_storage_path=file://{ck}"]

    embedded = PipelineOptions([*base, "--flink_master=[local]"])
    prepare(embedded)
    flink = embedded.view_as(FlinkJobOptions)
    assert flink.savepoint_path == newest
    with open(os.path.join(flink.flink_conf_dir, "flink-conf.yaml")) as f:
        assert f.read() == f"execution.savepoint.path: {newest}\n"

    remote = PipelineOptions([*base, "--flink_master=localhost:8081"])
    prepare(remote)
    assert remote.view_as(FlinkJobOptions).savepoint_path == newest
    assert remote.view_as(FlinkJobOptions).flink_conf_dir is None

    fresh = PipelineOptions([*base, "--flink_master=[local]", "--fresh_start"])
    prepare(fresh)
    assert fresh.view_as(FlinkJobOptions).savepoint_path is None
    assert fresh.view_as(FlinkJobOptions).flink_conf_dir is None
    with pytest.raises(ValueError):
        prepare(PipelineOptions([*base, "--fresh_start", f"--savepoint_path={newest}"]))


# --- the jobs ----------------------------------------------------------------------------------

CONVERGE_S = 300
OVERLAP_S = 120  # B's first events are this far behind A's last: within the allowed lateness after a restore


def _batches(n: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Three batches of real 2013 flights, each in time order with 5 % duplicates: C is every
    third flight (all of A's and B's windows); A is the first 60 % of the others, B the rest,
    and the two alternate over the last ``OVERLAP_S`` seconds of A (shared windows)."""
    base = replay.plan_events(replay.read_source("flights", n), replay.ReplayPlan(time_mode="real"), 0)
    c = base[2::3]
    rest = [e for i, e in enumerate(base) if i % 3 != 2]
    split_us = replay._time_us(rest[len(rest) * 3 // 5])
    overlap_us = split_us - OVERLAP_S * 1_000_000
    a, b = [], []
    for i, e in enumerate(rest):
        t = replay._time_us(e)
        (a if t <= split_us and not (t > overlap_us and i % 2) else b).append(e)
    with_dups = replay.ReplayPlan(duplicate_rate=0.05, time_mode="real")
    return tuple(replay.plan_events(x, with_dups, 0) for x in (a, b, c))


def _wait_acknowledged(checkpoints: str) -> None:
    """Wait until a job that has counted everything it pulled has acknowledged it, so that
    none of it comes back to the next job (after the ack deadline) once this one is killed.

    Acknowledgements wait for ``ACK_ROUNDS`` checkpoints after the one that finalizes the
    pulling bundle (``transforms.pubsub_io.AckLedger``): ``ACK_ROUNDS + 2`` newer retained
    checkpoints mean they are sent (a change of the newest one missed between two looks only
    lengthens the wait). The newest also holds everything counted."""
    seen = [latest_checkpoint(checkpoints)]

    def acknowledged() -> bool:
        if (newest := latest_checkpoint(checkpoints)) not in seen:
            seen.append(newest)
        return len(seen) > ACK_ROUNDS + 2

    _wait_for(acknowledged, 120, f"{ACK_ROUNDS + 2} checkpoints after the job counted everything")


# The Pub/Sub emulator hands the messages published while a killed job's last pull is still
# open to that pull: they come back a minute later, after the ack deadline. A batch is
# published this long after a kill.
LAST_PULL_EXPIRED_S = pull_deadline_s(inspect.signature(ReadFromPubSubPortable).parameters["poll_s"].default) + 1


def _recompute(d: Deployment) -> None:
    batch_recompute.build_pipeline(
        [
            f"--archive_path={d.folder}/archive",
            "--after_restarts",
            f"--bigtable_project={PROJECT}",
            f"--bigtable_instance={INSTANCE}",
            f"--bigtable_table={d.table}",
            "--runner=DirectRunner",
        ]
    ).run().wait_until_finish()


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.flink
def test_restart_resumes_by_default_and_a_fresh_start_is_recomputed(tmp_path, pubsub_host, bigtable_host):
    d = Deployment(str(tmp_path))
    checkpoints = str(tmp_path / "checkpoints")
    flags = ["--no_event_age_check", *runner_flags("flink", checkpoint_dir=checkpoints)]
    plan = replay.ReplayPlan(time_mode="real", events_per_message=50)
    a, b, c = _batches(2400)

    job = d.start_job(*flags)
    try:
        d.publish(a, plan)
        mismatches, _ = d.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        _wait_acknowledged(checkpoints)
    finally:
        kill(job, signal.SIGKILL)
    time.sleep(LAST_PULL_EXPIRED_S)

    # (a) the same flags: resumes from the retained checkpoint by itself
    d.publish(b, plan)
    job = d.start_job(*flags)
    try:
        mismatches, waited = d.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        print(f"resumed by default: A+B exact {waited:.1f} s after starting")
        with open(f"{d.folder}/job-1.log", "rb") as log:
            assert b"resuming from the newest retained checkpoint" in log.read()
        assert len(restart_markers(d.folder)) == 1, "a job restored from a checkpoint recorded a start without state"
        _wait_acknowledged(checkpoints)
    finally:
        kill(job, signal.SIGKILL)
    time.sleep(LAST_PULL_EXPIRED_S)

    # (b) without state: its panes overwrite correct totals with partial ones, until recomputed
    manifest_c = len(d.manifests)
    d.publish(c, plan)
    only_c = d.expected([d.manifests[manifest_c]])
    job = d.start_job(*flags, "--fresh_start")
    try:
        _wait_for(
            lambda: not reconcile(only_c, {k: v for k, v in d.stored().items() if k in only_c}),
            CONVERGE_S,
            "C's windows holding C's events only",
        )
        everything, stored = d.expected(), d.stored()
        low = [k for k, v in everything.items() if stored.get(k, (0,))[0] < v[0]]
        assert low, "no stored aggregate below the reference: the hazard did not happen"
        _wait_for(lambda: archive_missing(d.folder, a + b + c) == 0, 60, "every event in the raw archive")
        assert len(restart_markers(d.folder)) == 2
    finally:
        kill(job)  # its windows are closed: no input is left to fire panes
    started = time.monotonic()
    _recompute(d)
    mismatches = d.mismatches(everything)
    assert mismatches == [], mismatches[:5]
    print(
        f"fresh start: {len(low)} of {len(everything)} aggregates low; recompute --after_restarts "
        f"{time.monotonic() - started:.1f} s: 0 mismatches"
    )
