"""The serving reader: ``get_stats`` answers from one long-lived async Bigtable data client
(``google.cloud.bigtable.data.BigtableDataClientAsync``, opened once per process; its channel
carries the reads, ``query.bigtable_rows``) with final windows cached in memory.

**Final.** A window (or bucket) ``[w, w + size)`` is *final* at wall clock ``now`` when

    w + size + allowed_lateness_s + final_margin_s <= now

(``schemas.closed_windows.final_before``: final is closed, the rule a batch recompute uses
too). The service cannot read the job's watermark; it takes it as the wall clock minus
``final_margin_s`` (default ``CLOSE_MARGIN_S``, 300 s: how far the watermark of a job that
keeps up trails the wall clock). A job with a backlog longer than the margin can still
change a window this rule calls final: raise the margin for such a job.

**Cache.** ``FinalRowCache``: per stored row (a UTC day of minute windows or a UTC month of
hour windows, ``query.stats.row_spans``), the row's windows as dense columns
(``query.windows.WindowArrays``) and ``through_s``: every window of the row starting before
it is final and held. A read of the windows ``[lo, hi)`` of a row takes ``[lo, through_s)``
from the cache and reads only ``[through_s, hi)`` from Bigtable (one ReadRows with a column
range: the open tail, or the rest of a row seen for the first time); the windows of that
read that are final by then extend ``through_s``. Least recently used rows are dropped past
``max_bytes`` (a minute row is 1,440 x 48 bytes = 69 KB of columns, an hour row <= 36 KB).
Final windows change only through a batch recompute (``viewcounts recompute``), which
overwrites them: after one, call ``invalidate`` (the service's ``POST
/v1/cache/invalidate``). A read that was under way during an invalidation does not put
what it read into the cache (``generation``).

**Open tail.** What is not final is read from Bigtable, at most ``tail_ttl_s`` (default 1 s)
before the answer: a row's tail read serves the requests for the same row for a time drawn
between ``tail_ttl_s / 2`` and ``tail_ttl_s`` (0: every request reads). The draw keeps rows
read together (a warm-up, a burst) from expiring together: measured, synchronized expiries
put a burst of reads in one moment and raised the p99 tenfold. Panes of an open window come every
``early_firing_s`` (30 s by default), so a 1 s old tail is as fresh as a new read but for a
pane landing in that second, and the reads per second are bounded by the rows being asked
for, not by the requests (measured: ``viewcounts.bench.http``). Every answer says when its
tail was read (``Answer.read_at``).

**Rows read.** The coarsest that answer (``query.stats.SOURCE``): minute rows only for minute
buckets; hour rows for hour, day and total (a 30-day query: two hour rows at most).

**Top lists** (``read_top``, ``query.top``): one cell per window. A final window's list is
cached (at most ``MAX_TOPS`` lists, least recently read dropped first; ``invalidate`` drops them
too); an open window's list serves the requests for the same window for a time drawn between
``tail_ttl_s / 2`` and ``tail_ttl_s``, as an open tail does.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from query.bigtable_rows import read_columns
from query.stats import RowSpan, StatsQuery, row_spans
from query.top import Top, TopQuery, decoded, top_answer
from query.windows import WindowArrays, decode_cells
from schemas import storage
from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
from schemas.closed_windows import CLOSE_MARGIN_S, final_before

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_TAIL_TTL_S = 1.0
MAX_TAILS = 10_000  # open tails kept for tail_ttl_s (least recently read dropped first)
MAX_TOPS = 4_096  # top lists kept (a list of TOP_K entries is a few KB)


@dataclass
class _Entry:
    windows: WindowArrays  # the whole row
    through_s: int  # windows starting before this are final and held


class FinalRowCache:
    """LRU of final windows by row key, bounded by the bytes of their columns."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.generation = 0  # bumped by every invalidation
        self._rows: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, key: bytes) -> _Entry | None:
        entry = self._rows.get(key)
        if entry is not None:
            self._rows.move_to_end(key)
        return entry

    def extend(self, key: bytes, span: RowSpan, fresh: WindowArrays, from_s: int, to_s: int, generation: int) -> None:
        """Hold ``fresh``'s windows ``[from_s, to_s)`` (final, read at ``generation``) for the row
        ``key``, if they continue what is held (no gap) and no invalidation came since."""
        if generation != self.generation or to_s <= from_s:
            return
        entry = self.get(key)
        if entry is None:
            if from_s != span.first_s:
                return
            entry = _Entry(WindowArrays.empty(span.first_s, span.end_s, fresh.size), span.first_s)
            self._rows[key] = entry
            self._bytes += entry.windows.nbytes
        if from_s <= entry.through_s < to_s:
            entry.windows.copy_range(fresh, entry.through_s, to_s)
            entry.through_s = to_s
        while self._bytes > self.max_bytes and self._rows:
            self._bytes -= self._rows.popitem(last=False)[1].windows.nbytes

    def invalidate(self) -> int:
        """Drop every held row; returns how many there were."""
        n = len(self._rows)
        self._rows.clear()
        self._bytes = 0
        self.generation += 1
        return n

    def info(self) -> dict:
        return {
            "rows": len(self._rows),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "generation": self.generation,
        }


@dataclass(frozen=True)
class _Tail:
    read_at: float
    expires_at: float
    windows: WindowArrays  # the row's windows [windows.first_s, windows.end_s) as read then


@dataclass(frozen=True)
class _TopEntry:
    items: list  # the window's whole stored list (query.top.decoded)
    opened_at_ms: int | None
    read_at: float
    expires_at: float  # inf for a final window


@dataclass(frozen=True)
class TopAnswer:
    """A top list (``query.top.Top``), whether its window is ``final`` at ``now_s``, and
    ``read_at``: the wall clock (epoch s) just before the read from Bigtable it came from."""

    top: Top
    final: bool
    now_s: float
    read_at: float


@dataclass(frozen=True)
class Answer:
    """The source windows of one query over ``[query.start_s, query.end_s)``; ``read_at``: the
    wall clock (epoch s) just before the oldest read of its non-final part from Bigtable, None
    when every window came from the final-window cache; ``now_s``: the clock the finality of
    this answer is judged at."""

    query: StatsQuery
    windows: WindowArrays
    now_s: float
    read_at: float | None


class CachedStatsReader:
    """Async reads of ``query.stats.StatsQuery`` windows with final rows cached (module
    docstring). ``open()`` inside the event loop that serves, ``close()`` at shutdown.
    ``clock``: the wall clock in epoch seconds (tests move it)."""

    def __init__(
        self,
        project: str = storage.DEFAULT_PROJECT,
        instance: str = storage.DEFAULT_INSTANCE,
        table: str = storage.DEFAULT_TABLE,
        allowed_lateness_s: int = DEFAULT_ALLOWED_LATENESS_S,
        final_margin_s: int = CLOSE_MARGIN_S,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        tail_ttl_s: float = DEFAULT_TAIL_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if allowed_lateness_s < 0 or final_margin_s < 0 or tail_ttl_s < 0:
            raise ValueError("allowed_lateness_s, final_margin_s and tail_ttl_s must be >= 0")
        self.project, self.instance, self.table_id = project, instance, table
        self.allowed_lateness_s, self.final_margin_s = allowed_lateness_s, final_margin_s
        self.cache = FinalRowCache(cache_bytes)
        self.tail_ttl_s = tail_ttl_s
        self._tails: OrderedDict[bytes, _Tail] = OrderedDict()
        self._tops: OrderedDict[tuple, _TopEntry] = OrderedDict()
        self.clock = clock
        self._client = None
        self._table_name = f"projects/{project}/instances/{instance}/tables/{table}"

    async def open(self) -> None:
        from google.cloud.bigtable.data import BigtableDataClientAsync

        self._client = BigtableDataClientAsync(project=self.project)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def final_before(self, size: int, now_s: float) -> int:
        return final_before(size, now_s, self.allowed_lateness_s, self.final_margin_s)

    def invalidate(self) -> int:
        """Drop every cached window, final or open tail (after a recompute); returns how many
        final rows were held."""
        self._tails.clear()
        self._tops.clear()
        return self.cache.invalidate()

    async def read(self, query: StatsQuery) -> Answer:
        """``read_many([query])[0]``."""
        return (await self.read_many([query]))[0]

    async def read_many(self, queries: list[StatsQuery]) -> list[Answer]:
        """The windows of each query (cached final part, fresh tail): one ReadRows request per
        distinct column range to read, all under way at once. Raises ``storage.CellError`` for a
        stored cell the pipeline cannot write and ``google.api_core.exceptions`` errors when the
        table cannot be read."""
        now = self.clock()
        generation = self.cache.generation
        answers, reads, pending = [], {}, []  # reads: (known, hi, size) -> {row key: span}
        for query in queries:
            size = storage.GRANULARITY_SECONDS[query.source]
            out = WindowArrays.empty(query.start_s, query.end_s, size)
            read_at = None
            for span in row_spans(query.video_id, query.event_type, query.source, query.start_s, query.end_s):
                lo, hi = max(query.start_s, span.first_s), min(query.end_s, span.end_s)
                entry = self.cache.get(span.key)
                known = span.first_s if entry is None else entry.through_s
                if entry is not None and lo < known:
                    out.copy_range(entry.windows, lo, min(known, hi))
                tail = self._tails.get(span.key)
                if hi <= known:
                    self.cache.hits += 1
                elif tail and now < tail.expires_at and tail.windows.first_s <= known and hi <= tail.windows.end_s:
                    out.copy_range(tail.windows, max(known, lo), hi)
                    read_at = min(read_at or now, tail.read_at)
                else:
                    self.cache.misses += 1
                    reads.setdefault((known, hi, size), {})[span.key] = span
                    pending.append((out, span.key, known, hi))
                    read_at = min(read_at or now, now)
            answers.append(Answer(query, out, now, read_at))
        if not reads:
            return answers
        # qualifiers sort as numbers from 1970 on; a range reaching before reads whole rows
        results = await asyncio.gather(
            *(
                read_columns(
                    self._client,
                    self._table_name,
                    list(spans),
                    storage.FAMILY,
                    *((storage.qualifier(known), storage.qualifier(hi)) if known >= 0 else (None, None)),
                )
                for (known, hi, _), spans in reads.items()
            )
        )
        fresh_rows = {}
        for ((known, hi, size), spans), rows in zip(reads.items(), results):
            final_to = self.final_before(size, now)
            for key, span in spans.items():
                fresh = WindowArrays.empty(known, hi, size)
                decode_cells(key, rows.get(key, ()), fresh, known, hi)
                self.cache.extend(key, span, fresh, known, min(final_to, hi), generation)
                fresh_rows[(key, known, hi)] = fresh
                if self.tail_ttl_s and generation == self.cache.generation:  # no invalidation while it was read
                    self._tails[key] = _Tail(now, now + self.tail_ttl_s * (0.5 + 0.5 * random.random()), fresh)
                    self._tails.move_to_end(key)
                    if len(self._tails) > MAX_TAILS:
                        self._tails.popitem(last=False)
        for out, key, known, hi in pending:
            out.copy_range(fresh_rows[(key, known, hi)], max(known, out.first_s), hi)
        return answers

    async def read_top(self, query: TopQuery) -> TopAnswer:
        """The top list of ``query``'s window: one cell read, or the cache (module docstring).
        Raises ``storage.CellError`` for a stored cell the pipeline does not write and
        ``google.api_core.exceptions`` errors when the table cannot be read."""
        now = self.clock()
        size = storage.TOP_GRANULARITY_SECONDS[query.granularity]
        final = query.window_start_s < self.final_before(size, now)
        window = (query.event_type, query.granularity, query.window_start_s)
        entry = self._tops.get(window)
        if entry is not None and now < entry.expires_at:
            self._tops.move_to_end(window)
            return TopAnswer(top_answer(query, entry.items, entry.opened_at_ms), final, now, entry.read_at)
        generation = self.cache.generation
        key, q = query.cell
        rows = await read_columns(
            self._client, self._table_name, [key], storage.FAMILY, q, storage.qualifier(query.window_start_s + 1)
        )
        cells = rows.get(key, ())
        items, opened_at_ms = decoded(*cells[0][1:]) if cells else decoded(None, None)
        ttl = math.inf if final else self.tail_ttl_s * (0.5 + 0.5 * random.random())
        if ttl and generation == self.cache.generation:  # no invalidation while it was read
            self._tops[window] = _TopEntry(items, opened_at_ms, now, now + ttl)
            self._tops.move_to_end(window)
            if len(self._tops) > MAX_TOPS:
                self._tops.popitem(last=False)
        return TopAnswer(top_answer(query, items, opened_at_ms), final, now, now)
