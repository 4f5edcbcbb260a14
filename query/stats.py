"""``get_stats(video_id, event_type, function, start, end, granularity)`` (docs/contract.md, "get_stats").

* ``function``: ``count``, ``sum``, ``avg``, ``min`` or ``max``.
* ``start``/``end``: instants (aware ``datetime`` or RFC 3339 string), half-open.
* ``granularity``: ``minute`` (from minute rows), ``hour``, ``day`` (UTC days, from hour
  rows) or ``total`` (the combined value alone, any hour-aligned range).

Returns ``Stats``: one ``Bucket`` per bucket start in range (empty buckets included, with
count 0 and null avg/min/max) and the combined ``Aggregate`` over the range; ``value`` is
``function`` of the combined aggregate. Averages are recombined from sums and value
counts. Raises ``QueryError`` for an unknown function or granularity, a reversed range,
a range not aligned to the granularity (never a silent rounding), an unknown time zone, a
``video_id`` that is not valid Unicode, or a ``video_id``/``event_type`` longer than any
event may carry (``parse_query``). A caller's time zone (``tz``) only changes bucket
labels: buckets are UTC instants.

Stored windows are read into dense columns and merged into buckets by ``query.windows``,
shared with the HTTP service's cached reader (``query.cached_reader``): the rows read are
the coarsest that answer (``SOURCE``: minute rows for minute buckets, hour rows for hour,
day and total), one row per UTC day of minutes or UTC month of hours (``row_spans``).

Stored cells are read with ``storage.decode_cell``: a cell the pipeline could not have
written (corrupted, or a sum stored as null by versions before the value bound) raises
``storage.CellError`` naming its row and column, never a ``TypeError`` halfway through a
sum. Every cell the pipeline writes decodes (``tests/test_hostile.py``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from query.windows import WindowArrays, bucket_columns, decode, decode_cells
from schemas import storage
from schemas.event import MAX_EVENT_TYPE_BYTES, MAX_VIDEO_ID_BYTES, BadTimestamp, parse_event_time
from schemas.storage import Aggregate

FUNCTIONS = ("count", "sum", "avg", "min", "max")
BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "total": 3600}
SOURCE = {"minute": "minute", "hour": "hour", "day": "hour", "total": "hour"}


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime  # in the caller's time zone (UTC by default)
    aggregate: Aggregate


@dataclass(frozen=True)
class Stats:
    video_id: str
    event_type: str
    function: str
    granularity: str
    start: dt.datetime
    end: dt.datetime
    buckets: list[Bucket]
    combined: Aggregate

    @property
    def value(self) -> float | int | None:
        return value_of(self.combined, self.function)

    def to_json(self) -> dict:
        agg = aggregate_json
        return {
            "video_id": self.video_id,
            "event_type": self.event_type,
            "function": self.function,
            "granularity": self.granularity,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "value": self.value,
            "combined": agg(self.combined),
            "buckets": [{"start": b.start.isoformat(), **agg(b.aggregate)} for b in self.buckets],
        }


def aggregate_json(a: Aggregate) -> dict:
    """``{"count", "value_count", "sum", "avg", "min", "max"}`` of an aggregate (null avg/min/max
    without values)."""
    return {"count": a.count, "value_count": a.value_count, "sum": a.sum, "avg": a.avg, "min": a.min, "max": a.max}


def value_of(a: Aggregate, function: str):
    if function == "count":
        return a.count
    if function == "sum":
        return a.sum
    return {"avg": a.avg, "min": a.min, "max": a.max}[function]


def _instant_s(value, name: str) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise QueryError(f"{name} must carry a time zone")
        us = (value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    else:
        try:
            us = parse_event_time(value)
        except BadTimestamp as exc:
            raise QueryError(f"{name}: {exc}") from None
    if us % 1_000_000:
        raise QueryError(f"{name} must be a whole second")
    return us // 1_000_000


@dataclass(frozen=True)
class StatsQuery:
    """A checked ``get_stats`` request: ``[start_s, end_s)`` in epoch seconds, aligned to the
    granularity; ``zone`` labels the buckets."""

    video_id: str
    event_type: str
    function: str
    granularity: str
    start_s: int
    end_s: int
    zone: dt.tzinfo

    @property
    def source(self) -> str:
        """The stored granularity that answers it: minute rows for minutes, hour rows otherwise."""
        return SOURCE[self.granularity]

    @property
    def bucket_size(self) -> int | None:
        """Seconds per bucket; None for ``total`` (no buckets)."""
        return None if self.granularity == "total" else BUCKET_SECONDS[self.granularity]

    def label(self, s: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(s, self.zone)


def zone_of(tz: str | None) -> dt.tzinfo:
    """The IANA time zone ``tz`` (UTC when None or empty); raises ``QueryError`` for an unknown one."""
    try:
        return ZoneInfo(tz) if tz else dt.timezone.utc
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise QueryError(f"unknown time zone {tz!r}") from None


# The instants a query may span: stored windows start at or after the epoch (10-digit epoch-second
# qualifiers), and every row and local label of a range ending by 9999-12-01 is a representable date.
EARLIEST_S, LATEST_S = 0, 253_399_622_400  # 1970-01-01T00:00:00Z, 9999-12-01T00:00:00Z


def check_in_calendar(start_s: int, end_s: int) -> None:
    """Raise ``QueryError`` unless ``[start_s, end_s)`` lies within ``[EARLIEST_S, LATEST_S]``."""
    if start_s < EARLIEST_S or end_s > LATEST_S:
        raise QueryError("ranges must lie between 1970-01-01T00:00:00Z and 9999-12-01T00:00:00Z")


def parse_query(
    video_id: str, event_type: str, function: str, start, end, granularity: str, tz: str | None = None
) -> StatsQuery:
    """Check a ``get_stats`` request (module docstring); raises ``QueryError`` with the message
    the CLI prints."""
    if function not in FUNCTIONS:
        raise QueryError(f"function must be one of {', '.join(FUNCTIONS)}, got {function!r}")
    if granularity not in BUCKET_SECONDS:
        raise QueryError(f"granularity must be one of {', '.join(BUCKET_SECONDS)}, got {granularity!r}")
    start_s, end_s = _instant_s(start, "start"), _instant_s(end, "end")
    if end_s < start_s:
        raise QueryError("end is before start")
    check_in_calendar(start_s, end_s)
    size = BUCKET_SECONDS[granularity]
    for name, s in (("start", start_s), ("end", end_s)):
        if s % size:
            unit = "hour" if granularity == "total" else granularity
            raise QueryError(f"{name} is not aligned to a UTC {unit} boundary; ranges are never rounded")
    zone = zone_of(tz)
    if not isinstance(video_id, str) or not isinstance(event_type, str):
        raise QueryError("video_id and event_type must be strings")
    try:
        video_id.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("video_id is not valid Unicode (lone surrogate)") from None
    for name, text, most in (
        ("video_id", video_id, MAX_VIDEO_ID_BYTES),
        ("event_type", event_type, MAX_EVENT_TYPE_BYTES),
    ):
        if len(text.encode("utf-8", "surrogatepass")) > most:
            raise QueryError(f"{name} is longer than {most} UTF-8 bytes: no stored aggregate can have it")
    return StatsQuery(video_id, event_type, function, granularity, start_s, end_s, zone)


@dataclass(frozen=True)
class RowSpan:
    """One stored row a read needs: its key and the windows it holds, ``[first_s, end_s)``."""

    key: bytes
    first_s: int
    end_s: int


def row_spans(video_id: str, event_type: str, granularity: str, start_s: int, end_s: int) -> list[RowSpan]:
    """The rows holding the ``granularity`` ('minute'/'hour') windows that start in ``[start_s,
    end_s)``, in time order: a UTC day of minutes or a UTC month of hours each."""
    size = storage.GRANULARITY_SECONDS[granularity]
    spans: list[RowSpan] = []
    s = start_s - start_s % size
    while s < end_s:
        first = _period_start(granularity, s)
        nxt = _period_start(granularity, first + 32 * 86400) if granularity == "hour" else first + 86400
        spans.append(RowSpan(storage.row_key(video_id, event_type, granularity, s), first, nxt))
        s = nxt
    return spans


def _period_start(granularity: str, s: int) -> int:
    if granularity == "minute":
        return s - s % 86400
    day = dt.datetime.fromtimestamp(s, dt.timezone.utc)
    return int(dt.datetime(day.year, day.month, 1, tzinfo=dt.timezone.utc).timestamp())


def stats_of(query: StatsQuery, windows: WindowArrays) -> Stats:
    """``Stats`` of ``query`` from its source windows over ``[query.start_s, query.end_s)``."""
    cols = bucket_columns(windows, query.bucket_size)
    buckets = [Bucket(query.label(b), a) for b, a in zip(cols.starts, cols.aggregates())]
    return Stats(
        query.video_id,
        query.event_type,
        query.function,
        query.granularity,
        query.label(query.start_s),
        query.label(query.end_s),
        buckets,
        cols.combined,
    )


class StatsReader:
    """Reads stored aggregates from one Bigtable table (honours ``BIGTABLE_EMULATOR_HOST``);
    one blocking read per call, no cache (``query.cached_reader`` serves with one)."""

    def __init__(
        self,
        project: str = storage.DEFAULT_PROJECT,
        instance: str = storage.DEFAULT_INSTANCE,
        table: str = storage.DEFAULT_TABLE,
    ) -> None:
        from google.cloud import bigtable

        self._client = bigtable.Client(project=project, admin=False)
        self._table = self._client.instance(instance).table(table)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> StatsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def all_cells(self):
        """Every stored aggregate (newest cell of each column) as ``storage.StoredCell``, top-list
        rows skipped; a full
        table scan, for reconciliation and tests, not for serving."""
        from google.cloud.bigtable.row_filters import CellsColumnLimitFilter

        for row in self._table.read_rows(filter_=CellsColumnLimitFilter(1)):
            if storage.is_top_row_key(row.row_key):  # top lists (query.top), not aggregates
                continue
            video_id, event_type, granularity, _ = storage.parse_row_key(row.row_key)
            for q, cells in sorted(row.cells.get(storage.FAMILY, {}).items()):
                agg, title, channel = decode(row.row_key, q, cells[0].value)
                yield storage.StoredCell(
                    video_id, event_type, granularity, storage.window_of_qualifier(q), agg, title, channel
                )

    def read_arrays(self, video_id: str, event_type: str, granularity: str, start_s: int, end_s: int) -> WindowArrays:
        """The ``granularity`` ('minute'/'hour') windows starting in ``[start_s, end_s)`` as dense
        columns from the window holding ``start_s``; one ReadRows request."""
        from google.cloud.bigtable.row_filters import CellsColumnLimitFilter
        from google.cloud.bigtable.row_set import RowSet

        size = storage.GRANULARITY_SECONDS[granularity]
        out = WindowArrays.empty(start_s - start_s % size, end_s, size)
        spans = row_spans(video_id, event_type, granularity, start_s, end_s)
        if not spans:
            return out
        row_set = RowSet()
        for span in spans:
            row_set.add_row_key(span.key)
        for row in self._table.read_rows(row_set=row_set, filter_=CellsColumnLimitFilter(1)):
            decode_cells(
                row.row_key,
                (
                    (q, cells[0].value, cells[0].timestamp_micros)
                    for q, cells in row.cells.get(storage.FAMILY, {}).items()
                ),
                out,
                start_s,
                end_s,
            )
        return out

    def read_windows(
        self, video_id: str, event_type: str, granularity: str, start_s: int, end_s: int
    ) -> dict[int, Aggregate]:
        """Stored aggregates of ``granularity`` ('minute'/'hour') windows starting in ``[start_s, end_s)``."""
        return self.read_arrays(video_id, event_type, granularity, start_s, end_s).aggregates()

    def get_stats(
        self, video_id: str, event_type: str, function: str, start, end, granularity: str, tz: str | None = None
    ) -> Stats:
        query = parse_query(video_id, event_type, function, start, end, granularity, tz)
        return stats_of(
            query, self.read_arrays(query.video_id, query.event_type, query.source, query.start_s, query.end_s)
        )


def get_stats(
    video_id: str,
    event_type: str,
    function: str,
    start,
    end,
    granularity: str,
    reader: StatsReader | None = None,
    tz: str | None = None,
) -> Stats:
    """Module-level form of ``StatsReader.get_stats``; opens a default reader when none is given."""
    if reader is not None:
        return reader.get_stats(video_id, event_type, function, start, end, granularity, tz)
    with StatsReader() as r:
        return r.get_stats(video_id, event_type, function, start, end, granularity, tz)
