"""``get_top(event_type, granularity, at, n)``: the top ``n`` videos of one window by ``count``
of ``event_type`` (docs/contract.md, "get_top"), ties broken by ``video_id`` ascending.

* ``granularity``: ``minute``, ``hour`` or ``day`` (UTC-aligned windows; a day is the rollup of
  its hours).
* ``at``: any instant inside the window, or its start (aware ``datetime`` or RFC 3339 string);
  the window is the one holding it.
* ``n``: ``1 <= n <= storage.TOP_K``.

One cell read, no scan: the pipeline stores each window's top ``TOP_K`` list in one cell
(``schemas.storage`` top rows, written by ``transforms.top``). Returns ``Top``: the window, the
first ``n`` entries, and ``opened_at_ms``: the wall clock (ms) at which the pipeline opened
this window's top list, decoded from the cell timestamp (``cell_timestamp_us(base, sum of the
list's counts)``): every list of the window was written at or after it; None without a
stored list (no event of the type in the window: an empty list). Raises ``QueryError`` for a
bad ``n``, an unknown granularity, an ``event_type`` that no event may carry, or a bad
instant; ``storage.CellError`` for a stored cell the pipeline does not write.

``TopReader`` reads with a blocking client (the CLI); the service reads through
``query.cached_reader.CachedStatsReader.read_top`` (final windows cached).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from query.stats import QueryError, StatsReader, check_in_calendar
from schemas import storage
from schemas.event import MAX_EVENT_TYPE_BYTES, US_PER_S, BadTimestamp, parse_event_time

GRANULARITIES = tuple(storage.TOP_GRANULARITY_SECONDS)
_N_TEXT = re.compile(r"\s*[0-9]{1,4}\s*")  # n as query text: longer is out of range anyway
_EVENT_TYPE = re.compile(
    f"[a-z0-9_]{{1,{MAX_EVENT_TYPE_BYTES}}}"
)  # docs/contract.md, "Input events" (ASCII: chars are bytes)


@dataclass(frozen=True)
class TopQuery:
    """A checked ``get_top`` request: the window ``[window_start_s, window_end_s)``, epoch s."""

    event_type: str
    granularity: str
    window_start_s: int
    n: int

    @property
    def window_end_s(self) -> int:
        return self.window_start_s + storage.TOP_GRANULARITY_SECONDS[self.granularity]

    @property
    def cell(self) -> tuple[bytes, bytes]:
        """``(row key, qualifier)`` of the window's top list."""
        return (
            storage.top_row_key(self.event_type, self.granularity, self.window_start_s),
            storage.qualifier(self.window_start_s),
        )


def _at_us(at) -> int:
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise QueryError("at must carry a time zone")
        return (at - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    try:
        return parse_event_time(at)
    except BadTimestamp as exc:
        raise QueryError(f"at: {exc}") from None


def parse_top(event_type: str, granularity: str, at, n) -> TopQuery:
    """Check a ``get_top`` request (module docstring); raises ``QueryError`` with the message the
    CLI prints and the service answers."""
    if granularity not in storage.TOP_GRANULARITY_SECONDS:
        raise QueryError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if isinstance(n, str):  # ASCII digits only: int() also takes '1_0', '٥' and 4,300-digit limits
        if not _N_TEXT.fullmatch(n):
            raise QueryError(f"n must be an integer from 1 to {storage.TOP_K}, got {n[:40]!r}")
        n = int(n)
    if type(n) is not int or not 1 <= n <= storage.TOP_K:
        raise QueryError(f"n must be an integer from 1 to {storage.TOP_K}, got {n!r}")
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        raise QueryError(f"event_type must be 1..{MAX_EVENT_TYPE_BYTES} characters of [a-z0-9_], got {event_type!r}")
    size = storage.TOP_GRANULARITY_SECONDS[granularity]
    at_s = _at_us(at) // US_PER_S
    start_s = at_s - at_s % size
    check_in_calendar(start_s, start_s + size)
    return TopQuery(event_type, granularity, start_s, n)


@dataclass(frozen=True)
class Top:
    """A ``get_top`` answer: ``items`` ``[(video_id, count), ...]``, at most ``query.n``."""

    query: TopQuery
    items: list[tuple[str, int]]
    opened_at_ms: int | None

    def to_json(self, final: bool) -> dict:
        """The ``/v1/top`` answer (``query.service``); ``final``: no pane of the window can come any more."""
        q = self.query
        return {
            "type": q.event_type,
            "granularity": q.granularity,
            "window_start": _instant(q.window_start_s),
            "window_end": _instant(q.window_end_s),
            "n": q.n,
            "items": [{"video_id": v, "count": c} for v, c in self.items],
            "newest_pane": None if self.opened_at_ms is None else _instant(self.opened_at_ms / 1000),
            "final": final,
        }


def _instant(s: float) -> str:
    return dt.datetime.fromtimestamp(s, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def decoded(value: bytes | None, timestamp_us: int | None) -> tuple[list[tuple[str, int]], int | None]:
    """``(items, opened_at_ms)`` of a stored top cell (``storage.decode_top``), ``([], None)`` for none."""
    if value is None:
        return [], None
    items = storage.decode_top(value)
    return items, timestamp_us // 1000 - sum(c for _, c in items)


def top_answer(query: TopQuery, items: list[tuple[str, int]], opened_at_ms: int | None) -> Top:
    """The ``Top`` of ``query`` from the window's stored list (``decoded``)."""
    return Top(query, items[: query.n], opened_at_ms)


class TopReader(StatsReader):
    """``query.stats.StatsReader`` (one Bigtable table, ``BIGTABLE_EMULATOR_HOST`` honoured) that
    also reads top lists: one blocking read of one cell per ``get_top``."""

    def get_top(self, event_type: str, granularity: str, at, n: int = 10) -> Top:
        from google.cloud.bigtable import row_filters as f

        query = parse_top(event_type, granularity, at, n)
        key, q = query.cell
        row = self._table.read_row(
            key,
            filter_=f.RowFilterChain(
                [f.ColumnRangeFilter(storage.FAMILY, q, q, inclusive_end=True), f.CellsColumnLimitFilter(1)]
            ),
        )
        cells = [] if row is None else row.cells.get(storage.FAMILY, {}).get(q, [])
        cell = cells[0] if cells else None
        return top_answer(query, *decoded(cell and cell.value, cell and cell.timestamp_micros))


def get_top(event_type: str, granularity: str, at, n: int = 10, reader: TopReader | None = None) -> Top:
    """Module-level form of ``TopReader.get_top``; opens a default reader when none is given."""
    if reader is not None:
        return reader.get_top(event_type, granularity, at, n)
    with TopReader() as r:
        return r.get_top(event_type, granularity, at, n)
