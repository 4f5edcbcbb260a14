"""``viewcounts recompute``: the batch recompute (``pipelines.batch_recompute``) as a command.

* ``--start/--end`` (hour-aligned) or ``--after-restarts``: which hours
  (``pipelines.batch_recompute.RecomputeScope``: plus the other hours of the closed days
  holding them, read for those days' top lists); the archive's files of the hours read are
  listed first, and a progress bar (``rich``) follows the bytes read (``--parquet-path``:
  hours compacted there are read from Parquet, outside the bar). What is left open (days whose
  top lists are not rebuilt yet, affected hours not closed yet) is printed with the time
  after which to run the command again, and so are the closed days whose top lists the job
  left as they were, as one of their hours had events but no file to read (the job's check
  when it runs: ``pipelines.batch_recompute.incomplete_days``).
* A refusal to overwrite windows the streaming job may still fire: an hour is *open* while
  ``hour end + allowed lateness`` is later than the streaming job's watermark, taken here as
  the wall clock minus ``schemas.closed_windows.CLOSE_MARGIN_S`` (a job that keeps up trails the
  wall clock by less; a job with a backlog trails by more: wait for it). A recompute of an
  open hour could write a cell that a later streaming pane of the same window loses to (the
  recompute's cells are stamped from its own later wall clock, ``schemas.storage``), so open
  hours are refused unless ``--force``.
* ``--dry-run``: nothing is written to Bigtable; the recompute's rows go to files
  (``--rows_path``) and are compared with the stored aggregates: per hour (of the window
  start), how many stored aggregates would change, and by how much (count and sum deltas,
  batch minus stored): an audit of streaming against batch (``audit``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
from schemas.archive import ARCHIVE_WINDOW_S
from schemas.event import US_PER_S, format_time_us

if TYPE_CHECKING:
    from pipelines.batch_recompute import RecomputeScope

REFRESH_S = 0.5


@dataclass
class HourAudit:
    """One hour's audit: aggregates (minute and hour windows starting in the hour) that the
    recompute would ``change`` (a different count, value count, sum, min or max, or none stored
    yet: ``missing``), ``count_delta``/``sum_delta`` summed over the hour's minute windows
    (batch minus stored), ``unchanged`` ones, and stored ones the recompute has no row for
    (``stored_only``: it would leave them as they are)."""

    hour_s: int
    changed: int = 0
    missing: int = 0
    unchanged: int = 0
    stored_only: int = 0
    count_delta: int = 0
    sum_delta: float = 0.0

    def to_json(self) -> dict:
        return {
            "hour": format_time_us(self.hour_s * US_PER_S),
            "changed": self.changed,
            "missing": self.missing,
            "unchanged": self.unchanged,
            "stored_only": self.stored_only,
            "count_delta": self.count_delta,
            "sum_delta": self.sum_delta,
        }


def read_row_files(folder: str) -> dict[tuple, tuple]:
    """The rows a dry run wrote (``row_to_json`` lines under ``folder``):
    ``{(video_id, event_type, granularity, window_start_s): (count, value_count, sum, min, max)}``."""
    from schemas.archive import local_lines

    out = {}
    for line in local_lines(folder):
        d = orjson.loads(line)
        out[(d["video_id"], d["event_type"], d["granularity"], d["window_start_s"])] = (
            d["count"],
            d["value_count"],
            d["sum"],
            d["min"],
            d["max"],
        )
    return out


def stored_in_range(reader, entities, start_s: int, end_s: int) -> dict[tuple, tuple]:
    """Stored aggregates of ``entities`` (``(video_id, event_type)``) with windows starting in
    ``[start_s, end_s)``, in the shape of ``read_row_files``."""
    out = {}
    for video_id, event_type in entities:
        for granularity in ("minute", "hour"):
            for w, a in reader.read_windows(video_id, event_type, granularity, start_s, end_s).items():
                out[(video_id, event_type, granularity, w)] = tuple(a)
    return out


def audit(batch: dict[tuple, tuple], stored: dict[tuple, tuple]) -> list[HourAudit]:
    """Per hour (sorted), what the recompute's ``batch`` rows would do to ``stored`` (``HourAudit``)."""
    from viewcounts.commands.reconcile import _same

    hours: dict[int, HourAudit] = {}

    def hour(key) -> HourAudit:
        h = key[3] - key[3] % ARCHIVE_WINDOW_S
        return hours.setdefault(h, HourAudit(h))

    for key, b in batch.items():
        s = stored.get(key)
        a = hour(key)
        if s is not None and all(_same(x, y) for x, y in zip(b, s)):
            a.unchanged += 1
            continue
        a.changed += 1
        a.missing += s is None
        if key[2] == "minute":
            a.count_delta += b[0] - (s[0] if s else 0)
            a.sum_delta += b[2] - (s[2] if s else 0.0)
    for key in stored.keys() - batch.keys():
        hour(key).stored_only += 1
    return [hours[h] for h in sorted(hours)]


def open_hours(hours: list[int], allowed_lateness_s: int, now_s: float) -> list[int]:
    """The hours (epoch seconds of their start) whose windows the streaming job may still fire:
    ``hour end + allowed_lateness_s`` later than its watermark, taken as ``now_s -
    CLOSE_MARGIN_S`` (module docstring; ``schemas.closed_windows.closes_at_s``)."""
    from schemas.closed_windows import closes_at_s

    return [h for h in hours if closes_at_s(h, ARCHIVE_WINDOW_S, allowed_lateness_s) > now_s]


def _job_flags(args, rows_path: str | None, progress_path: str) -> list[str]:
    flags = [
        f"--archive_path={args.archive_path}",
        f"--bigtable_project={args.project}",
        f"--bigtable_instance={args.instance}",
        f"--bigtable_table={args.table}",
        f"--progress_path={progress_path}",
        f"--allowed_lateness_s={args.allowed_lateness_s}",
    ]
    if args.start:
        flags.append(f"--start={args.start}")
    if args.end:
        flags.append(f"--end={args.end}")
    if args.after_restarts:
        flags.append("--after_restarts")
    for name in ("dead_letter_path", "metadata_path", "dedup_shards", "parquet_path"):
        if getattr(args, name) is not None:
            flags.append(f"--{name}={getattr(args, name)}")
    if rows_path:
        flags.append(f"--rows_path={rows_path}")
    return flags + list(args.job_flags)


def _time(s: int) -> str:
    return format_time_us(s * US_PER_S)


@dataclass
class Outcome:
    """What ``run_recompute`` did: its ``RecomputeScope`` (hours overwritten, days read for their
    lists, what is left open and when it closes), the files and bytes read, the job's counters,
    ``incomplete_days`` (``{day: [unreadable hour, ...]}``, epoch s: the days of ``scope.days``
    whose lists the job left as they were), and for a dry run the audit."""

    scope: RecomputeScope
    files: int
    bytes_read: int
    seconds: float
    counters: dict = field(default_factory=dict)
    incomplete_days: dict[int, list[int]] = field(default_factory=dict)
    audit: list[HourAudit] | None = None

    @property
    def day_lists(self) -> list[int]:
        """The days (epoch s) whose top lists the job rebuilt from the whole day."""
        return [d for d in self.scope.days if d not in self.incomplete_days]

    def to_json(self) -> dict:
        sc = self.scope
        return {
            "hours": [_time(h) for h in sc.hours],
            "hours_read": len(sc.hours_read),
            "day_lists": [_time(d) for d in self.day_lists],
            "open_days": {_time(d): {"run_again_after": _time(at)} for d, at in sc.open_days.items()},
            "open_hours": {_time(h): {"run_again_after": _time(at)} for h, at in sc.open_hours.items()},
            "incomplete_days": {
                _time(d): {"unreadable_hours": [_time(h) for h in hours]} for d, hours in self.incomplete_days.items()
            },
            "files": self.files,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "counters": self.counters,
            "audit": None if self.audit is None else [a.to_json() for a in self.audit],
        }


class RefusedOpenHours(ValueError):
    """The range holds hours the streaming job may still fire (``open_hours``) and no ``--force``."""


def run_recompute(args, progress=None, now_s: float | None = None) -> Outcome:
    """Run the recompute the parsed ``args`` describe (``add_recompute_args``); ``progress``:
    ``callable(bytes_read, bytes_total)`` called while files are read; ``now_s``: the wall
    clock open hours and days are judged at (default now). Raises ``RefusedOpenHours`` (open
    hours without ``--force``), ``ValueError`` for a bad range."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import batch_recompute
    from transforms import metrics

    now_s = time.time() if now_s is None else now_s
    scope = batch_recompute.recompute_scope(
        args.archive_path,
        PipelineOptions(_job_flags(args, None, "-")).view_as(batch_recompute.RecomputeOptions),
        args.allowed_lateness_s,
        now_s,
    )
    refused = open_hours(scope.hours, args.allowed_lateness_s, now_s)
    if refused and not args.force:
        raise RefusedOpenHours(
            f"{len(refused)} hour(s) from {format_time_us(refused[0] * US_PER_S)} may still be fired by the streaming "
            f"job (hour end + {args.allowed_lateness_s} s of allowed lateness is after its watermark, taken as now "
            f"minus a safety margin); recompute them later or pass --force"
        )
    hours_read = scope.hours_read
    compacted = set(batch_recompute.parquet_hours(args.parquet_path, hours_read)) if args.parquet_path else set()
    patterns = batch_recompute.archive_patterns(args.archive_path, [h for h in hours_read if h not in compacted])
    listed = [m for r in FileSystems.match(patterns) for m in r.metadata_list] if patterns else []
    total = sum(m.size_in_bytes for m in listed)
    work = tempfile.mkdtemp(prefix="recompute-")
    progress_path = os.path.join(work, "progress")
    rows_path = os.path.join(work, "rows") if args.dry_run else None
    stop = threading.Event()

    def report() -> None:  # the job runs in this thread: portable runners install signal handlers
        while not stop.wait(REFRESH_S):
            progress(_bytes_noted(progress_path), total)

    reporter = threading.Thread(target=report, name="recompute progress", daemon=True)
    try:
        started = time.monotonic()
        if progress is not None:
            reporter.start()
        result = batch_recompute.build_pipeline(_job_flags(args, rows_path, progress_path), now_s).run()
        result.wait_until_finish()
        stop.set()
        if progress is not None:
            reporter.join()
            progress(_bytes_noted(progress_path), total)
        outcome = Outcome(
            scope,
            len(listed),
            _bytes_noted(progress_path),
            time.monotonic() - started,
            metrics.committed_counters(result),
            batch_recompute.incomplete_days(result),
        )
        if args.dry_run:
            outcome.audit = _audit_rows(args, rows_path, scope.hours)
        return outcome
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)


def stored_entities(project: str, instance: str, table: str, hours: list[int]) -> set[tuple[str, str]]:
    """The ``(video_id, event_type)`` pairs with a stored row of a period that holds one of
    ``hours`` (epoch s): minute rows of their UTC days, hour rows of their UTC months. One scan
    of the table's row keys, filtered by Bigtable (a key regex on the period; values stripped,
    one cell per row): the entities of stored aggregates the archive has no event of."""
    from google.cloud.bigtable import row_filters as rf

    from pipelines.bigtable_scan import rows_matching
    from schemas import storage

    periods = sorted({storage.period_of(g, h) for h in hours for g in ("minute", "hour")})
    if not periods:
        return set()
    rows = rows_matching(
        project,
        instance,
        table,
        f"(?s)^[^#]*#[^#]*#[mh]#({'|'.join(periods)})$".encode(),
        rf.CellsRowLimitFilter(1),
        rf.StripValueTransformerFilter(True),
    )
    return {storage.parse_row_key(row.row_key)[:2] for row in rows}


def _audit_rows(args, rows_path: str, hours: list[int]) -> list[HourAudit]:
    """``audit`` of a dry run's row files against the stored aggregates of ``hours``, those of
    entities the recompute has no row for included (``stored_only``)."""
    from query.stats import StatsReader

    batch = read_row_files(rows_path)
    start_s, end_s = (hours[0], hours[-1] + ARCHIVE_WINDOW_S) if hours else (0, 0)
    entities = {k[:2] for k in batch} | stored_entities(args.project, args.instance, args.table, hours)
    in_hours = set(hours)
    # rows the job would write outside the hours asked for (an archived line whose event time is
    # not its folder's hour) are compared with what they would overwrite too
    outside: dict[int, set] = defaultdict(set)
    for k in batch:
        if k[3] - k[3] % ARCHIVE_WINDOW_S not in in_hours:
            outside[k[3] - k[3] % ARCHIVE_WINDOW_S].add(k[:2])
    with StatsReader(args.project, args.instance, args.table) as reader:
        stored = {
            k: v
            for k, v in stored_in_range(reader, entities, start_s, end_s).items()
            if k[3] - k[3] % ARCHIVE_WINDOW_S in in_hours
        }
        for h, pairs in outside.items():
            stored.update(stored_in_range(reader, pairs, h, h + ARCHIVE_WINDOW_S))
    return audit(batch, stored)


def _bytes_noted(progress_path: str) -> int:
    try:
        with open(progress_path, "rb") as f:
            return sum(int(line) for line in f.read().split())
    except FileNotFoundError:
        return 0


def _interrupted(exc: BaseException) -> bool:
    """True for a ``KeyboardInterrupt`` (Ctrl-C), also as Beam re-raises it from a step: a
    ``RuntimeError`` raised while handling one."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def recompute_main(args) -> int:
    """Run ``run_recompute`` with a progress bar and print its outcome on stderr (what is left
    open or incomplete with what to do; ``--json``: the outcome as JSON). The job's own
    warnings about the same days and hours are shown with ``-v`` only, or always on a runner
    whose result carries no metrics (``RunnerProfile.metrics_in_result``: there the incomplete
    days reach this command only as the job's warnings). Returns 0, 2 for a bad
    range, 3 for refused open hours, 130 when interrupted."""
    import logging
    import sys

    from apache_beam.options.pipeline_options import PipelineOptions
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from pipelines import runners

    runner = runners.runner_of(PipelineOptions(list(args.job_flags)))
    if not args.verbose and runners.profile(runner).metrics_in_result:
        logging.getLogger("pipelines.batch_recompute").setLevel(logging.ERROR)
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=not console.is_terminal,
        ) as bar:
            task = bar.add_task("reading the archive", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(
                    task,
                    completed=done,
                    total=total or None,
                    description="reading the archive" if done < total else "deduplicating and writing",
                )

            outcome = run_recompute(args, progress)
    except RefusedOpenHours as exc:
        console.print(f"[red]refused:[/] {exc}")
        return 3
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not _interrupted(exc):
            raise
        console.print(
            "[red]interrupted:[/] some windows may be written, others not (each write is an overwrite "
            "with the recomputed value): run the same command again to finish"
        )
        return 130
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    c, scope = outcome.counters, outcome.scope
    extra = len(scope.hours_read) - len(scope.hours)
    console.print(
        f"{len(scope.hours)} hour(s) recomputed{f' ({extra} more read for day top lists)' if extra else ''}"
        f", {outcome.files:,} files, {outcome.bytes_read:,} bytes in {outcome.seconds:.1f} s: "
        f"{c.get('events_in', 0):,} events read, {c.get('events_accepted', 0):,} counted, "
        f"{c.get('duplicates_dropped', 0):,} duplicates, {c.get('dead_letters', 0):,} dead letters, "
        f"{c.get('aggregates_written', 0):,} aggregates written"
    )
    if outcome.day_lists and not args.dry_run:
        console.print(
            f"day top lists rebuilt from the whole day: {', '.join(_time(d)[:10] for d in outcome.day_lists)}"
        )
    for day, at in scope.open_days.items():
        console.print(
            f"[yellow]open day[/] {_time(day)[:10]}: its day top lists are not rebuilt; run again after {_time(at)}"
        )
    for day, hours in outcome.incomplete_days.items():
        console.print(
            f"[yellow]incomplete day[/] {_time(day)[:10]}: its day top lists are left as they are: hour(s) "
            f"{', '.join(_time(h)[11:16] for h in hours)} had events but no archive file here; run again "
            f"with --parquet-path holding them"
        )
    for hour, at in scope.open_hours.items():
        console.print(
            f"[yellow]open hour[/] {_time(hour)}: affected by a restart, not recomputed; run again after {_time(at)}"
        )
    if outcome.audit is not None:
        t = Table(title="dry run: what the recompute would change (batch minus stored)")
        for col in ("hour", "changed", "of which missing", "unchanged", "stored only", "count delta", "sum delta"):
            t.add_column(col, justify="right")
        for a in outcome.audit:
            t.add_row(
                format_time_us(a.hour_s * US_PER_S),
                f"{a.changed:,}",
                f"{a.missing:,}",
                f"{a.unchanged:,}",
                f"{a.stored_only:,}",
                f"{a.count_delta:+,}",
                f"{a.sum_delta:+,.6g}",
            )
        console.print(t)
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(outcome.to_json(), option=orjson.OPT_INDENT_2))
    sys.stdout.flush()
    return 0


def add_recompute_args(p) -> None:
    from schemas import storage

    p.add_argument("--archive-path", dest="archive_path", required=True, help="the raw archive's root (local or gs://)")
    p.add_argument("--start", help="RFC 3339, hour-aligned, inclusive")
    p.add_argument("--end", help="RFC 3339, hour-aligned, exclusive")
    p.add_argument(
        "--after-restarts",
        dest="after_restarts",
        action="store_true",
        help="the closed hours affected by streaming jobs started without state (within --start/--end when given)",
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="write nothing; report per hour how many stored aggregates would change and by how much",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also overwrite hours the streaming job may still fire: those whose end plus the allowed "
        "lateness is after the streaming job's watermark, which this command takes as the wall clock "
        "minus a safety margin (schemas.closed_windows.CLOSE_MARGIN_S, 300 s) since it cannot read the job's",
    )
    p.add_argument(
        "--allowed-lateness-s",
        dest="allowed_lateness_s",
        type=int,
        default=DEFAULT_ALLOWED_LATENESS_S,
        help="the streaming job's --allowed_lateness_s",
    )
    p.add_argument("--project", default=storage.DEFAULT_PROJECT, help="Bigtable project")
    p.add_argument("--instance", default=storage.DEFAULT_INSTANCE, help="Bigtable instance")
    p.add_argument("--table", default=storage.DEFAULT_TABLE, help="Bigtable table")
    p.add_argument(
        "--dead-letter-path",
        dest="dead_letter_path",
        help="folder for the dead letters of unreadable lines; none: a dead-letters folder beside the archive",
    )
    p.add_argument(
        "--parquet-path",
        dest="parquet_path",
        help="the Parquet archive's root (pipelines.compact): hours compacted there are read from it",
    )
    p.add_argument("--metadata-path", dest="metadata_path", help="JSONL metadata snapshot for titles and channels")
    p.add_argument("--dedup-shards", dest="dedup_shards", type=int, help="dedup shards of the batch job")
    p.add_argument("--json", help="also write the outcome (counters, audit) as JSON to this file")
    p.add_argument("job_flags", nargs="*", help="more Beam flags after --, e.g. -- --runner=FlinkRunner ...")
