"""Beam's own windowing against ``FirePanes``: the product's pane stage
(``transforms.aggregate.FirePanes``) and ``WindowInto`` + ``CombinePerKey`` over the same
pre-aggregated partials, on Flink and on Prism.

Input (``write_partials``): the workload's messages decoded by the product's parser
(``schemas.event.parse_payload``), duplicates dropped (the first copy of an ``event_id``
kept, as the dedup stage does when nothing is late), each message's events folded as
``PreAggregate`` folds a bundle: one element per pane shard per message, ``(shard,
(arrival_us, {minute_s: {(video_id, event_type): Aggregate}}))``, timestamped at its
earliest minute. ``arrival_us`` is the workload's single arrival time for every element
(as ``core_flink`` gives it), so early panes of both variants fire on the runner's
processing-time clock only. Stored as JSON lines ``[shard, arrival_us, [[minute_s,
[[video_id, event_type, count, value_count, sum, min, max], ...]], ...]]``.

Variants, each a pipeline of its own (``ReadFromText`` of the partials, decode, windows,
``counting_sink.FileRows``):

* ``fire_panes``: ``FirePanes(allowed_lateness_s, early_firing_s)`` as the job runs it (its
  day counts computed and not written);
* ``beam``: one element per (video, type, minute) partial, then per granularity of
  ``schemas.storage.GRANULARITY_SECONDS``: ``WindowInto(FixedWindows(size))`` with
  ``AfterWatermark(early=AfterProcessingTime(early_firing_s), late=AfterCount(1))``,
  accumulating, allowed lateness ``size + allowed_lateness_s + WINDOW_LATENESS_MARGIN_S``
  (the lateness after which ``FirePanes`` drops a window), ``CombinePerKey(MergeAggregates())``,
  one row per pane (``pane_index`` Beam's; cell timestamp the count, which only grows
  across accumulating panes). Python's ``WindowInto`` closes every window with a pane of its
  own (``ClosingBehavior.EMIT_ALWAYS``, not settable there): this variant writes every cell
  once more than ``FirePanes`` does, when the window expires.

Both read a bounded file in streaming mode: the watermark ends at the end of time when the
read ends, so every window gets its on-time (final) pane; the newest pane of every cell
(``core_flink.newest_panes``) gives the aggregates the harness cross-checks against the
plain loop's and against each other (``measure``).

Flink: a session cluster per run (``viewcounts.local.flink.FlinkCluster(task_managers=2,
task_slots=2)``, EXTERNAL Python workers), submitted as ``core_flink`` submits the core
job; ``seconds`` is the job's duration as Flink reports it. Prism: ``runner_flags("prism")``
(LOOPBACK); ``seconds`` is ``run()`` to finished minus ``startup_seconds``, the same for a
pipeline of one ``Impulse`` (Prism's start and a job's submission).

Run as a child process::

    python -m viewcounts.bench.windowing PARTIALS_JSONL OUT_AGGREGATES_JSONL --runner flink --variant beam

prints one JSON line: ``events`` (accepted events the partials hold), ``partials`` (input
elements), ``mutations`` (pane rows written), ``seconds``, ``runner``, ``variant``, and on
Flink ``jvm_cpu_seconds`` and ``submit_seconds`` (``core_flink``'s meanings).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import orjson

from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
from schemas.storage import EMPTY, GRANULARITY_SECONDS, Aggregate, merge
from transforms.aggregate import (
    DAY_COUNTS,
    WINDOW_LATENESS_MARGIN_S,
    AggregateRow,
    FirePanes,
    aggregate_events,
    decode_partials,
)

VARIANTS = ("fire_panes", "beam")
RUNNERS = ("flink", "prism")


def write_partials(messages_path: Path, out_path: Path, shards: int, arrival_us: int) -> int:
    """Write the input both variants read (module doc) from a workload's ``messages.jsonl``;
    returns the number of accepted events it holds."""
    from schemas.event import US_PER_S, parse_payload
    from transforms.validate import shard_of

    seen: set[str] = set()
    accepted = 0
    with open(messages_path, "rb") as f, open(out_path, "wb") as out:
        for line in f:
            events, _, _ = parse_payload(line.rstrip(b"\n"))
            by_shard_minute: dict[tuple[int, int], list] = defaultdict(list)
            for ev in events:
                if ev.event_id in seen:
                    continue
                seen.add(ev.event_id)
                s = ev.time_us // US_PER_S
                by_shard_minute[(shard_of(ev.video_id, shards), s - s % 60)].append(ev)
                accepted += 1
            by_shard: dict[int, list] = defaultdict(list)
            for (shard, minute_s), evs in sorted(by_shard_minute.items()):
                by_shard[shard].append([minute_s, [[*key, *agg] for key, agg in aggregate_events(evs).items()]])
            out.write(
                b"".join(orjson.dumps([shard, arrival_us, minutes]) + b"\n" for shard, minutes in by_shard.items())
            )
    return accepted


def decode_element(line: bytes):
    """One line of the partials file -> ``FirePanes``' input element, timestamped at its
    earliest minute."""
    from apache_beam.transforms.window import TimestampedValue

    shard, arrival_us, minutes = orjson.loads(line)
    by_minute = {minute_s: decode_partials(orjson.dumps(rows)) for minute_s, rows in minutes}
    return TimestampedValue((shard, (arrival_us, by_minute)), min(by_minute))


def minute_partials(element):
    """``(shard, (arrival_us, by_minute))`` -> one ``((video_id, event_type), Aggregate)`` per
    (video, type, minute), timestamped at its minute."""
    from apache_beam.transforms.window import TimestampedValue

    _, (_, by_minute) = element
    for minute_s, partials in by_minute.items():
        for key, agg in partials.items():
            yield TimestampedValue((key, agg), minute_s)


class MergeAggregates(beam.CombineFn):
    """``Aggregate``s -> their ``schemas.storage.merge``."""

    def create_accumulator(self) -> Aggregate:
        return EMPTY

    def add_input(self, acc: Aggregate, agg: Aggregate) -> Aggregate:
        return merge(acc, agg)

    def merge_accumulators(self, accs) -> Aggregate:
        out = EMPTY
        for acc in accs:
            out = merge(out, acc)
        return out

    def extract_output(self, acc: Aggregate) -> Aggregate:
        return acc


class PaneRow(beam.DoFn):
    """``((video_id, event_type), Aggregate)`` of one pane -> ``[AggregateRow]`` (one firing's
    rows, as ``FirePanes`` emits them): the window's start, Beam's pane index, the count as
    the cell timestamp (panes accumulate)."""

    def __init__(self, granularity: str) -> None:
        self._granularity = granularity

    def process(self, element, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        (video_id, event_type), agg = element
        yield [
            AggregateRow(
                video_id, event_type, self._granularity, window.start.micros // 1_000_000, agg, pane.index, agg.count
            )
        ]


class BeamWindows(beam.PTransform):
    """``FirePanes``' input -> ``PCollection[list[AggregateRow]]`` through Beam's windows (module doc)."""

    def __init__(self, allowed_lateness_s: int, early_firing_s: int) -> None:
        super().__init__()
        self._lateness_s = allowed_lateness_s
        self._early_s = early_firing_s

    def expand(self, elements):
        from apache_beam.transforms import trigger, window

        cells = elements | "minute partials" >> beam.FlatMap(minute_partials)
        rows = []
        for granularity, size_s in GRANULARITY_SECONDS.items():
            rows.append(
                cells
                | f"{granularity} windows"
                >> beam.WindowInto(
                    window.FixedWindows(size_s),
                    trigger=trigger.AfterWatermark(
                        early=trigger.AfterProcessingTime(self._early_s), late=trigger.AfterCount(1)
                    ),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=size_s + self._lateness_s + WINDOW_LATENESS_MARGIN_S,
                )
                | f"{granularity} combine" >> beam.CombinePerKey(MergeAggregates())
                | f"{granularity} rows" >> beam.ParDo(PaneRow(granularity))
            )
        return rows | "rows" >> beam.Flatten()


def _pipeline(
    flags: list[str], partials_path: Path, rows_dir: Path, variant: str, allowed_lateness_s: int, early_firing_s: int
) -> beam.Pipeline:
    from apache_beam.coders import BytesCoder
    from apache_beam.options.pipeline_options import PipelineOptions

    from viewcounts.bench.counting_sink import FileRows

    p = beam.Pipeline(options=PipelineOptions([*flags, "--streaming"]))
    elements = (
        p
        | "read" >> beam.io.ReadFromText(str(partials_path), coder=BytesCoder())
        | "decode" >> beam.Map(decode_element)
    )
    if variant == "fire_panes":
        rows = elements | "fire panes" >> beam.ParDo(FirePanes(allowed_lateness_s, early_firing_s)).with_outputs(
            DAY_COUNTS, main="rows"
        )
        rows = rows.rows
    else:
        rows = elements | "beam windows" >> BeamWindows(allowed_lateness_s, early_firing_s)
    rows | "file rows" >> beam.ParDo(FileRows(str(rows_dir)))
    return p


def _run_flink(build, parallelism: int, timeout_s: float) -> dict:
    from pipelines.runners import runner_flags
    from viewcounts.bench.core_flink import run_timed
    from viewcounts.local.flink import FlinkCluster

    with FlinkCluster(task_managers=2, task_slots=2) as cluster:
        flags = runner_flags(
            "flink", flink_master=cluster.master, parallelism=parallelism, worker_pool=cluster.worker_pool, bounded=True
        )
        p = build(flags)
        return {**run_timed(cluster, p, timeout_s), "parallelism": parallelism}


def _run_prism(build) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.runners import runner_flags

    flags = runner_flags("prism")
    empty = beam.Pipeline(options=PipelineOptions([*flags, "--streaming"]))
    _ = empty | beam.Impulse()
    t0 = time.perf_counter()
    empty.run().wait_until_finish()
    startup_s = time.perf_counter() - t0
    p = build(flags)
    t0 = time.perf_counter()
    p.run().wait_until_finish()
    total_s = time.perf_counter() - t0
    return {"seconds": total_s - startup_s, "startup_seconds": round(startup_s, 3)}


def run(
    partials_path: Path,
    out_path: Path,
    runner: str,
    variant: str,
    parallelism: int,
    allowed_lateness_s: int,
    early_firing_s: int,
    timeout_s: float = 300.0,
) -> dict:
    """One variant on one runner over the partials file (module doc); writes the newest pane of
    every cell to ``out_path`` (``workload.write_aggregates``)."""
    from viewcounts.bench.core_flink import newest_panes
    from viewcounts.bench.workload import write_aggregates

    if variant not in VARIANTS or runner not in RUNNERS:
        raise ValueError(f"variant one of {VARIANTS}, runner one of {RUNNERS}; got {variant!r}, {runner!r}")
    rows_dir = Path(tempfile.mkdtemp(prefix=f"windowing-{variant}-{runner}-rows-"))

    def build(flags):
        return _pipeline(flags, partials_path, rows_dir, variant, allowed_lateness_s, early_firing_s)

    res = _run_flink(build, parallelism, timeout_s) if runner == "flink" else _run_prism(build)
    panes, mutations = newest_panes(rows_dir)
    write_aggregates(panes, out_path)
    events = partials = 0
    with open(partials_path, "rb") as f:
        for line in f:
            partials += 1
            events += sum(r[2] for _, rows in orjson.loads(line)[2] for r in rows)
    return {"events": events, "partials": partials, "mutations": mutations, "runner": runner, "variant": variant, **res}


def measure(bench, progress) -> dict:
    """The ``windowing`` bench part: both variants on both runners over the same
    ``windowing_events`` workload (``bench.cfg``), the job's allowed lateness and early firing
    interval (``pipelines.options.CountingOptions`` defaults), Flink at the last of
    ``harness.FLINK_PARALLELISMS``. Each run's aggregates are cross-checked against the plain
    loop's and the two variants' against each other on each runner (``BenchMismatch``).
    Returns ``harness.WINDOWING_KEYS`` (events/s; ``windowing_beam_vs_fire_panes_<runner>``: Beam's
    events/s over ``FirePanes``') and every run's figures under ``windowing_runs``."""
    from pipelines.options import CountingOptions
    from viewcounts.bench import harness, workload

    job = CountingOptions([])
    cfg = bench.cfg
    w = bench.workload(events=cfg.windowing_events)
    _, reference = bench.loop(w)
    partials_path = bench.work / f"partials-{w.folder.name}-s{cfg.shards}.jsonl"
    write_partials(w.messages_path, partials_path, cfg.shards, w.arrival_us)
    p = harness.FLINK_PARALLELISMS[-1]
    out: dict = {
        "windowing_allowed_lateness_s": job.allowed_lateness_s,
        "windowing_early_firing_s": job.early_firing_s,
        "windowing_flink_parallelism": p,
        "windowing_runs": {},
    }
    for runner in RUNNERS:
        got = {}
        for variant in VARIANTS:
            name = f"windowing {variant} {runner}"
            aggs_path, log = bench._out(f"windowing-{variant}-{runner}")
            m = harness.run_child(
                name,
                [
                    sys.executable,
                    "-m",
                    "viewcounts.bench.windowing",
                    str(partials_path),
                    str(aggs_path),
                    "--runner",
                    runner,
                    "--variant",
                    variant,
                    "--parallelism",
                    str(p),
                    "--allowed-lateness-s",
                    str(job.allowed_lateness_s),
                    "--early-firing-s",
                    str(job.early_firing_s),
                ],
                log,
            )
            harness.cross_check(name, reference, aggs_path)
            got[variant] = workload.read_aggregates(aggs_path)
            out["windowing_runs"][f"{variant}_{runner}"] = m.figures()
            out[f"windowing_{variant}_{runner}_events_per_s"] = round(m.events_per_s)
            progress(f"{name}: {m.events_per_s:,.0f} events/s ({m.events:,} events, {m.report['mutations']:,} rows)")
        diffs = workload.differences(got["fire_panes"], got["beam"])
        if diffs:
            raise harness.BenchMismatch(
                f"on {runner}, Beam's windows' final panes differ from FirePanes': " + "; ".join(diffs)
            )
        out[f"windowing_beam_vs_fire_panes_{runner}"] = harness._ratio(
            out[f"windowing_beam_{runner}_events_per_s"], out[f"windowing_fire_panes_{runner}_events_per_s"]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m viewcounts.bench.windowing", description=__doc__.split("\n\n")[0])
    ap.add_argument("partials", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--runner", choices=RUNNERS, required=True)
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--parallelism", type=int, default=2, help="Flink's")
    ap.add_argument("--allowed-lateness-s", type=int, default=DEFAULT_ALLOWED_LATENESS_S)
    ap.add_argument("--early-firing-s", type=int, default=30)
    args = ap.parse_args(argv)
    res = run(
        args.partials,
        args.out,
        args.runner,
        args.variant,
        args.parallelism,
        args.allowed_lateness_s,
        args.early_firing_s,
    )
    sys.stdout.write(orjson.dumps(res).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
