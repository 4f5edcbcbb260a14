"""The README's main command, end to end, small: emulators, streaming job, replay, reconciliation."""

import os
import subprocess
import sys

import orjson
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _emulator_pids() -> set[str]:
    out = subprocess.run(
        ["pgrep", "-f", "cbtemulator|cloud-pubsub-emulator|pubsub-emulator"], capture_output=True, text=True
    )
    return set(out.stdout.split())


def run_demo(out, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``viewcounts demo --flights 2500 --out OUT ARGS`` in a child, without this session's
    emulators (it starts its own); asserts it exits 0 and that the stream and the recompute
    both reconcile (no mismatch). Returns the process and its ``summary.json``."""
    r = subprocess.run(
        [sys.executable, "-m", "viewcounts.cli", "demo", *args, "--flights", "2500", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if "EMULATOR_HOST" not in k},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["mismatches"] == 0 and summary["recompute_mismatches"] == 0
    return r, summary


def test_demo_reconciles_and_stops_what_it_started(tmp_path):
    before = _emulator_pids()
    r, summary = run_demo(tmp_path / "demo-out")
    for key in ("published", "accepted", "duplicates_dropped", "dead_letters", "mismatches", "events_per_s"):
        assert key in summary
    assert summary["accepted"] == 2500 == summary["distinct_events"]
    assert summary["published"] == 2500 + summary["duplicates_dropped"]
    assert summary["aggregates_checked"] > 100
    assert "0 mismatches" in r.stdout
    assert _emulator_pids() <= before


@pytest.mark.flink
def test_demo_on_flink_reconciles_the_stream_and_the_recompute_from_its_archive(tmp_path):
    """Flink's counters do not reach the demo (portable metrics), so this checks the data."""
    _, summary = run_demo(tmp_path / "demo-out", "--runner", "flink")
    assert summary["archived_lines"] == summary["published"] > 2500
    assert summary["aggregates_checked"] > 100


@pytest.mark.flink
@pytest.mark.cluster
def test_demo_on_a_flink_session_cluster_reconciles_and_stops_what_it_started(tmp_path):
    """`make demo RUNNER=flink-cluster`: a session cluster of 2 task managers, the job submitted
    detached at parallelism 2; its counters are read from Flink's REST API while it runs."""
    import psutil

    def cluster_pids() -> set[int]:
        return {
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any("flink-cluster-" in a or "worker_pool" in a for a in p.info["cmdline"] or [])
        }

    before = cluster_pids()
    r, summary = run_demo(tmp_path / "demo-out", "--runner", "flink-cluster")
    assert summary["archived_lines"] == summary["published"] > 2500
    assert summary["accepted"] == 2500 == summary["distinct_events"]  # counters from the running job
    # live figures read from the cluster (pulled again after a redelivery: at most 0 left)
    assert summary["backlog_messages"] is not None and summary["backlog_messages"] <= 0
    assert summary["oldest_unacked_age_s"] is not None
    assert "running at parallelism 2" in r.stdout and "0 mismatches" in r.stdout
    assert cluster_pids() <= before
