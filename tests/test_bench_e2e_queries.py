"""The benchmark's query and end-to-end measurements: their bookkeeping is right (no timing
assertions: figures belong to the harness)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import orjson
import pytest

from pipelines.runners import FLINK_JOB_SERVER_JAR
from viewcounts.bench import e2e, queries, workload


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory) -> tuple[list[dict], e2e.Stream]:
    spec = workload.WorkloadSpec(
        events=950, videos=50, events_per_message=95, disorder_s=5, span_s=10, duplicate_rate=0.1
    )
    events, offsets = e2e.load_workload(spec, tmp_path_factory.mktemp("workloads"))
    t0_ms = 1_800_000_000_000 + 45_000  # 45 s into a minute: the stream crosses a minute boundary
    return events, e2e.plan_stream(events, offsets, t0_ms, 10, 100, "t")


def test_plan_stream_cuts_messages_with_one_probe_each_and_rebases_times(small_stream):
    events, stream = small_stream
    batches = [orjson.loads(p) for p in stream.payloads]
    assert [len(b) for b in batches[:-1]] == [100] * (len(batches) - 1)
    assert sum(len(b) for b in batches) == stream.events == len(events) + len(batches)
    assert all(b[-1]["video_id"] == e2e.PROBE and sum(e["video_id"] == e2e.PROBE for e in b) == 1 for b in batches)
    assert list(stream.send_offsets_s) == sorted(stream.send_offsets_s) and stream.send_offsets_s[-1] < 10
    times = [dt.datetime.fromisoformat(e["event_time"]).timestamp() for b in batches for e in b]
    assert 1_800_000_000 + 45 - 5 - 1 <= min(times) and max(times) <= 1_800_000_000 + 45 + 10


def test_plan_stream_expects_each_event_id_once_in_both_granularities(small_stream):
    events, stream = small_stream
    distinct = {e["event_id"] for e in events}
    assert len(distinct) < len(events)  # the spec asked for duplicates
    n_msgs = len(stream.payloads)
    for gran in ("minute", "hour"):
        cells = {k: a for k, a in stream.expected.items() if k[2] == gran}
        assert sum(a.count for k, a in cells.items() if k[0] != e2e.PROBE) == len(distinct)
        assert sum(a.count for k, a in cells.items() if k[0] == e2e.PROBE) == n_msgs
    watch_sum = sum(a.sum for k, a in stream.expected.items() if k[2] == "minute")
    assert watch_sum == sum({e["event_id"]: e.get("value", 0) for e in events}.values())
    minute_cells = {(v, t, w) for (v, t, g, w) in stream.expected if g == "minute"}
    assert set(stream.last_msg) == minute_cells and max(stream.last_msg.values()) == n_msgs - 1


def test_watch_samples_every_minute_of_the_top_keys_and_some_tail_cells(small_stream):
    _, stream = small_stream
    watch = e2e.Watch.sample(stream, top_keys=2, tail_cells=5)
    minutes = {(v, t, w) for (v, t, g, w) in stream.expected if g == "minute" and v != e2e.PROBE}
    sampled = {(v, t, w) for (v, t), cells in watch.pending.items() for w in cells}
    assert sampled <= minutes and watch.cells() == len(sampled) == watch.left()
    top = sorted(watch.pending, key=lambda k: -sum(watch.pending[k].values()))[:2]
    for v, t in top:
        assert set(watch.pending[(v, t)]) == {w for (vv, tt, w) in minutes if (vv, tt) == (v, t)}


@pytest.mark.emulator
def test_queries_store_through_the_sink_and_read_back_what_was_stored(table):
    project, instance, name = table
    cells = queries.synthetic_cells(2)
    queries.store_cells(cells, project, instance, name)
    from query.stats import StatsReader

    day = (queries.DAY, queries.DAY + dt.timedelta(days=1))
    with StatsReader(project, instance, name) as reader:
        minute = reader.get_stats("video-0000001", "watch", "count", *day, "minute")
        hour = reader.get_stats("video-0000001", "view", "count", *queries.RANGE_30D, "hour")
    assert len(minute.buckets) == 1440 and len(hour.buckets) == 720
    assert minute.combined.count == queries.expected_count(cells, "video-0000001", "watch", "minute", *day)
    assert hour.combined.count == queries.expected_count(cells, "video-0000001", "view", "hour", *queries.RANGE_30D)
    assert minute.combined.sum == sum(
        a.sum
        for (v, t, g, w), a in cells.items()
        if (v, t, g) == ("video-0000001", "watch", "minute") and day[0].timestamp() <= w < day[1].timestamp()
    )


@pytest.mark.slow
@pytest.mark.emulator
def test_measure_queries_returns_the_figures():
    out = queries.measure_queries(rounds=3, warmup=1, neighbours=2, measured_video=1)
    assert set(out) == {
        "query_day_minute_p50_ms",
        "query_day_minute_p99_ms",
        "query_30d_hour_p50_ms",
        "query_30d_hour_p99_ms",
        "query_rounds",
    }
    assert out["query_rounds"] == 3 and all(v > 0 for v in out.values())


@pytest.mark.slow
@pytest.mark.emulator
def test_measure_e2e_counts_everything_at_a_low_rate(tmp_path: Path):
    out = e2e.measure_e2e(1000, 6, 2, 200, videos=200, disorder_s=2, drain_timeout_s=240, workdir=tmp_path)
    assert out["e2e_complete"] and out["e2e_events"] == 6000
    assert out["freshness_cells"] > 0 and out["freshness_cells_pending"] == 0
    assert out["freshness_p50_s"] is not None and out["e2e_sustained_events_per_s"] > 0


@pytest.mark.skipif(not os.path.exists(FLINK_JOB_SERVER_JAR), reason="needs `make flink-job-server`")
def test_job_flags_on_flink_submit_to_the_cluster_with_external_workers(tmp_path: Path):
    class Cluster:
        master, worker_pool = "localhost:8081", "localhost:50000"

    flags = e2e.job_flags(tmp_path, 2, e2e.OnFlink(parallelism=2), Cluster())
    assert "--runner=FlinkRunner" in flags and "--flink_master=localhost:8081" in flags
    assert {
        "--parallelism=2",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
        "--early_firing_s=2",
        "--fresh_start",
    } <= set(flags)
    assert f"--state_backend_storage_path=file://{tmp_path / 'checkpoints'}" in flags
    assert "--runner=BundleBasedDirectRunner" in e2e.job_flags(tmp_path, 2)
