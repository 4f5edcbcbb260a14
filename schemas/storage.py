"""Bigtable storage layout for stored aggregates and top lists (docs/contract.md, "Bigtable rows";
the reasons in docs/decisions.md, "Storage").

Row key (UTF-8)::

    <escaped video_id> '#' <event_type> '#' <granularity letter> '#' <period>

* ``video_id`` is escaped losslessly: ``%`` -> ``%25`` and ``#`` -> ``%23``, so the key
  splits unambiguously on ``#`` and no two entities can share a row (ids are compared byte for
  byte, docs/contract.md, "Input events").
  ``event_type`` is ``[a-z0-9_]+`` and needs no escaping.
* granularity ``m`` (minute) rows hold one UTC day, period ``YYYYMMDD``: a one-day
  minute query is one row read; ``h`` (hour) rows hold one UTC month, period ``YYYYMM``:
  a 30-day hour query is at most two rows. Keys start with the entity, never with time,
  so writes spread over tablets instead of hot-spotting the present (Bigtable schema
  design guide: "avoid timestamps at the start of row keys").
* Longest key: 3 * 256 + 1 + 64 + 3 + 8 = 844 bytes, inside Bigtable's 4 KiB limit.

Column family ``FAMILY`` (``a``), one column per window; the qualifier is the window
start as 10 ASCII digits of epoch seconds, so qualifiers sort in time order.

Cell value: compact JSON ``{"count", "value_count", "sum", "min", "max", "title",
"channel"}`` (``min``/``max`` null without values; ``avg`` is derived on read as
``sum / value_count``). One cell per window: one pane is one ``SetCell`` mutation.

Cell timestamp (``cell_timestamp_us``): the order of a window's panes, from pipeline state
(docs/contract.md, "Aggregates": overwrites), never from the clock of the worker that fires a pane. It is
``(window base ms + the aggregate's count) * 1000`` µs, where the window base is the wall
clock (whole ms) when the window's state was first created, kept in that state: every worker
and every job restored from a checkpoint of it uses the same base. Panes accumulate, so a
later pane has a count at least as large as any earlier pane of the same window (equal only
when it holds the same events), and readers take the newest cell: a later pane wins whatever
order the writes land in and whichever worker fired it. Two panes of a window with the same
count hold the same events, so they tie with the same aggregate and differ at most in
``title``/``channel`` (metadata refreshed after the window's last event; either is what
docs/contract.md, "Aggregates", allows: the newest snapshot the job had when the pane fired), and Bigtable keeps whichever write of the tie lands last. A pane fired again after a restore
from a checkpoint holds the events of the one it replaces plus those redelivered since, so it
never loses to a pane of the failed attempt. The base keeps cells near write time for the
age part of the GC rule. A batch recompute creates its windows when it runs, so its cells win
over the streaming panes of windows closed before it. Re-sending the same mutation (a retry)
rewrites the same cell: writes are idempotent overwrites.

Top lists (docs/contract.md, "Aggregates": the top videos by count of each event type and
minute, hour and UTC day window), each answered by one cell read, no scan. Row key (UTF-8)::

    '#top#' <event_type> '#' <granularity letter> '#' <period>

letters and periods as above for ``m`` (a UTC day of minute windows, ``YYYYMMDD``) and ``h``
(a UTC month of hour windows, ``YYYYMM``), plus ``d``: a UTC year of day windows, period
``YYYY`` (a day is a rollup of its hours). An escaped ``video_id`` never starts
with ``#`` (``#`` is escaped, and ids are 1..256 bytes), so no entity row shares a key with a
top row, nor is one's prefix (``is_top_row_key``). Column family ``a``, qualifier the window
start as for aggregates. Value: compact JSON ``[[video_id, count], ...]``, at most ``TOP_K``
pairs, ranked by ``count`` descending then ``video_id`` ascending (``top_rank``). Cell
timestamp: ``cell_timestamp_us(window base ms, sum of the list's counts)``, the base kept in
the pipeline's state as for aggregates: counts only grow, so a later list of a window has a
sum at least as large, and lists with equal sums hold the same count at every rank (they can
differ only in which of equally counted videos they name). A batch recompute's base is its
wall clock, so its lists win over streaming lists of windows closed before it.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import NamedTuple

import orjson

FAMILY = "a"
DEFAULT_TABLE = "viewcounts"
DEFAULT_INSTANCE = "viewcounts"
DEFAULT_PROJECT = "viewcounts-local"
GRANULARITY_SECONDS = {"minute": 60, "hour": 3600}
_LETTER = {"minute": "m", "hour": "h"}
_GRANULARITY_OF_LETTER = {v: k for k, v in _LETTER.items()}
MAX_KEY_BYTES = 4096
MAX_MUTATIONS_PER_REQUEST = 100_000


class Aggregate(NamedTuple):
    """Running aggregate of one (video, type, window): ``min``/``max`` None without values.

    Every number in it is finite: the pipeline accepts only values with absolute value at
    most 1e15 (``schemas.event.MAX_ABS_VALUE``), so the sum of any number of them stays far
    inside the float range (it would take more than 1e293 events to overflow), whatever the
    order of the additions (``merge``)."""

    count: int
    value_count: int
    sum: float
    min: float | None
    max: float | None

    @property
    def avg(self) -> float | None:
        return self.sum / self.value_count if self.value_count else None


EMPTY = Aggregate(0, 0, 0.0, None, None)


def merge(a: Aggregate, b: Aggregate) -> Aggregate:
    """Combine two aggregates into a new one (inputs are never mutated)."""
    if not b.count:
        return a
    if not a.count:
        return b
    return Aggregate(
        a.count + b.count,
        a.value_count + b.value_count,
        a.sum + b.sum,
        b.min if a.min is None else a.min if b.min is None else min(a.min, b.min),
        b.max if a.max is None else a.max if b.max is None else max(a.max, b.max),
    )


@dataclass(frozen=True)
class StoredCell:
    """One decoded cell: the aggregate of a window plus its enrichment."""

    video_id: str
    event_type: str
    granularity: str
    window_start_s: int
    aggregate: Aggregate
    title: str | None
    channel: str | None


def escape_entity(video_id: str) -> str:
    return video_id.replace("%", "%25").replace("#", "%23")


def unescape_entity(escaped: str) -> str:
    return escaped.replace("%23", "#").replace("%25", "%")


def period_of(granularity: str, window_start_s: int) -> str:
    """The row period that holds a window: ``YYYYMMDD`` for minutes, ``YYYYMM`` for hours."""
    day = dt.datetime.fromtimestamp(window_start_s, dt.timezone.utc)
    return day.strftime("%Y%m%d" if granularity == "minute" else "%Y%m")


def row_key(video_id: str, event_type: str, granularity: str, window_start_s: int) -> bytes:
    """The row key of the row holding this window. Raises ``KeyError`` for a bad granularity."""
    key = "#".join((escape_entity(video_id), event_type, _LETTER[granularity], period_of(granularity, window_start_s)))
    return key.encode("utf-8")


def parse_row_key(key: bytes) -> tuple[str, str, str, str]:
    """``(video_id, event_type, granularity, period)`` of a row key."""
    escaped, event_type, letter, period = key.decode("utf-8").split("#")
    return unescape_entity(escaped), event_type, _GRANULARITY_OF_LETTER[letter], period


def qualifier(window_start_s: int) -> bytes:
    return b"%010d" % window_start_s if window_start_s >= 0 else b"-%09d" % -window_start_s


def window_of_qualifier(q: bytes) -> int:
    return int(q)


class CellError(ValueError):
    """A cell value that is not one ``encode_cell`` writes (``decode_cell``), or an aggregate
    or enrichment that would not read back as itself (``encode_cell``)."""


def _finite_number(x) -> bool:
    return (type(x) is float or type(x) is int) and x - x == 0  # inf - inf and nan - nan are nan


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def cell_problem(agg: Aggregate, title, channel) -> str | None:
    """Why ``(agg, title, channel)`` is not a cell the pipeline writes, or None: integer
    counts with ``0 <= value_count <= count``, a finite sum, ``min``/``max`` null without
    values and finite with ``min <= max`` otherwise, ``title``/``channel`` strings or null."""
    count, value_count, total, lo, hi = agg
    if type(count) is not int or type(value_count) is not int or not 0 <= value_count <= count:
        return (
            f"count {_short(count)} and value_count {_short(value_count)} must be integers with "
            f"0 <= value_count <= count"
        )
    if not _finite_number(total):
        return f"sum {_short(total)} is not a finite number"
    if value_count == 0:
        if lo is not None or hi is not None:
            return f"min {_short(lo)} and max {_short(hi)} must be null without values"
    elif not (_finite_number(lo) and _finite_number(hi) and lo <= hi):
        return f"min {_short(lo)} and max {_short(hi)} must be finite numbers with min <= max"
    for name, text in (("title", title), ("channel", channel)):
        if text is not None and type(text) is not str:
            return f"{name} {_short(text)} must be a string or null"
    return None


def encode_cell(agg: Aggregate, title: str | None, channel: str | None) -> bytes:
    """The cell value of one window (module docstring). Raises ``CellError`` for what would
    not read back as itself (``cell_problem``: a sum, min or max that is not finite would be
    written as null; a title with a lone surrogate cannot be UTF-8). The pipeline builds no
    such aggregate: its values are bounded, so its sums are finite (``Aggregate``)."""
    problem = cell_problem(agg, title, channel)
    if problem is not None:
        raise CellError(f"refusing to store a cell: {problem}")
    try:
        return orjson.dumps(
            {
                "count": agg.count,
                "value_count": agg.value_count,
                "sum": agg.sum,
                "min": agg.min,
                "max": agg.max,
                "title": title,
                "channel": channel,
            }
        )
    except orjson.JSONEncodeError as exc:  # lone surrogates in title or channel
        raise CellError(f"refusing to store a cell: {exc}") from None


def decode_cell(value: bytes) -> tuple[Aggregate, str | None, str | None]:
    """``(aggregate, title, channel)`` of a stored cell value. Raises ``CellError``, and no
    other exception, for any bytes that are not a cell ``encode_cell`` writes: not JSON, a
    field missing or of the wrong type, a number that is not finite (a sum stored as null by
    versions before the value bound), ``min > max``..."""
    try:
        d = orjson.loads(value)
        agg = Aggregate(d["count"], d["value_count"], d["sum"], d["min"], d["max"])
        title, channel = d["title"], d["channel"]
    except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise CellError(f"not a stored cell: {type(exc).__name__}: {str(exc)[:200]}") from None
    problem = cell_problem(agg, title, channel)
    if problem is not None:
        raise CellError(f"not a stored cell: {problem}")
    return agg, title, channel


def wall_clock_ms() -> int:
    """The wall clock in whole milliseconds: the base of a new window's cell timestamps."""
    return time.time_ns() // 1_000_000


def cell_timestamp_us(window_base_ms: int, count: int) -> int:
    """A pane's cell timestamp in µs (a multiple of 1000, as Bigtable requires): the window's
    base (``wall_clock_ms`` when its state was created) plus the pane's ``count``. Bigtable
    timestamps are int64 µs: any count below 9e15 minus the base fits."""
    return (window_base_ms + count) * 1000


TOP_K = 100  # entries kept in a top list (``get_top`` answers n <= TOP_K)
TOP_GRANULARITY_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
TOP_ROW_PREFIX = b"#top#"
_TOP_LETTER = {"minute": "m", "hour": "h", "day": "d"}
_TOP_PERIOD_FORMAT = {"minute": "%Y%m%d", "hour": "%Y%m", "day": "%Y"}


def top_rank(item: tuple[str, int]) -> tuple[int, str]:
    """Sort key of a ``(video_id, count)`` pair in a top list: higher counts first, then ids ascending."""
    return -item[1], item[0]


def top_row_key(event_type: str, granularity: str, window_start_s: int) -> bytes:
    """The row holding the top lists of ``granularity`` ('minute'/'hour'/'day') windows of
    ``event_type`` around ``window_start_s`` (module docstring). Raises ``KeyError`` for a bad
    granularity."""
    period = dt.datetime.fromtimestamp(window_start_s, dt.timezone.utc).strftime(_TOP_PERIOD_FORMAT[granularity])
    return f"#top#{event_type}#{_TOP_LETTER[granularity]}#{period}".encode()


def is_top_row_key(key: bytes) -> bool:
    """True for a top-list row, False for an entity's aggregate row."""
    return key.startswith(TOP_ROW_PREFIX)


def _top_problem(items) -> str | None:
    if not isinstance(items, (list, tuple)) or len(items) > TOP_K:
        return f"a top list is a list of at most {TOP_K} pairs, got {_short(items)}"
    for item in items:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or type(item[0]) is not str
            or type(item[1]) is not int
            or item[1] < 1
        ):
            return f"a top list entry is [video_id, count >= 1], got {_short(item)}"
    if len({v for v, _ in items}) != len(items):
        return "a top list names a video twice"
    if list(items) != sorted(items, key=top_rank):
        return "a top list must be ranked by count descending, then video_id ascending"
    return None


def encode_top(items) -> bytes:
    """The cell value of a top list: ``items`` ``[(video_id, count), ...]`` ranked by ``top_rank``,
    at most ``TOP_K``, counts >= 1, each video once. Raises ``CellError`` otherwise (or for an id
    that cannot be UTF-8)."""
    problem = _top_problem(items)
    if problem is not None:
        raise CellError(f"refusing to store a top list: {problem}")
    try:
        return orjson.dumps([[v, c] for v, c in items])
    except orjson.JSONEncodeError as exc:
        raise CellError(f"refusing to store a top list: {exc}") from None


def decode_top(value: bytes) -> list[tuple[str, int]]:
    """The ``[(video_id, count), ...]`` of a top cell; raises ``CellError``, and no other
    exception, for bytes ``encode_top`` does not write."""
    try:
        items = orjson.loads(value)
    except ValueError as exc:
        raise CellError(f"not a stored top list: {type(exc).__name__}: {str(exc)[:200]}") from None
    problem = _top_problem(items)
    if problem is not None:
        raise CellError(f"not a stored top list: {problem}")
    return [(v, c) for v, c in items]
