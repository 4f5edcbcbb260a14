"""The PyFlink SQL peer of the benchmark: the same aggregates as ``plain_loop.count``, in Flink SQL.

Run with the Flink venv's python (standard library + pyflink only, no project modules)::

    .venv-flink/bin/python viewcounts/bench/pyflink_sql.py EVENTS_JSONL OUT_AGGREGATES_JSONL \
        [--parallelism 1] [--disorder-s 30] [--state-ttl-s 600]

One streaming-mode job on a local MiniCluster (the JVM that PyFlink's gateway starts):

* source: the ``filesystem`` connector with the ``json`` format over EVENTS_JSONL (one event
  a line). ``event_time`` is read as ``TIMESTAMP_LTZ(3)`` with
  ``json.timestamp-format.standard = ISO-8601``, which is how that format parses an RFC 3339
  instant ending in ``Z`` (milliseconds kept); ``table.local-time-zone`` is UTC, so window
  starts are UTC wall times. Watermark: ``event_time - disorder_s - 1 ms``. The generator lags an
  event by up to and including ``disorder_s`` behind the stream, and Flink fires a window when the
  watermark reaches ``window_end - 1 ms``, so an original event lagging exactly ``disorder_s``
  and stamped in the last millisecond of a window would otherwise be dropped as late. Redelivered
  copies may lag up to twice as far; the dedup drops them before the windows see them.
* dedup: ``ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc_time) = 1`` (keep the first
  copy by arrival, as plain_loop does; the copies of an event are identical anyway). Ordered on
  processing time, Flink 1.19 plans it as an insert-only first-row deduplication that keeps
  ``event_time`` a time attribute, so the window TVF aggregates below stay plain append-only
  aggregates. Ordered on the rowtime (``ORDER BY event_time``) the planner also accepts it, but
  that deduplication is an updating stream (an earlier-stamped copy arriving later retracts the
  first), so the windows get retracting aggregates (``MIN_RETRACT``/``MAX_RETRACT`` keep every
  value in state): not what this benchmark should measure.
* state TTL (``table.exec.state.ttl``, default 600 s; only the dedup state is subject to it, the
  window aggregates are cleaned up by the watermark): the contract's allowed lateness is 600 s, and a
  redelivery later than that would also be too late for its windows, so an id need not be
  remembered longer. Flink's state TTL counts processing time: in production (event time close to
  wall time) 600 s covers the redelivery horizon; in this replay the whole job takes well under
  600 s of wall time, so nothing expires and the dedup is exact, at the cost of holding every id
  (as plain_loop's ``set`` does). The TTL is not free: on the heap state backend every state
  access also runs Flink's incremental TTL cleanup (a few entries each time, not configurable
  from SQL), about a third of the CPU samples of the dedup task, the job's busiest thread, on
  2M events; ``--state-ttl-s 0`` turns the TTL off for comparison. ``pipeline.object-reuse`` is on
  (no copy of each row between chained operators; safe for the SQL runtime's operators).
* windows: ``TUMBLE`` window TVFs of 1 minute and 1 hour, ``COUNT(*)``, ``COUNT(value)``,
  ``SUM(value)``, ``MIN(value)``, ``MAX(value)`` per ``video_id, event_type``, ``UNION ALL`` of
  both, into a ``filesystem`` sink (``csv``) in a temporary folder; the end of the bounded input
  advances the watermark to the end of time, which fires every window and commits the files.
  Collecting through ``TableResult.collect()`` would cross py4j once per row, slower than the job.

Afterwards the CSV rows are converted to the aggregate JSON lines of ``workload.write_aggregates``
(``[video_id, event_type, granularity, window_start_s, count, value_count, sum, min, max]``, sum
as a float, min/max floats or null), and one JSON line goes to stdout: ``events`` (rows of
EVENTS_JSONL), ``seconds`` (the job's net run time as Flink reports it, ``JobExecutionResult``,
from the job's start to its end: no JVM start-up, planning or submission),
``startup_seconds`` (JVM gateway start and table environment creation), ``submit_seconds``
(planning, code generation and submission of the INSERT, up to ``execute_sql`` returning),
``wall_seconds`` (``execute_sql`` to the job's end, i.e. submission and run),
``jvm_cpu_seconds`` (CPU the gateway JVM, which hosts the MiniCluster, used over that same span:
steadier than wall time on a shared machine) and ``rows_out`` (aggregates written). Converting
the sink's CSV to JSON lines afterwards is not timed.

No Python UDFs run, so PyFlink's Python worker (Apache Beam's harness) is never needed: the
script sets ``_python_worker_execution_mode=process``, which stops ``TableEnvironment`` from
starting its Beam loopback worker server (that import is what would need apache-beam and grpc).
The Flink venv therefore only needs apache-flink, apache-flink-libraries, py4j and ruamel.yaml
(infra/flink/requirements.lock).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def statements(events_path: str, out_dir: str, disorder_s: int) -> list[str]:
    """The DDL and the INSERT of the job, in order."""
    wm_s, wm_ms = divmod(disorder_s * 1000 + 1, 1000)
    days, rest = divmod(wm_s, 86400)
    interval = f"'{days} {rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}.{wm_ms:03d}'"
    source = f"""
CREATE TEMPORARY TABLE events (
  event_id STRING,
  video_id STRING,
  event_type STRING,
  event_time TIMESTAMP_LTZ(3),
  `value` BIGINT,
  proc_time AS PROCTIME(),
  WATERMARK FOR event_time AS event_time - INTERVAL {interval} DAY TO SECOND(3)
) WITH (
  'connector' = 'filesystem',
  'path' = {_sql_string(events_path)},
  'format' = 'json',
  'json.timestamp-format.standard' = 'ISO-8601',
  'json.fail-on-missing-field' = 'false',
  'json.ignore-parse-errors' = 'false'
)"""
    dedup = """
CREATE TEMPORARY VIEW deduped AS
SELECT event_id, video_id, event_type, event_time, `value`
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc_time ASC) AS rn
  FROM events
)
WHERE rn = 1"""
    sink = f"""
CREATE TEMPORARY TABLE aggregates (
  video_id STRING,
  event_type STRING,
  granularity STRING,
  window_start TIMESTAMP(3),
  cnt BIGINT,
  value_count BIGINT,
  value_sum BIGINT,
  value_min BIGINT,
  value_max BIGINT
) WITH (
  'connector' = 'filesystem',
  'path' = {_sql_string(out_dir)},
  'format' = 'csv',
  'csv.null-literal' = 'null'
)"""

    def window(granularity: str, size: str) -> str:
        return f"""
SELECT video_id, event_type, '{granularity}', window_start,
       COUNT(*), COUNT(`value`), SUM(`value`), MIN(`value`), MAX(`value`)
FROM TABLE(TUMBLE(TABLE deduped, DESCRIPTOR(event_time), INTERVAL '1' {size}))
GROUP BY video_id, event_type, window_start, window_end"""

    insert = "INSERT INTO aggregates" + window("minute", "MINUTE") + "\nUNION ALL" + window("hour", "HOUR")
    return [source, dedup, sink, insert]


def _num(s: str):
    return None if s == "null" else int(s)


def convert(out_dir: Path, out_path: Path) -> int:
    """CSV rows of the sink folder -> aggregate JSON lines; returns the number of rows."""
    rows = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for part in sorted(p for p in out_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            with open(part, newline="", encoding="utf-8") as f:
                for video_id, event_type, gran, start, cnt, vcnt, vsum, vmin, vmax in csv.reader(f):
                    ws = dt.datetime.strptime(start[:19], "%Y-%m-%d %H:%M:%S")  # UTC wall time
                    start_s = int((ws - _EPOCH_NAIVE).total_seconds())
                    mn, mx, sm = _num(vmin), _num(vmax), _num(vsum)
                    out.write(
                        json.dumps(
                            [
                                video_id,
                                event_type,
                                gran,
                                start_s,
                                int(cnt),
                                int(vcnt),
                                float(sm or 0),
                                None if mn is None else float(mn),
                                None if mx is None else float(mx),
                            ]
                        )
                        + "\n"
                    )
                    rows += 1
    return rows


def _jvm_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of the gateway JVM so far (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("events_jsonl")
    ap.add_argument("out_aggregates_jsonl")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--disorder-s", type=int, default=30, help="the workload's out-of-order bound")
    ap.add_argument("--state-ttl-s", type=int, default=600, help="dedup state TTL (allowed lateness)")
    ap.add_argument("--explain", action="store_true", help="print the plan to stderr before running")
    args = ap.parse_args(argv)

    events_path = str(Path(args.events_jsonl).resolve())
    out_path = Path(args.out_aggregates_jsonl)
    t0 = time.perf_counter()
    # No Python UDFs: keep TableEnvironment from starting the Beam loopback worker server.
    os.environ.setdefault("_python_worker_execution_mode", "process")
    from pyflink.table import EnvironmentSettings, TableEnvironment

    tenv = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = tenv.get_config()
    for key, value in {
        "parallelism.default": str(args.parallelism),
        "table.exec.resource.default-parallelism": str(args.parallelism),
        "table.local-time-zone": "UTC",
        "table.exec.state.ttl": f"{args.state_ttl_s} s",
        "pipeline.object-reuse": "true",
        "pipeline.name": "viewcounts-bench-pyflink-sql",
    }.items():
        conf.set(key, value)
    startup_s = time.perf_counter() - t0
    try:
        from pyflink.java_gateway import get_gateway

        jvm_pid = int(get_gateway().jvm.java.lang.ProcessHandle.current().pid())
    except Exception:  # noqa: BLE001 - the CPU figure is optional
        jvm_pid = None

    tmp = Path(tempfile.mkdtemp(prefix="pyflink-sql-"))
    try:
        sink_dir = tmp / "sink"
        *ddl, insert = statements(events_path, sink_dir.as_uri(), args.disorder_s)
        for stmt in ddl:
            tenv.execute_sql(stmt)
        if args.explain:
            print(tenv.explain_sql(insert), file=sys.stderr)
        cpu0 = _jvm_cpu_seconds(jvm_pid)
        t1 = time.perf_counter()
        result = tenv.execute_sql(insert)
        submit_s = time.perf_counter() - t1
        result.wait()
        wall_s = time.perf_counter() - t1
        job = result.get_job_client().get_job_execution_result().result()
        seconds = job.get_net_runtime() / 1000
        cpu1 = _jvm_cpu_seconds(jvm_pid)
        jvm_cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        rows_out = convert(sink_dir, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(events_path, "rb") as f:
        events = sum(1 for line in f if line.strip())
    print(
        json.dumps(
            {
                "events": events,
                "seconds": round(seconds, 3),
                "startup_seconds": round(startup_s, 3),
                "submit_seconds": round(submit_s, 3),
                "wall_seconds": round(wall_s, 3),
                "jvm_cpu_seconds": None if jvm_cpu_s is None else round(jvm_cpu_s, 2),
                "rows_out": rows_out,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
