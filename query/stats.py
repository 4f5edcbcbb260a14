"""``get_stats(video_id, event_type, function, start, end, granularity)`` (SPEC.md section 6).

* ``function``: ``count``, ``sum``, ``avg``, ``min`` or ``max``.
* ``start``/``end``: instants (aware ``datetime`` or RFC 3339 string), half-open.
* ``granularity``: ``minute`` (from minute rows), ``hour``, ``day`` (UTC days, from hour
  rows) or ``total`` (the combined value alone, any hour-aligned range).

Returns ``Stats``: one ``Bucket`` per bucket start in range (empty buckets included, with
count 0 and null avg/min/max) and the combined ``Aggregate`` over the range; ``value`` is
``function`` of the combined aggregate. Averages are recombined from sums and value
counts. Raises ``QueryError`` for an unknown function or granularity, a reversed range,
a range not aligned to the granularity (never a silent rounding), an unknown time zone or a
``video_id`` that is not valid Unicode. A caller's time zone (``tz``) only changes bucket
labels: buckets are UTC instants.

Stored cells are read with ``storage.decode_cell``: a cell the pipeline could not have
written (corrupted, or a sum stored as null by versions before the value bound) raises
``storage.CellError`` naming its row and column, never a ``TypeError`` halfway through a
sum. Every cell the pipeline writes decodes (``tests/test_hostile.py``).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas import storage
from schemas.event import BadTimestamp, parse_event_time
from schemas.storage import EMPTY, Aggregate, merge

FUNCTIONS = ("count", "sum", "avg", "min", "max")
BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "total": 3600}
_SOURCE = {"minute": "minute", "hour": "hour", "day": "hour", "total": "hour"}


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
        def agg(a: Aggregate) -> dict:
            return {"count": a.count, "value_count": a.value_count, "sum": a.sum,
                    "avg": a.avg, "min": a.min, "max": a.max}
        return {"video_id": self.video_id, "event_type": self.event_type, "function": self.function,
                "granularity": self.granularity, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "value": self.value, "combined": agg(self.combined),
                "buckets": [{"start": b.start.isoformat(), **agg(b.aggregate)} for b in self.buckets]}


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


class StatsReader:
    """Reads stored aggregates from one Bigtable table (honours ``BIGTABLE_EMULATOR_HOST``)."""

    def __init__(self, project: str = storage.DEFAULT_PROJECT, instance: str = storage.DEFAULT_INSTANCE,
                 table: str = storage.DEFAULT_TABLE) -> None:
        from google.cloud import bigtable

        self._client = bigtable.Client(project=project, admin=False)
        self._table = self._client.instance(instance).table(table)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "StatsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def all_cells(self):
        """Every stored aggregate (newest cell of each column) as ``storage.StoredCell``; a full
        table scan, for reconciliation and tests, not for serving."""
        from google.cloud.bigtable.row_filters import CellsColumnLimitFilter

        for row in self._table.read_rows(filter_=CellsColumnLimitFilter(1)):
            video_id, event_type, granularity, _ = storage.parse_row_key(row.row_key)
            for q, cells in sorted(row.cells.get(storage.FAMILY, {}).items()):
                agg, title, channel = _decode(row.row_key, q, cells[0].value)
                yield storage.StoredCell(video_id, event_type, granularity, storage.window_of_qualifier(q),
                                         agg, title, channel)

    def read_windows(self, video_id: str, event_type: str, granularity: str,
                     start_s: int, end_s: int) -> dict[int, Aggregate]:
        """Stored aggregates of ``granularity`` ('minute'/'hour') windows starting in ``[start_s, end_s)``."""
        from google.cloud.bigtable.row_filters import CellsColumnLimitFilter
        from google.cloud.bigtable.row_set import RowSet

        size = storage.GRANULARITY_SECONDS[granularity]
        keys = []
        first_s = start_s - start_s % size
        # a row holds a UTC day (minutes) or month (hours): one key per day covers every row
        for day_s in range(first_s - first_s % 86400, end_s, 86400):
            k = storage.row_key(video_id, event_type, granularity, max(day_s, first_s))
            if not keys or keys[-1] != k:
                keys.append(k)
        if not keys:
            return {}
        row_set = RowSet()
        for k in keys:
            row_set.add_row_key(k)
        out: dict[int, Aggregate] = {}
        for row in self._table.read_rows(row_set=row_set, filter_=CellsColumnLimitFilter(1)):
            for q, cells in row.cells.get(storage.FAMILY, {}).items():
                w = storage.window_of_qualifier(q)
                if start_s <= w < end_s:
                    out[w] = _decode(row.row_key, q, cells[0].value)[0]
        return out

    def get_stats(self, video_id: str, event_type: str, function: str, start, end,
                  granularity: str, tz: str | None = None) -> Stats:
        if function not in FUNCTIONS:
            raise QueryError(f"function must be one of {', '.join(FUNCTIONS)}, got {function!r}")
        if granularity not in BUCKET_SECONDS:
            raise QueryError(f"granularity must be one of {', '.join(BUCKET_SECONDS)}, got {granularity!r}")
        start_s, end_s = _instant_s(start, "start"), _instant_s(end, "end")
        if end_s < start_s:
            raise QueryError("end is before start")
        size = BUCKET_SECONDS[granularity]
        for name, s in (("start", start_s), ("end", end_s)):
            if s % size:
                unit = "hour" if granularity == "total" else granularity
                raise QueryError(f"{name} is not aligned to a UTC {unit} boundary; ranges are never rounded")
        try:
            zone = ZoneInfo(tz) if tz else dt.timezone.utc
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise QueryError(f"unknown time zone {tz!r}") from None
        if not isinstance(video_id, str) or not isinstance(event_type, str):
            raise QueryError("video_id and event_type must be strings")
        try:
            video_id.encode("utf-8")
        except UnicodeEncodeError:
            raise QueryError("video_id is not valid Unicode (lone surrogate)") from None
        windows = self.read_windows(video_id, event_type, _SOURCE[granularity], start_s, end_s)
        combined = EMPTY
        for a in windows.values():
            combined = merge(combined, a)
        buckets = []
        if granularity != "total":
            src = storage.GRANULARITY_SECONDS[_SOURCE[granularity]]
            for b in range(start_s, end_s, size):
                agg = EMPTY
                for w in range(b, b + size, src):
                    if w in windows:
                        agg = merge(agg, windows[w])
                buckets.append(Bucket(dt.datetime.fromtimestamp(b, zone), agg))
        return Stats(video_id, event_type, function, granularity,
                     dt.datetime.fromtimestamp(start_s, zone), dt.datetime.fromtimestamp(end_s, zone),
                     buckets, combined)


def _decode(row_key: bytes, q: bytes, value: bytes):
    try:
        return storage.decode_cell(value)
    except storage.CellError as exc:
        raise storage.CellError(f"row {row_key!r} column {q!r}: {exc}") from None


def get_stats(video_id: str, event_type: str, function: str, start, end, granularity: str,
              reader: StatsReader | None = None, tz: str | None = None) -> Stats:
    """Module-level form of ``StatsReader.get_stats``; opens a default reader when none is given."""
    if reader is not None:
        return reader.get_stats(video_id, event_type, function, start, end, granularity, tz)
    with StatsReader() as r:
        return r.get_stats(video_id, event_type, function, start, end, granularity, tz)
