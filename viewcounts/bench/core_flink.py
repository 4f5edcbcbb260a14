"""The core job on a Flink session cluster: the product's ``CountEvents`` (decode, validate,
dedup, minute and hour aggregates) in streaming mode at a given parallelism, beside PyFlink
SQL at the same parallelism (``pyflink_sql.py --parallelism``).

The cluster is ``viewcounts.local.flink.FlinkCluster(task_managers=2, task_slots=2)`` with its
Python worker pool; the job is submitted as the streaming job is
(``pipelines.runners.runner_flags("flink", ..., worker_pool=...)``, EXTERNAL environment,
its checkpoints every 5 s included). It reads the workload's ``messages.jsonl`` with Beam's
``ReadFromText`` (each line one message, arrival time: the workload's ``arrival_us``);
the read ends, the watermark goes to the end of time and every window fires, so the job
finishes. The dedup finds the watermark with its timers (``stamped_watermark=False``, as on
Flink). Event-age checks are off (the workload's times are historical). Each pane row is
written to JSON-lines files in a folder (``counting_sink.FileRows``: the Python workers are other
processes, so no in-memory sink); afterwards the newest pane of every cell
(``cell_timestamp_us``) gives the aggregates, written for the harness's cross-check.

Run as a child process::

    python -m viewcounts.bench.core_flink WORKLOAD_DIR OUT_AGGREGATES_JSONL --parallelism 2

prints one JSON line: ``events`` (read), ``mutations`` (pane rows), ``seconds`` (the job's
duration as Flink reports it, ``/jobs/<id>``: deployment to the end, Python workers'
start included; no cluster start, no submission), ``submit_seconds`` (the rest of the
launch-to-end time: job server, translation, submission), ``jvm_cpu_seconds`` (CPU of the
job manager, task managers, worker pool and SDK workers from submission to the end: the
harness adds it to this process's own), ``mutations`` and ``parallelism``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import orjson


def newest_panes(folder: Path) -> tuple[dict, int]:
    """``({(video, type, granularity, start_s): aggregate tuple}, rows read)``: the newest
    pane (highest cell timestamp) of every cell in ``folder``'s row files."""
    newest: dict = {}
    rows = 0
    for path in folder.glob("rows-*.jsonl"):
        with open(path, "rb") as f:
            for line in f:
                v, t, g, w, ts, agg = orjson.loads(line)
                rows += 1
                key = (v, t, g, w)
                if key not in newest or ts > newest[key][0]:
                    newest[key] = (ts, tuple(agg))
    return {k: agg for k, (_, agg) in newest.items()}, rows


def _wait_for_end(cluster, timeout_s: float) -> list[dict]:
    """Flink's overview of the cluster's jobs once a job was submitted and none runs any
    more; cancels them and raises ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = cluster.rest("/jobs/overview")["jobs"]
        if jobs and all(j["state"] in ("FINISHED", "FAILED", "CANCELED") for j in jobs):
            return jobs
        time.sleep(0.5)  # polling with a deadline
    for j in cluster.rest("/jobs/overview")["jobs"]:
        cluster.cancel(j["jid"])
    raise TimeoutError(f"the core job did not finish within {timeout_s} s")


def run(
    workload_dir: Path,
    out_path: Path,
    parallelism: int,
    sdk_worker_parallelism: int,
    shards: int,
    early_firing_s: int,
    timeout_s: float = 300.0,
) -> dict:
    from pipelines.runners import runner_flags
    from transforms.count_events import ROWS, CountEvents
    from transforms.validate import AcceptancePolicy
    from viewcounts.bench.counting_sink import FileRows
    from viewcounts.bench.workload import write_aggregates
    from viewcounts.local.flink import FlinkCluster

    meta = orjson.loads((workload_dir / "workload.json").read_bytes())
    rows_dir = Path(tempfile.mkdtemp(prefix="core-flink-rows-"))
    with FlinkCluster(task_managers=2, task_slots=2) as cluster:
        flags = runner_flags(
            "flink",
            flink_master=cluster.master,
            parallelism=parallelism,
            worker_pool=cluster.worker_pool,
            sdk_worker_parallelism=sdk_worker_parallelism,
            bounded=True,
        )
        options = beam.options.pipeline_options.PipelineOptions([*flags, "--streaming"])
        p = beam.Pipeline(options=options)
        policy = AcceptancePolicy(check_age=False, dedup_shards=shards)
        rows = (
            p
            | "read" >> beam.io.ReadFromText(str(workload_dir / "messages.jsonl"), coder=beam.coders.BytesCoder())
            | "arrival time" >> beam.Map(lambda payload, at: (payload, at), meta["arrival_us"])
            | "count events" >> CountEvents(policy, early_firing_s)
        )[ROWS]
        rows | "file rows" >> beam.ParDo(FileRows(str(rows_dir)))
        timed = run_timed(cluster, p, timeout_s)
    panes, mutations = newest_panes(rows_dir)
    write_aggregates(panes, out_path)
    return {"events": meta["events_sent"], "mutations": mutations, **timed, "parallelism": parallelism}


def run_timed(cluster, pipeline: beam.Pipeline, timeout_s: float) -> dict:
    """Run ``pipeline`` on ``cluster`` (a ``FlinkCluster`` with no other job) until its one job
    ends: ``seconds`` (the job's duration as Flink reports it), ``submit_seconds`` (the rest of
    the wall time: translation, staging, worker start) and ``jvm_cpu_seconds`` (the cluster's
    processes' CPU over the run). Raises ``RuntimeError`` unless exactly one job FINISHED."""
    cpu0 = cluster.cpu_seconds()
    t0 = time.perf_counter()
    pipeline.run()
    jobs = _wait_for_end(cluster, timeout_s)
    cpu1 = cluster.cpu_seconds()
    if len(jobs) != 1 or jobs[0]["state"] != "FINISHED":
        raise RuntimeError(f"expected one finished job, found {[(j['jid'], j['state']) for j in jobs]}")
    seconds = jobs[0]["duration"] / 1000
    return {
        "seconds": seconds,
        "submit_seconds": round(time.perf_counter() - t0 - seconds, 3),
        "jvm_cpu_seconds": round(sum(cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    from viewcounts.bench.core import job_parser

    ap = job_parser("viewcounts.bench.core_flink", __doc__)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--sdk-worker-parallelism", type=int, default=1, help="Python workers per task manager")
    args = ap.parse_args(argv)
    res = run(
        args.workload_dir, args.out, args.parallelism, args.sdk_worker_parallelism, args.shards, args.early_firing_s
    )
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
