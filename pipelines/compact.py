"""Compaction: closed hours of the raw JSONL archive into the Parquet archive.

Reads ``<archive root>/YYYY/MM/DD/HH/events-*.jsonl`` (``schemas.archive``) and writes
``<parquet root>/dt=YYYY-MM-DD/hour=HH/part-0.parquet`` (``schemas.parquet_archive``: the
schema, the archive order and the dedup rule are documented there), local or ``gs://``
(Beam's ``FileSystems``, as the recompute reads the archive)::

    python -m pipelines.compact --archive-path gs://B/archive --parquet-path gs://B/parquet \\
        [--start 2024-05-01T00:00:00Z --end 2024-06-01T00:00:00Z] [--workers 2]

Which hours: every hour folder of the archive (within ``[--start, --end)`` when given)
that is *closed*: its end plus ``--allowed-lateness-s`` plus ``schemas.closed_windows.CLOSE_MARGIN_S``
is past now, so the streaming job accepts none of its events any more. Events that come
later still are archived (docs/contract.md, Acceptance) in new files of their hour's folder.

Idempotent and incremental: an hour's part lists in its footer the archive files merged
into it; a run merges into the existing rows only the files not listed yet (late
arrivals), keeping the first copy of each ``event_id`` in archive order over old and new
rows alike (the same rows as compacting everything again), and skips an hour with no new
file. So it can run on a schedule, and after the raw archive's retention has deleted an
hour's JSONL the Parquet part stays as it is. ``--force`` rebuilds parts from the JSONL
alone (only while the raw archive still holds the whole hour). A part is replaced
atomically: written under ``<parquet root>/_staging/``, then renamed over the old one (a
POSIX rename locally; on GCS a copy, which replaces the object whole, then a delete), so
readers see the old part or the new one, and a run killed midway leaves at most a
staging file, which the next run of that hour ignores. Two runs of one hour at once: the
later rename wins, and a file the winner had not seen is merged by the next run (its
footer does not list it).

Why a per-hour pyarrow job rather than a Beam batch job: the unit is the hour (dedup needs
all copies of an hour together, and each hour's output is one file replaced as a whole).
A Beam job would shuffle the whole range's events to group them by hour, and Beam's
Parquet sink picks its own shard names, so re-running a range could not replace a
partition atomically nor merge only late files. Hours are independent: months of data
(about 730 hours a month) run as separate tasks, ``--workers`` processes here or one
invocation per date range on as many machines (a scheduled job per day), each holding at
most one hour's rows in memory (Arrow columns, about the size of the hour's Parquet
uncompressed) and reading each raw file once.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
import time
import uuid
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
from schemas.archive import ARCHIVE_WINDOW_S, hour_folder, parse_file_path
from schemas.closed_windows import CLOSE_MARGIN_S, closes_at_s
from schemas.event import US_PER_S, format_time_us, parse_event_time
from schemas.parquet_archive import (
    STAGING_FOLDER,
    RowBuilder,
    first_in_archive_order,
    hour_part_path,
    part_sources,
    read_part,
    with_sources,
)

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class HourResult:
    """What compacting one hour did: ``files_merged`` raw files read (0: part up to date),
    ``lines_read`` lines in them, ``bad_lines`` lines (or items of an array line) that were no
    valid event (skipped),
    ``rows`` distinct events in the part afterwards."""

    hour: str
    files_merged: int
    lines_read: int
    bad_lines: int
    rows: int


def archive_hours(archive_root: str, hours: range | None = None) -> dict[int, list[str]]:
    """``{hour start (epoch s): [raw archive file paths]}`` of the archive (local or ``gs://``):
    every hour folder, or those of ``hours``. ``.jsonl`` files not named by
    ``schemas.archive.file_name`` (no write time to order them by) are left out, with a warning."""
    root = archive_root.rstrip("/")
    patterns = [f"{root}/*/*/*/*/*.jsonl"] if hours is None else [f"{hour_folder(root, h)}/*.jsonl" for h in hours]
    out: dict[int, list[str]] = defaultdict(list)
    unnamed = []
    for result in FileSystems.match(patterns) if patterns else []:
        for m in result.metadata_list:
            name = parse_file_path(m.path)
            if name is None:
                unnamed.append(m.path)
            else:
                out[name.hour_s].append(m.path)
    if unnamed:
        _LOG.warning(
            "%d .jsonl files in the archive are not named as its writer names them and are not compacted, e.g. %s",
            len(unnamed),
            unnamed[0],
        )
    return {h: sorted(paths) for h, paths in sorted(out.items())}


def closed_hours(hours, now_s: float, allowed_lateness_s: int) -> list[int]:
    """The hours (epoch s) whose end + lateness + ``CLOSE_MARGIN_S`` is at or before ``now_s``."""
    return [h for h in hours if closes_at_s(h, ARCHIVE_WINDOW_S, allowed_lateness_s) <= now_s]


def _read_lines(path: str):
    """``(line number from 1, line)`` of a raw file's non-empty lines."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if line:
                yield n, line


def compact_hour(parquet_root: str, hour_s: int, files: list[str], force: bool = False) -> HourResult:
    """Merge the raw ``files`` of one hour (their paths) not yet in its part into it, or every
    file into a new part with ``force`` (module docstring)."""
    part = hour_part_path(parquet_root, hour_s)
    compacted = not force and FileSystems.exists(part)
    done, rows_before = part_sources(part) if compacted else ([], 0)
    merged = set(done)
    new = [(p, name) for p in files if (name := posixpath.basename(p)) not in merged]
    label = format_time_us(hour_s * US_PER_S)
    if compacted and not new:
        return HourResult(label, 0, 0, 0, rows_before)
    rows, lines, bad = RowBuilder(), 0, 0
    for path, name in new:
        written_ms = parse_file_path(path).written_ms
        for n, line in _read_lines(path):
            lines += 1
            bad += rows.add_line(line, (written_ms, name, n), hour_s)
    table = rows.table()
    if compacted:
        table = pa.concat_tables([read_part(part), table])
    table = with_sources(first_in_archive_order(table), [*done, *(name for _, name in new)])
    _replace(parquet_root, part, table)
    if bad:
        _LOG.warning(
            "hour %s: %d archived lines (or array items) were no valid event of the hour and were skipped", label, bad
        )
    return HourResult(label, len(new), lines, bad, table.num_rows)


def _replace(parquet_root: str, part: str, table: pa.Table) -> None:
    """Write ``table`` to ``part`` atomically (module docstring)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="snappy")
    staging = f"{parquet_root.rstrip('/')}/{STAGING_FOLDER}/{uuid.uuid4().hex}.parquet"
    local = "://" not in part
    if local:
        os.makedirs(os.path.dirname(part), exist_ok=True)
    with FileSystems.create(staging, mime_type="application/octet-stream", compression_type="uncompressed") as f:
        f.write(buf.getvalue().to_pybytes())
    if local:
        os.replace(staging, part)
    else:
        FileSystems.rename([staging], [part])


def _compact_one(job: tuple) -> HourResult:
    return compact_hour(*job)


def compact(
    archive_root: str,
    parquet_root: str,
    now_s: float,
    allowed_lateness_s: int = DEFAULT_ALLOWED_LATENESS_S,
    hours: range | None = None,
    force: bool = False,
    workers: int = 1,
) -> list[HourResult]:
    """Compact every closed hour of the archive (of ``hours`` when given, epoch seconds of hour
    starts) into the Parquet root; one ``HourResult`` per closed hour, in hour order. Open hours
    are logged and left for a later run."""
    found = archive_hours(archive_root, hours)
    closed = closed_hours(found, now_s, allowed_lateness_s)
    if len(closed) < len(found):
        _LOG.info("%d hours not closed yet, left for a later run", len(found) - len(closed))
    jobs = [(parquet_root, h, found[h], force) for h in closed]
    if workers <= 1 or len(jobs) <= 1:
        return [_compact_one(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_compact_one, jobs))


def hours_arg(start: str | None, end: str | None) -> range | None:
    """The hour starts (epoch s) of ``--start``/``--end`` (the hours they touch), None for
    neither. Raises ``ValueError`` for one without the other, an instant that is not RFC 3339,
    or an ``--end`` not after ``--start``."""
    if not start and not end:
        return None
    if not (start and end):
        raise ValueError("--start and --end go together")
    start_s, end_s = parse_event_time(start) // US_PER_S, parse_event_time(end) // US_PER_S
    if end_s <= start_s:
        raise ValueError(f"--end ({end}) must be after --start ({start})")
    return range(start_s - start_s % ARCHIVE_WINDOW_S, end_s, ARCHIVE_WINDOW_S)


def add_compact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive-path", required=True, help="raw archive root (local folder or gs://B/archive)")
    p.add_argument("--parquet-path", required=True, help="Parquet archive root (local folder or gs://B/parquet)")
    p.add_argument("--start", help="RFC 3339 instant: compact only hours from its hour on (with --end)")
    p.add_argument("--end", help="RFC 3339 instant: compact only hours before it (with --start)")
    p.add_argument(
        "--allowed-lateness-s",
        type=int,
        default=DEFAULT_ALLOWED_LATENESS_S,
        help="the streaming job's --allowed_lateness_s: an hour is closed once its end plus "
        f"this plus {CLOSE_MARGIN_S} s is past",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rebuild parts from the raw files alone (only while the raw archive holds the whole hour)",
    )
    p.add_argument("--workers", type=int, default=1, help="hours compacted in parallel (processes)")


def compact_main(args) -> int:
    """Run ``compact`` from parsed ``add_compact_args`` flags; prints one JSON summary line.
    Returns 2, with the message on stderr, for a bad ``--start``/``--end``."""
    started = time.monotonic()
    try:
        hours = hours_arg(args.start, args.end)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = compact(
        args.archive_path, args.parquet_path, time.time(), args.allowed_lateness_s, hours, args.force, args.workers
    )
    changed = [r for r in results if r.files_merged]
    print(
        orjson.dumps(
            {
                "closed_hours": len(results),
                "hours_written": len(changed),
                "files_merged": sum(r.files_merged for r in changed),
                "lines_read": sum(r.lines_read for r in changed),
                "bad_lines": sum(r.bad_lines for r in changed),
                "rows": sum(r.rows for r in results),
                "seconds": round(time.monotonic() - started, 3),
                "hours": [asdict(r) for r in changed],
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.compact", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_compact_args(parser)
    sys.exit(compact_main(parser.parse_args()))
