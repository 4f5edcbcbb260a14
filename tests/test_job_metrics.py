"""The job's metrics while it runs on a Flink session cluster (``viewcounts.local.job_metrics``).

The reading of Flink's REST answers (which metric is which, sums over subtasks and
steps, the lowest usable watermark) is checked against a fake REST API. Then a streaming job at parallelism 2 on a 2-task-manager cluster with EXTERNAL Python workers
reads a replay (5 % duplicates) from the Pub/Sub emulator; while it still runs, Flink's
REST API must give the SPEC counters (non-zero; ``events_in`` reaching what was published),
the source's counters, a finite watermark lag (small batches keep coming until every source
reader has pulled something) and the backlog. No timing is asserted: only that
the figures exist and agree with what was published.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.runners import runner_flags
from tests.streaming_jobs import Deployment
from viewcounts.commands import replay
from viewcounts.local.flink import FlinkCluster
from viewcounts.local.job_metrics import flink_job_metrics

PLAN = replay.ReplayPlan(duplicate_rate=0.05, fit_span_s=60, events_per_message=50)  # event times: the last minute


def _poll(read, ok, timeout_s: float, what: str):
    """``read()`` every second until ``ok(value)``; returns that value or fails after ``timeout_s``."""
    deadline, value = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        value = read()
        if ok(value):
            return value
        time.sleep(1)  # polling with a deadline
    raise AssertionError(f"timed out waiting for {what}; last read: {value}")


OP = "[11]{read_Pub__arrival_time__count_events}"  # operator names as Flink 1.19 lists them
NOW_MS = int(time.time() * 1000)  # the fake's clock: the watermarks below are relative to it


LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def _fake(now_ms: int) -> dict:
    """vertex -> {metric id: per-subtask values}, with watermarks 9 s and 4 s behind ``now_ms``
    where the stream flows; the source's own input (the reader elements) has ended."""
    return {
        "src": {
            f"{OP}.viewcounts_messages_pulled": [30, 12],
            f"{OP}.viewcounts_events_in": [2900, 1100],
            f"{OP}.viewcounts_oldest_unacked_age_ms": [1500, 4000],
            "currentInputWatermark": [LONG_MAX, LONG_MAX],
            f"{OP}.numRecordsIn": [1, 1],
        },
        "agg": {
            "[8]{count_events}.viewcounts_events_in": [7, 0],  # another step reporting the same counter
            "[8]{count_events}.viewcounts_dead_letters_bad_json": [2, 1],
            "currentInputWatermark": [now_ms - 9000, now_ms - 4000],
        },
        "done": {"currentInputWatermark": [9223371950454775, 9223371950454775]},  # a finished branch: end of time
    }


FAKE = _fake(NOW_MS)


class _FakeFlink(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["jobs", "j1"]:
            body = {"vertices": [{"id": v, "name": v, "parallelism": 2} for v in FAKE]}
        elif len(parts) == 5 and parts[:2] == ["jobs", "j1"] and parts[4] == "watermarks":
            body = [
                {"id": f"{i}.currentInputWatermark", "value": str(w)}
                for i, w in enumerate(FAKE[parts[3]].get("currentInputWatermark", []))
            ]
        elif len(parts) == 6 and parts[:2] == ["jobs", "j1"] and parts[4:] == ["subtasks", "metrics"]:
            metrics = FAKE[parts[3]]
            q = urllib.parse.parse_qs(url.query)
            if "get" not in q:
                body = [{"id": k} for k in metrics]
            else:
                agg = q["agg"][0]
                fn = {"sum": sum, "min": min, "max": max}[agg]
                body = [{"id": k, agg: float(fn(metrics[k]))} for k in q["get"][0].split(",") if k in metrics]
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_flink():
    global NOW_MS
    NOW_MS = int(time.time() * 1000)  # set when the test starts, not at import: the suite runs for many minutes
    FAKE.clear()
    FAKE.update(_fake(NOW_MS))
    server = ThreadingHTTPServer(("localhost", 0), _FakeFlink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"localhost:{server.server_address[1]}"
    server.shutdown()


def test_metrics_are_summed_over_subtasks_and_steps_and_the_lag_is_the_lowest_watermark(fake_flink):
    m = flink_job_metrics(fake_flink, "j1", published_messages=50)
    assert m["counters"] == {"messages_pulled": 42, "events_in": 4007, "dead_letters_bad_json": 3}
    assert m["oldest_unacked_age_s"] == 4.0
    assert m["backlog_messages"] == 8
    since_setup_s = time.time() - NOW_MS / 1000
    assert 9.0 <= m["watermark_lag_s"] <= 9.0 + since_setup_s + 0.001  # the lowest: 9 s behind at setup
    assert [v["input_watermark_ms"] for v in m["vertices"]] == [None, NOW_MS - 9000, None]
    assert flink_job_metrics(fake_flink, "j1")["backlog_messages"] is None


def test_the_lag_is_none_while_a_subtask_where_the_stream_flows_has_no_watermark(fake_flink):
    FAKE["agg"]["currentInputWatermark"] = [NOW_MS - 9000, LONG_MIN]  # one reader has pulled nothing yet
    m = flink_job_metrics(fake_flink, "j1")
    assert m["watermark_lag_s"] is None
    assert [v["input_watermark_ms"] for v in m["vertices"]] == [None, None, None]
    FAKE["agg"]["currentInputWatermark"] = [LONG_MAX, LONG_MAX]  # every input ended: no stream vertex left
    assert flink_job_metrics(fake_flink, "j1")["watermark_lag_s"] is None


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.flink
@pytest.mark.cluster
def test_counters_watermark_lag_and_backlog_are_readable_while_the_job_runs(tmp_path, pubsub_host, bigtable_host):
    # the cluster starts after the emulators: its worker pool hands their addresses to the workers
    with FlinkCluster(task_managers=2, task_slots=2) as cluster:
        d = Deployment(str(tmp_path))
        job = d.start_job(
            *runner_flags(
                "flink",
                flink_master=cluster.master,
                parallelism=2,
                worker_pool=cluster.worker_pool,
                checkpoint_dir=str(tmp_path / "chk"),
            )
        )
        try:
            job_id = cluster.wait_for_running(timeout_s=180)[0]
            events = replay.plan_events(replay.read_source("flights", 2000), PLAN, time.time_ns() // 1000)
            published = {"messages": d.publish(events, PLAN)["messages"]}

            def read():
                """The metrics; while the lag is None, another small batch: a live stream, so that
                every source reader pulls something (a reader that never has holds the watermark)."""
                m = flink_job_metrics(cluster.master, job_id, published["messages"])
                if m["watermark_lag_s"] is None:
                    more = replay.plan_events(replay.read_source("flights", 100), PLAN, time.time_ns() // 1000)
                    published["messages"] += d.publish(more, PLAN)["messages"]
                return m

            def counted(m):
                c = m["counters"]
                return (
                    c.get("events_in", 0) >= len(events)
                    and c.get("aggregates_written", 0) > 0
                    and m["watermark_lag_s"] is not None
                )

            m = _poll(read, counted, 300, "the counters to reach what was published and a watermark lag")
            assert cluster.job_status(job_id) == "RUNNING"  # read while it runs, not from a result
            c = m["counters"]
            # a restart would read some messages again: at least what was published, never less
            assert c["events_in"] >= len(events)
            assert 0 < c["events_accepted"] <= c["events_in"] and c.get("duplicates_dropped", 0) > 0
            # every event time published is before the read, so the watermark is too
            assert m["watermark_lag_s"] > 0, m
            assert any(v["input_watermark_ms"] is not None for v in m["vertices"])
            assert c.get("messages_pulled", 0) > 0
            assert m["backlog_messages"] == published["messages"] - c["messages_pulled"]
        finally:
            job.terminate()
            job.wait(timeout=60)
