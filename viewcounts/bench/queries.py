"""Query latency of the public query API (``query.stats.StatsReader.get_stats``) on the real
Bigtable emulator.

``measure_queries(rounds=200) -> dict``:

1. starts a Bigtable emulator (``viewcounts.local.emulators.bigtable_emulator``, stopped by PID at
   the end) and creates the table as the product does (``viewcounts.local.provision.create_table``);
2. stores realistic aggregates through the product's own write path, the sink DoFn
   ``transforms.bigtable_sink.WriteAggregates`` (``setup``, then its ``_write`` step: the
   same row keys, qualifiers, cell encoding, cell timestamps and request size as the
   streaming job; see ``store_cells``): for ``neighbours`` videos x 3 event types, the 1,440
   minute windows of each of three UTC days around ``DAY`` and the hour windows of
   ``HOUR_DAYS`` days (crossing a month boundary, so a 30-day hour query reads two rows as
   the storage layout allows at most). The measured entity is one of those videos, so its
   rows sit between neighbours' rows, not alone in the table;
3. times ``get_stats`` (wall clock, ``time.perf_counter_ns``) ``rounds`` times each, after
   ``warmup`` untimed calls, for (a) ``count`` over one UTC day at ``minute`` granularity
   (1,440 buckets, one row read) and (b) ``count`` over 30 days at ``hour`` granularity
   (720 buckets, two row reads). Each answer is checked (combined count and bucket count
   equal what was stored) outside the timed span; a wrong answer raises ``AssertionError``.

Before timing, the stored cells' expected answers are computed and the cells dropped, and
the process's objects are moved out of the cyclic garbage collector's reach
(``gc.freeze()``), as a serving process does after start-up: without it, full collections
over this process's half a million objects (Beam is imported to write the cells) add
pauses of about 170 ms every ~11 calls, which would be the p99 (measured here: p99 183 ms
against 17 ms frozen, p50 unchanged).

Returns ``{"query_day_minute_p50_ms", "query_day_minute_p99_ms", "query_30d_hour_p50_ms",
"query_30d_hour_p99_ms": float (milliseconds), "query_rounds": int}``. The client and the
emulator share the machine, so the figure is client decode + gRPC + emulator time, without
network distance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from schemas import storage
from schemas.storage import Aggregate
from viewcounts.local import provision
from viewcounts.local.emulators import Emulator, bigtable_emulator

_LOG = logging.getLogger(__name__)
PROJECT, INSTANCE, TABLE = storage.DEFAULT_PROJECT, storage.DEFAULT_INSTANCE, "bench-queries"
DAY = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # the measured UTC day of minute windows
HOUR_START = DAY - dt.timedelta(days=25)  # hour windows from here, for HOUR_DAYS days
HOUR_DAYS = 35
RANGE_30D = (DAY - dt.timedelta(days=20), DAY + dt.timedelta(days=10))  # crosses 2026-01-01: two hour rows
EVENT_TYPES = ("view", "like", "watch")
Cells = dict[tuple[str, str, str, int], Aggregate]  # (video_id, event_type, granularity, window_start_s)


@contextlib.contextmanager
def emulator_env(emu: Emulator) -> Iterator[Emulator]:
    """Start ``emu``, point its client variable (``*_EMULATOR_HOST``) at it, and restore the
    variable and stop the emulator by PID on leaving."""
    with emu:
        old = os.environ.get(emu.env_var)
        os.environ[emu.env_var] = emu.host
        try:
            yield emu
        finally:
            if old is None:
                os.environ.pop(emu.env_var, None)
            else:
                os.environ[emu.env_var] = old


def video_name(i: int) -> str:
    return f"video-{i:07d}"


def synthetic_cells(videos: int, seed: int = 11) -> Cells:
    """Aggregates for ``videos`` videos x ``EVENT_TYPES``: minute windows of the days before,
    of and after ``DAY`` and ``HOUR_DAYS`` days of hour windows. Counts follow a daily
    cycle with Poisson noise; ``watch`` carries integer seconds (sum/min/max)."""
    rng = np.random.default_rng(seed)
    cells: Cells = {}
    minute_starts = np.arange(
        int((DAY - dt.timedelta(days=1)).timestamp()), int((DAY + dt.timedelta(days=2)).timestamp()), 60
    )
    hour_starts = np.arange(
        int(HOUR_START.timestamp()), int((HOUR_START + dt.timedelta(days=HOUR_DAYS)).timestamp()), 3600
    )
    for v in range(videos):
        scale = 50.0 / (v + 1)
        for t, share in zip(EVENT_TYPES, (1.0, 0.1, 0.1)):
            for gran, starts, per in (("minute", minute_starts, 1), ("hour", hour_starts, 60)):
                cycle = 1.0 + 0.8 * np.sin(2 * np.pi * (starts % 86400) / 86400)
                counts = rng.poisson(scale * share * per * cycle) + 1
                for w, c in zip(starts.tolist(), counts.tolist()):
                    cells[(video_name(v), t, gran, w)] = _aggregate(rng, t, c)
    return cells


def _aggregate(rng: np.random.Generator, event_type: str, count: int) -> Aggregate:
    if event_type != "watch":
        return Aggregate(count, 0, 0.0, None, None)
    values = rng.integers(1, 3601, size=count)
    return Aggregate(count, count, float(values.sum()), float(values.min()), float(values.max()))


def store_cells(cells: Cells, project: str, instance: str, table: str, per_request: int = 10_000) -> None:
    """Write ``cells`` with ``WriteAggregates._write``, the sink's step that turns rows into
    Bigtable mutations (row key, qualifier, encoded cell, millisecond cell timestamp) and
    sends them with retries, ``per_request`` cells per ``MutateRows`` request (the sink's
    default). Called below the DoFn's ``process`` because that element type is changing
    (one row, or the list of one firing); ``_write`` is the same in both.

    Raises ``RuntimeError`` when cells still fail after the sink's retries."""
    from transforms.aggregate import AggregateRow
    from transforms.bigtable_sink import WriteAggregates
    from transforms.enrich import EnrichedRow

    sink = WriteAggregates(project, instance, table, max_mutations_per_request=per_request)
    sink.setup()
    try:
        batch: dict[tuple[bytes, bytes], EnrichedRow] = {}
        failed = []
        for (video_id, event_type, gran, w), agg in cells.items():
            row = AggregateRow(
                video_id, event_type, gran, w, agg, 0, storage.cell_timestamp_us(storage.wall_clock_ms(), agg.count)
            )
            batch[(storage.row_key(video_id, event_type, gran, w), storage.qualifier(w))] = EnrichedRow(
                row, f"title of {video_id}", "channel-1"
            )
            if len(batch) >= per_request:
                failed += sink._write(batch)
                batch = {}
        if batch:
            failed += sink._write(batch)
    finally:
        sink.teardown()
    if failed:
        raise RuntimeError(f"{len(failed)} aggregates could not be written, e.g. {failed[0]}")


def expected_count(
    cells: Cells, video_id: str, event_type: str, gran: str, start: dt.datetime, end: dt.datetime
) -> int:
    lo, hi = int(start.timestamp()), int(end.timestamp())
    return sum(
        a.count for (v, t, g, w), a in cells.items() if v == video_id and t == event_type and g == gran and lo <= w < hi
    )


def time_query(query: Callable[[], object], check: Callable[[object], None], rounds: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``rounds`` timed calls of ``query`` after ``warmup`` untimed ones;
    ``check`` runs on every answer, outside the timed span."""
    for _ in range(warmup):
        check(query())
    out = np.empty(rounds)
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        answer = query()
        out[i] = (time.perf_counter_ns() - t0) / 1e6
        check(answer)
    return out


def _checker(expected: int, buckets: int, what: str) -> Callable[[object], None]:
    def check(stats) -> None:
        if stats.combined.count != expected or len(stats.buckets) != buckets:
            raise AssertionError(
                f"{what}: get_stats returned count {stats.combined.count} over "
                f"{len(stats.buckets)} buckets; stored {expected} over {buckets}"
            )

    return check


def measure_queries(rounds: int = 200, warmup: int = 5, neighbours: int = 10, measured_video: int = 3) -> dict:
    """See the module docstring. ``neighbours``: videos stored (each x 3 types);
    ``measured_video``: the index of the one queried (``view``)."""
    if rounds < 1 or not 0 <= measured_video < neighbours:
        raise ValueError("rounds must be >= 1 and measured_video within 0..neighbours-1")
    from query.stats import StatsReader

    cells = synthetic_cells(neighbours)
    vid, et = video_name(measured_video), "view"
    day = (DAY, DAY + dt.timedelta(days=1))
    with emulator_env(bigtable_emulator()):
        provision.create_table(PROJECT, INSTANCE, TABLE)
        started = time.monotonic()
        store_cells(cells, PROJECT, INSTANCE, TABLE)
        _LOG.info("stored %d aggregates through WriteAggregates in %.1f s", len(cells), time.monotonic() - started)
        day_check = _checker(expected_count(cells, vid, et, "minute", *day), 1440, "one day by minute")
        month_check = _checker(expected_count(cells, vid, et, "hour", *RANGE_30D), 720, "30 days by hour")
        del cells
        gc.collect()
        gc.freeze()
        try:
            with StatsReader(PROJECT, INSTANCE, TABLE) as reader:
                minute_ms = time_query(
                    lambda: reader.get_stats(vid, et, "count", *day, "minute"), day_check, rounds, warmup
                )
                hour_ms = time_query(
                    lambda: reader.get_stats(vid, et, "count", *RANGE_30D, "hour"), month_check, rounds, warmup
                )
        finally:
            gc.unfreeze()
    return {
        "query_day_minute_p50_ms": float(np.percentile(minute_ms, 50)),
        "query_day_minute_p99_ms": float(np.percentile(minute_ms, 99)),
        "query_30d_hour_p50_ms": float(np.percentile(hour_ms, 50)),
        "query_30d_hour_p99_ms": float(np.percentile(hour_ms, 99)),
        "query_rounds": rounds,
    }


if __name__ == "__main__":
    import sys

    import orjson

    logging.basicConfig(level=logging.INFO)
    sys.stdout.write(orjson.dumps(measure_queries(int(sys.argv[1]) if len(sys.argv) > 1 else 200)).decode() + "\n")
