"""The serving reader: ``get_stats`` answers from one long-lived async Bigtable data client
(``google.cloud.bigtable.data.BigtableDataClientAsync``) with final windows cached in memory.

**Final.** A window (or bucket) ``[w, w + size)`` is *final* at wall clock ``now`` when

    w + size + allowed_lateness_s + final_margin_s <= now

(``final_before``). The pipeline accepts an event only while the watermark is within
``allowed_lateness_s`` of it (SPEC.md section 2), so once the watermark passes the window's
end plus the lateness no pane of it fires again. The service cannot read the job's
watermark; it takes it as the wall clock minus ``final_margin_s`` (default 300 s, the
assumption ``viewcounts recompute`` makes of a job that keeps up,
``pipelines.restarts.CLOSE_MARGIN_S``). A job with a backlog longer than the margin can still
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

**Rows read.** The coarsest that answer (``query.stats.SOURCE``): minute rows only for minute
buckets; hour rows for hour, day and total (a 30-day query: two hour rows at most).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from query.stats import RowSpan, StatsQuery, row_spans
from query.windows import WindowArrays, decode_cells
from schemas import storage

DEFAULT_ALLOWED_LATENESS_S = 600  # the streaming job's default (pipelines/options.py)
DEFAULT_FINAL_MARGIN_S = 300
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


def final_before(size: int, now_s: float, allowed_lateness_s: int, final_margin_s: int) -> int:
    """The first start (epoch s, a multiple of ``size``) of a window of ``size`` s that is not
    final at ``now_s``: every window starting before it is (module docstring)."""
    t = math.floor(now_s) - allowed_lateness_s - final_margin_s
    return (t // size) * size


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

    def extend(self, key: bytes, span: RowSpan, fresh: WindowArrays, from_s: int, to_s: int,
               generation: int) -> None:
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
        return {"rows": len(self._rows), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "generation": self.generation}


@dataclass(frozen=True)
class Answer:
    """The source windows of one query over ``[query.start_s, query.end_s)``; ``read_at``: the
    wall clock (epoch s) just before the non-final part was read from Bigtable, None when every
    window came from the cache; ``now_s``: the clock the finality of this answer is judged at."""

    query: StatsQuery
    windows: WindowArrays
    now_s: float
    read_at: float | None


class CachedStatsReader:
    """Async reads of ``query.stats.StatsQuery`` windows with final rows cached (module
    docstring). ``open()`` inside the event loop that serves, ``close()`` at shutdown.
    ``clock``: the wall clock in epoch seconds (tests move it)."""

    def __init__(self, project: str = storage.DEFAULT_PROJECT, instance: str = storage.DEFAULT_INSTANCE,
                 table: str = storage.DEFAULT_TABLE, allowed_lateness_s: int = DEFAULT_ALLOWED_LATENESS_S,
                 final_margin_s: int = DEFAULT_FINAL_MARGIN_S, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        if allowed_lateness_s < 0 or final_margin_s < 0:
            raise ValueError("allowed_lateness_s and final_margin_s must be >= 0")
        self.project, self.instance, self.table_id = project, instance, table
        self.allowed_lateness_s, self.final_margin_s = allowed_lateness_s, final_margin_s
        self.cache = FinalRowCache(cache_bytes)
        self.clock = clock
        self._client = self._table = None

    async def open(self) -> None:
        from google.cloud.bigtable.data import BigtableDataClientAsync

        self._client = BigtableDataClientAsync(project=self.project)
        self._table = self._client.get_table(self.instance, self.table_id)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = self._table = None

    def final_before(self, size: int, now_s: float) -> int:
        return final_before(size, now_s, self.allowed_lateness_s, self.final_margin_s)

    async def read(self, query: StatsQuery) -> Answer:
        """The windows of ``query`` (cached final part, fresh tail). Raises
        ``storage.CellError`` for a stored cell the pipeline cannot write and the Bigtable
        client's errors (``google.api_core.exceptions``) when the table cannot be read."""
        now = self.clock()
        size = storage.GRANULARITY_SECONDS[query.source]
        final_to = self.final_before(size, now)
        out = WindowArrays.empty(query.start_s, query.end_s, size)
        generation = self.cache.generation
        reads = []
        for span in row_spans(query.video_id, query.event_type, query.source, query.start_s, query.end_s):
            lo, hi = max(query.start_s, span.first_s), min(query.end_s, span.end_s)
            entry = self.cache.get(span.key)
            known = span.first_s if entry is None else entry.through_s
            if entry is not None and lo < known:
                out.copy_range(entry.windows, lo, min(known, hi))
            if hi <= known:
                self.cache.hits += 1
            else:
                self.cache.misses += 1
                reads.append((span, known, hi))
        if not reads:
            return Answer(query, out, now, None)
        rows = await asyncio.gather(*(self._read_row(span.key, known, hi) for span, known, hi in reads))
        for (span, known, hi), cells in zip(reads, rows):
            fresh = WindowArrays.empty(known, hi, size)
            decode_cells(span.key, cells, fresh, known, hi)
            self.cache.extend(span.key, span, fresh, known, min(final_to, hi), generation)
            out.copy_range(fresh, max(known, query.start_s), hi)
        return Answer(query, out, now, now)

    async def _read_row(self, key: bytes, lo_s: int, hi_s: int) -> list[tuple[bytes, bytes, int]]:
        """``(qualifier, value, timestamp_us)`` of the newest cell of the row's columns for the
        windows ``[lo_s, hi_s)`` (a column range; the whole row for windows before 1970)."""
        from google.cloud.bigtable.data import ReadRowsQuery
        from google.cloud.bigtable.data.row_filters import (CellsColumnLimitFilter, ColumnRangeFilter,
                                                            RowFilterChain)

        row_filter = CellsColumnLimitFilter(1)
        if lo_s >= 0:
            row_filter = RowFilterChain([ColumnRangeFilter(storage.FAMILY, storage.qualifier(lo_s),
                                                           storage.qualifier(hi_s), inclusive_end=False),
                                         row_filter])
        rows = await self._table.read_rows(ReadRowsQuery(row_keys=[key], row_filter=row_filter))
        return [(c.qualifier, c.value, c.timestamp_micros) for row in rows for c in row.cells
                if c.family == storage.FAMILY]
