"""The core job under benchmark: the product's own ``CountEvents`` (decode, validate, dedup,
minute and hour aggregates) on the local runner in streaming mode, over a workload's
``messages.jsonl``; the Bigtable write is replaced by a counting sink that keeps each
window's newest pane.

The messages reach the job as a ``TestStream`` (the local runner reads no file in streaming
mode: its bounded reads are splittable DoFns, which it cannot run), about 1,000 events per
step, with the stream's own clocks: after each step the watermark moves to the step's
stream time minus three ``disorder_s`` (so no event is late) and processing time moves on
by the stream time the step covers, so early panes fire every ``early_firing_s`` of stream
time as they would live. The input is held in memory by the ``TestStream``: peak RSS
includes it.

Run as a child process (so its CPU time and peak RSS are its own)::

    python -m viewcounts.bench.core WORKLOAD_DIR OUT_AGGREGATES_JSONL [--early-firing-s S]

prints one JSON line: ``events`` (read), ``accepted``, ``duplicates``, ``mutations`` (panes
written: one mutation per (video, type, window) per pane), ``seconds`` (wall time of
``run()`` to finished, including the runner's start), ``startup_seconds`` (imports and
pipeline construction).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import orjson


def _test_stream(messages_path: Path, meta: dict, events_per_step: int):
    """``(payload, arrival_us)`` elements in steps of about 1,000 events (see the module doc);
    a step arrives at the stream time it ends at."""
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue
    from apache_beam.utils.timestamp import Timestamp

    from viewcounts.bench.workload import START

    spec = meta["spec"]
    per_step = max(1, events_per_step // spec["events_per_message"])
    step_ms = spec["span_s"] * 1000 * per_step // meta["messages"]  # TestStream clocks are whole ms
    start_ms = int(START.timestamp() * 1000) - 3 * spec["disorder_s"] * 1000
    ts = TestStream()
    ts.advance_watermark_to(Timestamp(micros=start_ms * 1000))
    with open(messages_path, "rb") as f:
        lines = [line.rstrip(b"\n") for line in f]
    for step, i in enumerate(range(0, len(lines), per_step)):
        watermark = Timestamp(micros=(start_ms + (step + 1) * step_ms) * 1000)
        arrival_us = (start_ms + 3 * spec["disorder_s"] * 1000 + (step + 1) * step_ms) * 1000
        ts.add_elements([TimestampedValue((payload, arrival_us), watermark) for payload in lines[i : i + per_step]])
        ts.advance_watermark_to(watermark)
        ts.advance_processing_time(step_ms / 1000)
    return ts.advance_watermark_to_infinity()


def run(
    workload_dir: Path,
    out_path: Path,
    early_firing_s: int,
    shards: int,
    events_per_step: int,
    naive: bool = False,
    batch: bool = False,
) -> dict:
    started = time.perf_counter()
    import apache_beam as beam
    from apache_beam.coders import BytesCoder
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import runners
    from transforms import metrics
    from transforms.count_events import ROWS, CountEvents
    from transforms.validate import AcceptancePolicy
    from viewcounts.bench import counting_sink
    from viewcounts.bench.naive_beam import NaiveCount
    from viewcounts.bench.workload import own_peak_rss_mb, write_aggregates

    meta = orjson.loads((workload_dir / "workload.json").read_bytes())
    token = uuid.uuid4().hex
    counting_sink.open_results(token)
    if batch:  # Beam's batch runner (FnApiRunner), the batch recompute's: no early panes
        p = beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"]))
        early_firing_s = None
        messages = (
            p
            | "read" >> beam.io.ReadFromText(str(workload_dir / "messages.jsonl"), coder=BytesCoder())
            | "arrival time" >> beam.Map(lambda payload, at: (payload, at), meta["arrival_us"])
        )
    else:
        options = PipelineOptions(["--streaming"])
        runners.prepare(options)  # the local runner, as the streaming job uses it
        p = beam.Pipeline(options=options)
        messages = p | "messages" >> _test_stream(workload_dir / "messages.jsonl", meta, events_per_step)
    if naive:
        rows = messages | "naive count" >> NaiveCount()
    else:
        rows = (messages | "count events" >> CountEvents(AcceptancePolicy(dedup_shards=shards), early_firing_s))[ROWS]
    rows | "counting sink" >> beam.ParDo(counting_sink.CountingSink(token))
    built = time.perf_counter()
    result = p.run(test_runner_api=False)  # no proto round trip of the TestStream's payloads
    result.wait_until_finish()
    finished = time.perf_counter()
    res = counting_sink.RESULTS.pop(token)
    write_aggregates({k: tuple(agg) for k, (_, agg) in res["panes"].items()}, out_path)
    counters = metrics.committed_counters(result)
    return {
        "events": meta["events_sent"],
        "accepted": counters.get(metrics.EVENTS_ACCEPTED),
        "duplicates": counters.get(metrics.DUPLICATES_DROPPED),
        "mutations": res["mutations"],
        "seconds": finished - built,
        "startup_seconds": built - started,
        "peak_rss_mb": own_peak_rss_mb(),
    }


def job_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a run of the core job under benchmark (``python -m module``, here
    and ``core_flink``), described by ``doc``'s first paragraph: the workload's folder, the
    output aggregates (JSON lines), ``--early-firing-s`` and ``--shards``."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    ap.add_argument("workload_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--early-firing-s", type=int, default=30)
    ap.add_argument("--shards", type=int, default=16, help="dedup and pane shards (keys of the stateful stages)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = job_parser("viewcounts.bench.core", __doc__)
    ap.add_argument("--events-per-step", type=int, default=1000, help="events per TestStream step (bundle)")
    ap.add_argument("--naive", action="store_true", help="run the naive Beam peer (naive_beam.NaiveCount) instead")
    ap.add_argument(
        "--batch",
        action="store_true",
        help="batch mode on Beam's FnApiRunner (the batch recompute's runner) instead of streaming on the local runner",
    )
    args = ap.parse_args(argv)
    sys.stdout.write(
        orjson.dumps(
            run(
                args.workload_dir,
                args.out,
                args.early_firing_s,
                args.shards,
                args.events_per_step,
                args.naive,
                args.batch,
            )
        ).decode()
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
