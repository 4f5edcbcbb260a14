"""``viewcounts bench --quick`` runs from start to end (CI keeps the harness working; the
figures are not asserted: timings belong to the harness)."""

import subprocess
import sys

import orjson
import pytest

from viewcounts.bench import workload
from viewcounts.bench.core_flink import newest_panes
from viewcounts.bench.harness import (
    FLINK_KEYS,
    HTTP_KEYS,
    QUICK,
    RECOMPUTE_KEYS,
    WINDOWING_KEYS,
    BenchMismatch,
    cross_check,
    recompute,
)

ISSUE_KEYS = (
    "core_events_per_s",
    "naive_beam_events_per_s",
    "pyflink_sql_events_per_s",
    "loop_events_per_s",
    "dedup_bytes_per_id",
    "mutations_per_event",
    "e2e_sustained_events_per_s",
    "freshness_p99_s",
    "query_day_minute_p99_ms",
    "query_30d_hour_p99_ms",
    "recompute_events_per_s",
    "recompute_1d_events_per_s",
)


def test_cross_check_fails_loudly_on_one_different_aggregate(tmp_path):
    reference = {
        ("V1", "view", "minute", 60): (2, 0, 0.0, None, None),
        ("V1", "view", "hour", 0): (2, 0, 0.0, None, None),
    }
    out = tmp_path / "aggs.jsonl"
    workload.write_aggregates(reference, out)
    cross_check("same", reference, out)
    workload.write_aggregates({**reference, ("V1", "view", "minute", 60): (3, 0, 0.0, None, None)}, out)
    with pytest.raises(BenchMismatch, match="V1"):
        cross_check("one more", reference, out)


def test_workloads_are_deterministic_and_carry_the_duplicates_asked_for(tmp_path):
    spec = workload.WorkloadSpec(events=3000, videos=50, events_per_message=100, duplicate_rate=0.1, span_s=60)
    a, b = workload.generate(spec, tmp_path / "a"), workload.generate(spec, tmp_path / "b")
    assert a.messages_path.read_bytes() == b.messages_path.read_bytes()
    ids = [orjson.loads(line)["event_id"] for line in a.events_path.read_bytes().splitlines()]
    assert len(set(ids)) == 3000 and 250 < len(ids) - 3000 < 350


def test_the_core_job_on_flink_keeps_the_newest_pane_of_each_cell(tmp_path):
    rows = [
        ["V1", "view", "minute", 60, 10, [1, 0, 0.0, None, None]],
        ["V1", "view", "minute", 60, 30, [3, 0, 0.0, None, None]],  # a later pane, in another worker's file
        ["V1", "view", "minute", 60, 20, [2, 0, 0.0, None, None]],
        ["V2", "like", "hour", 0, 5, [1, 1, 4.0, 4.0, 4.0]],
    ]
    (tmp_path / "rows-a.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[:2]))
    (tmp_path / "rows-b.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[2:]))
    panes, n = newest_panes(tmp_path)
    assert n == 4
    assert panes == {
        ("V1", "view", "minute", 60): (3, 0, 0.0, None, None),
        ("V2", "like", "hour", 0): (1, 1, 4.0, 4.0, 4.0),
    }


@pytest.mark.emulator
def test_the_recompute_part_counts_generated_archives_exactly(tmp_path):
    from dataclasses import replace

    from viewcounts.bench import recompute as rc

    cfg = replace(QUICK, recompute_events=4_000, recompute_1d_events=2_000)
    res = recompute(cfg, tmp_path, progress=print)
    assert set(RECOMPUTE_KEYS) <= set(res) and res["recompute_300k_events_per_s"] is None
    for name, days, events in (("30d", 30, 4_000), ("1d", 1, 2_000)):
        figures = res[f"recompute_{name}"]
        assert figures["days"] == days and figures["mismatches"] == 0 and figures["accepted"] == events
        assert figures["events"] == events + figures["duplicates"] and figures["duplicates"] > 0
        assert figures["aggregates_written"] == figures["aggregates_stored"]
    # the archive is laid out as the streaming job's: every file's name parses, one hour folder each
    archive, _, start_s, end_s = rc.build_archive(rc.spec_for(4_000, 30), tmp_path)
    from schemas.archive import parse_file_path

    names = [parse_file_path(str(p)) for p in archive.rglob("*.jsonl")]
    assert names and all(n is not None and start_s <= n.hour_s < end_s for n in names)


@pytest.mark.slow
@pytest.mark.flink
@pytest.mark.cluster
@pytest.mark.emulator
def test_quick_bench_runs_every_part_and_the_systems_agree(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "viewcounts.cli",
            "bench",
            "--quick",
            "--json",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = orjson.loads(out.read_bytes())
    assert all(res[k] is not None for k in ISSUE_KEYS), {k: res.get(k) for k in ISSUE_KEYS}
    assert res["cross_check"] == "identical aggregates"
    assert {row["events_per_message"] for row in res["scaling"]} == {1, 10, 100, 1000}
    # On Flink: every key present; the core job and PyFlink SQL at parallelism 2 measured
    # (their aggregates cross-checked); each end-to-end run counted everything and read the job's
    # counters from Flink's REST API while it ran.
    # the stats service over HTTP: every kind of the mixed attack measured (the highest rate
    # held may be None on a loaded machine: no step held)
    assert set(HTTP_KEYS) <= set(res)
    assert all(res[k] is not None for k in ("http_day_minute_p99_ms", "http_30d_hour_p99_ms", "http_top_p99_ms"))
    assert isinstance(res["http_errors"], int)
    assert set(FLINK_KEYS) <= set(res) and "flink_core_error" not in res
    assert res["flink_p2_core_events_per_s"] and res["pyflink_sql_p2_events_per_s"]
    for p in (1, 2):
        for step in res[f"flink_p{p}_e2e_steps"]:
            assert step["e2e_complete"] and step["flink_metrics_reads"] > 0, step
            assert step["flink_counters"]["events_in"] > 0 and step["job_cpu_s_per_million_events"] > 0
    # Beam's windows against FirePanes: both measured on Flink and Prism, their final panes
    # equal to the plain loop's and to each other's (a difference fails the run: BenchMismatch)
    assert "windowing_error" not in res and all(res[k] is not None for k in WINDOWING_KEYS), res.get("windowing_error")


def test_dedup_memory_drives_the_real_dedup_dofn_over_every_event(tmp_path):
    """``dedup_memory.measure`` calls ``DedupAndJudgeLateness.process`` with its state and timers
    by hand: it must keep up with that signature and see every distinct id once."""
    from viewcounts.bench import dedup_memory

    w = workload.generate(
        workload.WorkloadSpec(
            events=3_000, videos=50, events_per_message=100, duplicate_rate=0.1, span_s=600, disorder_s=30
        ),
        tmp_path,
    )
    figures = dedup_memory.measure(w.messages_path)
    assert figures["dedup_live_ids"] == 3_000
    assert figures["dedup_state_bytes_per_id"] > 0
