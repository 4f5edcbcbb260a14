"""The ``recompute`` part of ``viewcounts bench``: the batch recompute over
generated archives, into the Bigtable emulator, on the local runner (Beam's FnApiRunner).

* ``build_archive(spec, root)``: a bench workload (``workload.generate``: Zipf videos, three
  event types, duplicates) laid out as the raw archive the streaming job writes
  (``schemas.archive``): its events in stream order, cut into files of ``EVENTS_PER_FILE``
  lines per event-time hour (a streaming bundle's file), each file named with a later
  written time than the one before. Reused when built before.
* ``measure(spec, root, emulator_host)``: the recompute of the whole archive as a child
  process (``python -m viewcounts.bench.recompute``, so its CPU and memory are its own),
  then the stored aggregates read back and compared with ``viewcounts.commands.reconcile``'s polars
  computation over the workload's events (``BenchMismatch`` when any differs). Figures:
  ``events`` read, ``seconds`` (the job's run, interpreter start excluded), ``events_per_s``,
  ``aggregates_written``, CPU seconds per million events, peak RSS, ``mismatches``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from schemas.archive import file_name, hour_folder
from schemas.event import US_PER_S, format_time_us, parse_event_time
from viewcounts.bench import workload
from viewcounts.bench.workload import WorkloadSpec

EVENTS_PER_FILE = 2_000
DAY_S = 86_400
RECOMPUTE_SPEC = WorkloadSpec(
    events=3_000_000, videos=2_000, events_per_message=1, duplicate_rate=0.05, span_s=30 * DAY_S, disorder_s=30
)
PROJECT, INSTANCE = "bench", "bench"


def spec_for(events: int, days: int) -> WorkloadSpec:
    return replace(RECOMPUTE_SPEC, events=events, span_s=days * DAY_S)


def build_archive(spec: WorkloadSpec, root: Path) -> tuple[Path, Path, int, int]:
    """``(archive folder, events file, first hour s, end hour s)`` of the workload's archive."""
    w = workload.generate(spec, root / "workloads")
    archive = w.folder / "archive"
    done = archive / "_built"
    hours: dict[int, list[bytes]] = {}
    written_ms = 1_800_000_000_000
    if not done.exists():
        with open(w.events_path, "rb") as f:
            for line in f:
                t_us = parse_event_time(orjson.loads(line)["event_time"])
                hour_s = t_us // US_PER_S // 3600 * 3600
                lines = hours.setdefault(hour_s, [])
                lines.append(line)
                if len(lines) >= EVENTS_PER_FILE:
                    written_ms = _write(archive, hour_s, lines, written_ms)
                    hours[hour_s] = []
        for hour_s, lines in hours.items():
            if lines:
                written_ms = _write(archive, hour_s, lines, written_ms)
        done.write_bytes(orjson.dumps(sorted(hours)))
    span = orjson.loads(done.read_bytes())
    return archive, w.events_path, span[0], span[-1] + 3600


def _write(archive: Path, hour_s: int, lines: list[bytes], written_ms: int) -> int:
    folder = Path(hour_folder(str(archive), hour_s))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file_name("events", written_ms, "bec0000000", f"{written_ms:012x}")).write_bytes(b"".join(lines))
    return written_ms + 1


def measure(spec: WorkloadSpec, root: Path, name: str) -> dict:
    """Recompute the archive of ``spec`` into a fresh table of the emulator at
    ``BIGTABLE_EMULATOR_HOST`` and cross-check it (module docstring)."""
    from query.stats import StatsReader
    from viewcounts.bench.harness import BenchMismatch, run_child
    from viewcounts.commands.reconcile import expected_aggregates, reconcile, stored_aggregates
    from viewcounts.local import provision

    archive, events_path, start_s, end_s = build_archive(spec, root)
    table = f"recompute-{name}-{os.getpid()}"
    provision.create_table(PROJECT, INSTANCE, table)
    m = run_child(
        f"recompute {name}",
        [sys.executable, "-m", "viewcounts.bench.recompute", str(archive), str(start_s), str(end_s), table],
        root / f"recompute-{name}.log",
    )
    with StatsReader(PROJECT, INSTANCE, table) as reader:
        stored = stored_aggregates(reader)
    mismatches = reconcile(expected_aggregates(str(events_path)), stored)
    if mismatches:
        raise BenchMismatch(
            f"recompute {name}: {len(mismatches)} aggregates differ from the polars reference, e.g. {mismatches[:3]}"
        )
    return {**m.figures(), "days": spec.span_s // DAY_S, "aggregates_stored": len(stored), "mismatches": 0}


def _run(archive: str, start_s: int, end_s: int, table: str) -> dict:
    """The child: the recompute job over ``[start_s, end_s)`` on the local runner."""
    import time

    from pipelines import batch_recompute
    from transforms import metrics

    pipeline = batch_recompute.build_pipeline(
        [
            f"--archive_path={archive}",
            f"--start={format_time_us(start_s * US_PER_S)}",
            f"--end={format_time_us(end_s * US_PER_S)}",
            f"--bigtable_project={PROJECT}",
            f"--bigtable_instance={INSTANCE}",
            f"--bigtable_table={table}",
            f"--dead_letter_path={archive}-dead-letters",
        ]
    )
    started = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - started
    c = metrics.committed_counters(result)
    return {
        "events": c.get("events_in", 0),
        "seconds": seconds,
        "accepted": c.get("events_accepted", 0),
        "duplicates": c.get("duplicates_dropped", 0),
        "aggregates_written": c.get("aggregates_written", 0),
        "write_failures": c.get("write_failures", 0),
        "peak_rss_mb": workload.own_peak_rss_mb(),
    }


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    archive_arg, start_arg, end_arg, table_arg = sys.argv[1:5]
    sys.stdout.write(orjson.dumps(_run(archive_arg, int(start_arg), int(end_arg), table_arg)).decode() + "\n")
