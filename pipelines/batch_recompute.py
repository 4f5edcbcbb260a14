"""Batch recompute: re-count a time range from the raw archive, linearly.

Reads the archive's hour folders for ``[--start, --end)`` (hour-aligned RFC 3339 instants),
counts them with the batch-shaped path ``transforms.batch_count.CountArchive`` (the same
function of the archive as docs/contract.md, Acceptance and Aggregates, without its
processing-time checks: every valid event once per ``event_id``, the copy first in archive
order; cost proportional to the events read) and overwrites those windows' aggregates in
Bigtable (one pane per window, cells stamped from the recompute's wall clock: they win over
streaming panes of closed windows), and their top lists (``transforms.top.TopFromRows``; the
same lists the streaming job keeps). Events the streaming job refused as ``too_late`` are in
the archive and are counted here: that is the point of a recompute. ``build_pipeline(argv)``
returns the job without running it::

    python -m pipelines.batch_recompute --archive_path gs://B/archive \\
        --start 2024-05-14T00:00:00Z --end 2024-05-15T00:00:00Z --bigtable_project P ...

Day top lists (``RecomputeScope``): a day's list is a function of the archive of the whole
UTC day. A recompute that overwrites any hour of a day rebuilds that day's list once the day
is closed (``schemas.closed_windows.closes_at_s``, the rule that closes hours): it also reads the
day's other hours, counts them with the hours (one dedup over every hour read: the recomputed
hours get the aggregates a recompute of their whole days would give them) and ranks the day
from all 24 hour rows, but writes neither those hours' aggregates nor their minute and hour
lists nor their dead letters. A day still open gets no list (the archive does not hold the whole day yet, and a
recompute's list would win over the streaming job's later ones); the job logs it with the
time after which to run again. Nor does a day with an hour that had events but cannot be
read (``unreadable_hours``: no JSONL file left, not compacted under ``--parquet_path``, yet
its hour list is stored): a list from part of a day would be low. The job checks each day
when it runs, on its workers (a listing of its hours' folders and a read of their stored hour
lists; building the job does no such I/O), logs the day and its hours (run again with
``--parquet_path``) and adds the hours to its ``unreadable_hours`` metric, from which
``incomplete_days(result)`` gives them to ``viewcounts recompute``. Cost: linear in the
events read, up to 23 more hours of a partial day than the range.

``--after_restarts`` instead recomputes the closed hours that streaming jobs started
without state may have left low (``pipelines.restarts.plan_recompute``; within
``[--start, --end)`` when those are given too), and logs the affected hours that are not
closed yet (run it again after the time it gives); it also rebuilds the day lists of the
days a job restored from an older version's state counted low (``RecomputePlan.days``: in
``days``, their hours read, none rewritten); it is safe to run repeatedly::

    python -m pipelines.batch_recompute --archive_path gs://B/archive --after_restarts --bigtable_project P ...

``--parquet_path ROOT`` reads each hour compacted there (``pipelines.compact``: deduplicated,
the first copy in archive order kept, with its archive-order fields) from Parquet and the other
hours from the JSONL archive; the result is the same (``tests/test_recompute.py``). Files
archived into an hour after it was compacted are read only once compaction has merged them.

``--rows_path FOLDER`` writes the rows (not the top lists) as JSONL (``transforms.bigtable_sink.row_to_json``,
one folder per hour of the window start) instead of Bigtable: the ``viewcounts recompute
--dry-run`` audit; it reads what the recompute would read, so its rows are the ones the
recompute writes. Runs as a batch job on every runner (``pipelines.runners.prepare_batch``):
the local runner is Beam's FnApiRunner. Only the hours read are deduplicated together: a copy
of an event re-stamped into an hour not read is not seen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import runners
from pipelines.bigtable_scan import rows_matching
from pipelines.graph import bigtable_writer, run_from_command_line
from pipelines.options import DISTRIBUTED_SHARDS, CountingOptions, sinks_of
from pipelines.restarts import plan_recompute
from pipelines.streaming import metadata_snapshots
from schemas import storage
from schemas.archive import ARCHIVE_WINDOW_S, hour_folder
from schemas.closed_windows import closes_at_s
from schemas.event import US_PER_S, format_time_us, parse_event_time
from schemas.storage import TOP_GRANULARITY_SECONDS
from transforms import metrics
from transforms.batch_count import DEAD_LETTER, ROWS, CountArchive
from transforms.bigtable_sink import row_to_json
from transforms.dead_letters import WriteDeadLetters
from transforms.files import WriteJsonlByHour
from transforms.top import TopFromRows

_LOG = logging.getLogger(__name__)
ROWS_FILE_PREFIX = "rows"
DAY_S = TOP_GRANULARITY_SECONDS["day"]


class RecomputeOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # not argparse-required: Beam parses every registered options class on every view
        parser.add_argument("--start", help="RFC 3339, hour-aligned, inclusive; required without --after_restarts")
        parser.add_argument("--end", help="RFC 3339, hour-aligned, exclusive; required without --after_restarts")
        parser.add_argument(
            "--after_restarts",
            action="store_true",
            default=False,
            help="recompute the closed hours affected by streaming jobs started without state",
        )
        parser.add_argument(
            "--rows_path",
            help="write the rows as JSONL files under this folder instead of "
            "Bigtable (a dry run: viewcounts recompute --dry-run)",
        )
        parser.add_argument(
            "--parquet_path",
            help="root of the Parquet archive (pipelines.compact): each hour "
            "compacted there is read from it, the others from --archive_path's JSONL",
        )
        parser.add_argument(
            "--progress_path",
            help="append the size of each archive file to this local file "
            "as it is read (a line per file: the progress bar of viewcounts recompute)",
        )


def _range_s(start: str | None, end: str | None) -> tuple[int, int]:
    if not start or not end:
        raise ValueError("--start and --end are required")
    start_s, end_s = parse_event_time(start) // US_PER_S, parse_event_time(end) // US_PER_S
    if start_s % ARCHIVE_WINDOW_S or end_s % ARCHIVE_WINDOW_S or end_s <= start_s:
        raise ValueError("--start and --end must be hour-aligned with start < end")
    return start_s, end_s


@dataclasses.dataclass(frozen=True)
class RecomputeScope:
    """What a recompute reads and writes (epoch seconds of window starts, sorted; module docstring):

    * ``hours``: the hours whose aggregates and minute and hour top lists it overwrites;
    * ``days``: the closed days holding one of ``hours``, whose day lists it rebuilds (it reads
      all their hours: ``hours_read``) unless one of their hours cannot be read when it runs
      (``incomplete_days``);
    * ``open_days``: ``{day: closes_at_s}`` of the days holding one of ``hours`` that are not
      closed: no day list is written; run again after that time;
    * ``open_hours``: with ``--after_restarts``, ``{hour: closes_at_s}`` of the affected hours
      not closed yet, not recomputed; run again after that time."""

    hours: list[int]
    days: list[int]
    open_days: dict[int, int]
    open_hours: dict[int, int]

    @property
    def hours_read(self) -> list[int]:
        return sorted(set(self.hours).union(*(range(d, d + DAY_S, ARCHIVE_WINDOW_S) for d in self.days)))


def recompute_scope(archive_path: str, r: RecomputeOptions, allowed_lateness_s: int, now_s: float) -> RecomputeScope:
    """The ``RecomputeScope`` at wall clock ``now_s``: ``[--start, --end)``, or with
    ``--after_restarts`` the closed hours of ``plan_recompute`` (within the range if given).
    A day is closed by ``closes_at_s`` with the streaming job's ``allowed_lateness_s`` (with
    ``--after_restarts``: or its hours' markers', if larger). Reads no table: whether each
    closed day's hours can be read is checked by the job when it runs (``incomplete_days``)."""
    if r.after_restarts:
        plan = plan_recompute(
            archive_path, now_s, range(*_range_s(r.start, r.end), ARCHIVE_WINDOW_S) if r.start or r.end else None
        )
        hours, lateness = plan.closed, plan.lateness_s
        open_hours = {h: closes_at_s(h, ARCHIVE_WINDOW_S, lateness[h]) for h in plan.open}
        days_lateness = {d: max(late, allowed_lateness_s) for d, late in plan.days.items()}
    else:
        hours, lateness, open_hours = list(range(*_range_s(r.start, r.end), ARCHIVE_WINDOW_S)), {}, {}
        days_lateness = {}
    for h in hours:
        d = h - h % DAY_S
        days_lateness[d] = max(days_lateness.get(d, allowed_lateness_s), lateness.get(h, 0))
    closing = {d: closes_at_s(d, DAY_S, late) for d, late in days_lateness.items()}
    return RecomputeScope(
        hours,
        sorted(d for d, at in closing.items() if at <= now_s),
        {d: at for d, at in sorted(closing.items()) if at > now_s},
        open_hours,
    )


def _table_of(options: PipelineOptions) -> tuple[str, str, str]:
    """``(project, instance, table)`` of the job's Bigtable flags."""
    o = options.view_as(CountingOptions)
    return o.bigtable_project, o.bigtable_instance, o.bigtable_table


def unreadable_hours(
    archive_path: str, parquet_path: str | None, table: tuple[str, str, str], hours: list[int]
) -> list[int]:
    """The ``hours`` (epoch s, sorted) that had events but cannot be read now: no JSONL file in
    the archive (the raw retention deletes them), not compacted under ``parquet_path`` (or
    none given), and an hour top list stored for them in Bigtable ``table`` (every hour
    counted by the streaming job or a recompute has one; the table keeps them longer than the
    raw archive keeps files). An hour with none of these had no events. Cost: one listing of
    the hours' folders, one read of the top rows of their months (only for hours with no file)."""
    listed = FileSystems.match(archive_patterns(archive_path, hours))
    no_files = [h for h, result in zip(hours, listed) if not result.metadata_list]
    if parquet_path:
        no_files = sorted(set(no_files) - set(parquet_hours(parquet_path, no_files)))
    if not no_files:
        return []
    stored = stored_hour_lists(*table, no_files)
    return [h for h in no_files if h in stored]


def stored_hour_lists(project: str, instance: str, table: str, hours: list[int]) -> set[int]:
    """The ``hours`` (epoch s) with a stored hour top list of any event type: one read of the hour
    top rows of their months, filtered by Bigtable (a key regex on the months, a qualifier regex
    on the hours, values stripped). A table that does not exist holds none."""
    from google.api_core.exceptions import NotFound
    from google.cloud.bigtable import row_filters as rf

    months = sorted({storage.period_of("hour", h) for h in hours})
    qualifier_regex = b"^(" + b"|".join(storage.qualifier(h) for h in hours) + b")$"
    try:
        rows = rows_matching(
            project,
            instance,
            table,
            f"(?s)^#top#[^#]*#h#({'|'.join(months)})$".encode(),
            rf.ColumnQualifierRegexFilter(qualifier_regex),
            rf.CellsColumnLimitFilter(1),
            rf.StripValueTransformerFilter(True),
        )
    except NotFound:
        return set()
    return {storage.window_of_qualifier(q) for row in rows for q in row.cells.get(storage.FAMILY, {})}


def _log_scope(scope: RecomputeScope, after_restarts: bool) -> None:
    if after_restarts:
        _LOG.info("recomputing %d hours affected by starts without state: %s", len(scope.hours), _times(scope.hours))
    if scope.open_hours:
        _LOG.warning(
            "hours affected by a start without state but not closed yet, not recomputed: %s",
            _run_again(scope.open_hours),
        )
    if scope.open_days:
        _LOG.warning("days not closed yet: their day top lists are not rebuilt: %s", _run_again(scope.open_days))


def _times(starts) -> str:
    return ", ".join(format_time_us(s * US_PER_S) for s in starts)


def _run_again(closes_at: dict[int, int]) -> str:
    """``{window start: closes_at_s}`` -> "run again after T: start, start; run again after ..."."""
    by_time: dict[int, list[int]] = defaultdict(list)
    for start, at in closes_at.items():
        by_time[at].append(start)
    return "; ".join(
        f"run again after {format_time_us(at * US_PER_S)}: {_times(sorted(starts))}"
        for at, starts in sorted(by_time.items())
    )


class _NoteProgress(beam.DoFn):
    """Pass a ``fileio.ReadableFile`` through, appending ``<size in bytes>\\n`` to a local file
    first (``O_APPEND``: whole lines from any number of workers on this machine)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, readable_file):
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"%d\n" % readable_file.metadata.size_in_bytes)
        finally:
            os.close(fd)
        yield readable_file


def parquet_hours(parquet_path: str, hours: list[int]) -> list[int]:
    """The ``hours`` compacted under ``parquet_path`` (their part file exists)."""
    from schemas.parquet_archive import hour_part_path

    return [h for h in hours if FileSystems.exists(hour_part_path(parquet_path, h))]


def archive_patterns(archive_path: str, hours: list[int]) -> list[str]:
    """The file patterns of the archive's hour folders (``*.jsonl``) of ``hours``."""
    return [f"{hour_folder(archive_path, h)}/*.jsonl" for h in hours]


def build_pipeline(argv: list[str] | None = None, now_s: float | None = None) -> beam.Pipeline:
    """The recompute job of ``argv``; ``now_s``: the wall clock its scope is judged at
    (``recompute_scope``; default now)."""
    options = PipelineOptions(argv)
    o = options.view_as(CountingOptions)
    r = options.view_as(RecomputeOptions)
    if not o.archive_path:
        raise ValueError("--archive_path is required")
    # the day lists' hours are checked when the job runs (by workers that reach the archive and
    # the table), not here: building a job does no I/O beyond --after_restarts' plan
    scope = recompute_scope(o.archive_path, r, o.allowed_lateness_s, time.time() if now_s is None else now_s)
    _log_scope(scope, r.after_restarts)
    hours_read = scope.hours_read
    # the recompute reads the archive; it must not write a second copy of it
    sinks = dataclasses.replace(sinks_of(o, streaming=False), archive_path=None)
    runners.prepare_batch(options)
    pipeline = beam.Pipeline(options=options)
    compacted = parquet_hours(r.parquet_path, hours_read) if r.parquet_path else []
    jsonl_hours = sorted(set(hours_read) - set(compacted))
    day_only = sorted(set(jsonl_hours) - set(scope.hours))  # read for day lists: no dead letters
    counted = _archive_files(
        pipeline, o.archive_path, sorted(set(jsonl_hours) & set(scope.hours)), r.progress_path
    ) | "count archive" >> CountArchive(
        o.dedup_shards or DISTRIBUTED_SHARDS,
        metadata_snapshots(pipeline, o.metadata_path, None),
        r.parquet_path,
        pipeline | "Parquet hours" >> beam.Create(compacted) if r.parquet_path else None,
        _archive_files(pipeline, o.archive_path, day_only, r.progress_path, "day hours: ") if day_only else None,
    )
    enriched = counted[ROWS]
    if len(hours_read) > len(scope.hours):  # hours read for day lists only: their rows are not written
        enriched = enriched | "rows of the recomputed hours" >> beam.FlatMap(_rows_in, frozenset(scope.hours))
    dead = [counted[DEAD_LETTER]]
    if r.rows_path:
        (
            enriched
            | "rows by hour" >> beam.FlatMap(_lines_by_hour)
            | "row files" >> WriteJsonlByHour(r.rows_path, ROWS_FILE_PREFIX, sinks.run_id)
        )
    else:
        dead.append(enriched | "write to Bigtable" >> bigtable_writer(sinks))
        dead.append(
            counted[ROWS]
            | "top entities" >> TopFromRows(scope.hours, scope.days)
            | "day lists of whole days"
            >> beam.FlatMap(
                _of_readable_days,
                beam.pvalue.AsList(
                    pipeline
                    | "days" >> beam.Create(scope.days)
                    | "days with an unreadable hour"
                    >> beam.FlatMap(_incomplete_day, o.archive_path, r.parquet_path, _table_of(options))
                ),
            )
            | "write top lists to Bigtable" >> bigtable_writer(sinks, metrics.TOP_LISTS_WRITTEN)
        )
    (
        dead
        | "all dead letters" >> beam.Flatten()
        | "dead letters" >> WriteDeadLetters(sinks.dead_letter_path, sinks.dead_letter_topic, sinks.run_id)
    )
    return pipeline


def _incomplete_day(day_s: int, archive_path: str, parquet_path: str | None, table: tuple[str, str, str]):
    """``day_s`` if one of its hours cannot be read (``unreadable_hours``), else nothing; the
    hours are logged and added to the ``unreadable_hours`` metric (``incomplete_days``)."""
    hours = unreadable_hours(archive_path, parquet_path, table, list(range(day_s, day_s + DAY_S, ARCHIVE_WINDOW_S)))
    if hours:
        _LOG.warning(
            "day %s: its day top lists are not rebuilt: hours %s had events (their hour lists are stored) "
            "but have no archive file to read (the raw retention deleted them?); run again with "
            "--parquet_path holding their compacted copy",
            _times([day_s])[:10],
            _times(hours),
        )
        unreadable = Metrics.string_set(metrics.NAMESPACE, metrics.UNREADABLE_HOURS)
        for h in hours:
            unreadable.add(str(h))
        yield day_s


def incomplete_days(result) -> dict[int, list[int]]:
    """``{day: [hour, ...]}`` (epoch s, sorted) of a finished recompute job's ``result``: the
    closed days whose day lists it left as they were, as one of their hours could not be read
    (``unreadable_hours``, the job's ``unreadable_hours`` metric)."""
    from apache_beam.metrics.metric import MetricsFilter

    query = MetricsFilter().with_namespace(metrics.NAMESPACE).with_name(metrics.UNREADABLE_HOURS)
    hours = sorted({int(h) for s in result.metrics().query(query)["string_sets"] for h in s.committed})
    out: dict[int, list[int]] = {}
    for h in hours:
        out.setdefault(h - h % DAY_S, []).append(h)
    return out


def _of_readable_days(top_rows: list, incomplete_days: list[int]):
    """``list[TopRow]`` without the day lists of ``incomplete_days``, when any is left."""
    kept = [t for t in top_rows if t.granularity != "day" or t.window_start_s not in incomplete_days]
    if kept:
        yield kept


def _archive_files(pipeline, archive_path: str, hours: list[int], progress_path: str | None, label: str = ""):
    """The archive's JSONL files of ``hours`` as ``fileio.ReadableFile``s (each noted in
    ``progress_path`` as it is read, when given); ``label`` prefixes the steps' names."""
    files = (
        pipeline
        | f"{label}archive hours" >> beam.Create(archive_patterns(archive_path, hours))
        | f"{label}match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        | f"{label}open" >> fileio.ReadMatches()
    )
    if progress_path:
        files = files | f"{label}progress" >> beam.ParDo(_NoteProgress(progress_path))
    return files


def _rows_in(enriched_rows, hours: frozenset):
    """``list[EnrichedRow]`` -> the same list holding only the rows of windows starting in
    ``hours`` (epoch s), when there are any."""
    kept = [e for e in enriched_rows if e.row.window_start_s - e.row.window_start_s % ARCHIVE_WINDOW_S in hours]
    if kept:
        yield kept


def _lines_by_hour(enriched_rows):
    """``list[EnrichedRow]`` -> ``(hour_s, [row_to_json line, ...])`` per hour of the window starts."""
    by_hour: dict[int, list] = {}
    for e in enriched_rows:
        w = e.row.window_start_s
        by_hour.setdefault(w - w % ARCHIVE_WINDOW_S, []).append(row_to_json(e))
    yield from by_hour.items()


if __name__ == "__main__":
    run_from_command_line(build_pipeline)
