"""Per-minute and per-hour aggregates over event-time windows (docs/contract.md, "Aggregates"), with
batches as elements: no element per event and no element per (video, type) on the hot path.

``PreAggregate``: accepted events (``(arrival_us, [Event, ...])`` of one event-time minute,
timestamped at the minute start) -> per bundle, one element per pane shard: ``(shard,
(arrival_us, {minute_s: {(video_id, event_type): Aggregate}}))``, ``arrival_us`` the latest
arrival (processing) time in the bundle. ``shard = validate.shard_of(video_id, shards)``.

``FirePanes``: a stateful DoFn keyed by pane shard that keeps, for every open window of each
granularity (``FixedWindows`` of 60 s and 3600 s, UTC-aligned, half-open), the running
``Aggregate`` of every (video, type), and fires panes exactly as Beam's
``AfterWatermark(early=AfterProcessingTime(early_firing_s), late=AfterCount(1))`` in
accumulating mode would, for a whole shard at once:

* early panes: ``early_firing_s`` of processing time after the first unfired data, holding
  the (video, type) that changed since their last pane. Processing time is read two ways,
  whichever comes first: a processing-time timer (the execution's own clock) and the
  arrival time carried by the data (the pipeline's clock, docs/contract.md): an element
  that arrives ``early_firing_s`` or more after the first unfired data fires the early
  pane itself. The second keeps early panes firing where the processing-time clock is not
  the wall clock (a ``TestStream``'s clock starts at the epoch).
  Once no open window waits for its on-time pane, the on-time firing clears the
  processing-time timer and the first unfired arrival (``on_window_end``);
* the on-time pane: when the watermark passes the window's end, holding every (video, type)
  of the window (Beam's on-time pane fires whether or not data came since the last one);
* late panes: each late element fires one pane at once, holding what it changed;
* the window's state is dropped ``allowed_lateness + window + WINDOW_LATENESS_MARGIN_S``
  after its end (the product decides lateness per event before windowing; docs/decisions.md,
  "Lateness decided per event, before windowing").

Output: ``list[AggregateRow]``, the rows of one firing (one pane of each window it fires):
at most one row, so one mutation, per (video, type, window) per pane. Every row carries the
*absolute* running aggregate, which the sink writes as an overwrite.

Tagged output ``DAY_COUNTS``: per firing that holds hour rows, ``list[DayCount]``, the UTC day
count of each (video, type) of those rows: the counts of the day's hour windows this shard
dropped (kept per day in state until the day's last hour is dropped) plus those of its open
hour windows of that day. It only grows, like the rows' counts, and needs no stage keyed by
video (``transforms.top`` ranks it).

State: a bag of ``(window_size_s, window_start_s, partials)`` entries (``partials``: the
encoded ``{(video, type): Aggregate}`` of one input element), rewritten without the dropped
window's entries whenever a window is dropped (the entries are kept encoded in memory, so a
rewrite encodes nothing); the pane bookkeeping ``{window: (next pane index,
on-time fired, cell timestamp base ms)}``; the day counts of dropped hour windows
(``dropped_hour_day_counts``: ``{"days": [[day_start_s, [[video, type, count], ...]], ...],
"unknown_before_s": s or null, "marked_days": [day_start_s, ...]}``); a version, a fresh random token drawn before every
write (``state_values.new_version``). As in ``transforms.dedup``, each process
keeps the merged aggregates of the keys it serves in memory, tagged with the version they
were built from (``state_values.cached_view``), and rebuilds them from the bag when the
version differs (a key that moved or a restored job): the rebuilt windows count every
(video, type) as changed, so the next pane re-sends them rather than miss one.

State added by a later version is empty when a job is restored from an older version's
checkpoint or savepoint. The dropped hours' cell is written whenever the bookkeeping is (both
are cleared once the key holds nothing), so a key with bookkeeping or entries and no such
cell was written by a version without it, or by one that cleared it whenever it held no
dropped hours (then the repair below is needless): the hours that version dropped are
unknown. Such a key sets ``unknown_before_s`` to the wall clock, marks the ``DayCount``s of
the days begun before it incomplete (``complete=False``) until the last of them is done, and
for each such day, at its first incomplete count, writes a restart marker naming it
(``schemas.restart_markers.LACKS_DAY_COUNTS``; ``marked_days``), so ``--after_restarts``
rebuilds that day's list from the archive once it closes. A cell added later should follow
the same rule: written whenever the key holds state, so its absence is detectable.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.coders import BytesCoder, TupleCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from schemas.archive import new_run_id
from schemas.event import US_PER_S, format_time_us
from schemas.restart_markers import LACKS_DAY_COUNTS, write_marker
from schemas.storage import (
    EMPTY,
    GRANULARITY_SECONDS,
    TOP_GRANULARITY_SECONDS,
    Aggregate,
    cell_timestamp_us,
    merge,
    wall_clock_ms,
)
from transforms.state_values import cached_view, dumps_exact, new_version, rewrite_bag
from transforms.validate import shard_of

_LOG = logging.getLogger(__name__)
WINDOW_LATENESS_MARGIN_S = 60
DAY_COUNTS = "day_counts"  # FirePanes' tagged output of DayCount lists
_HOUR_S = GRANULARITY_SECONDS["hour"]
_DAY_S = TOP_GRANULARITY_SECONDS["day"]
_GRANULARITY_OF_SIZE = {size: g for g, size in GRANULARITY_SECONDS.items()}


class AggregateRow(NamedTuple):
    """One pane of one window: what the sink writes as one cell.

    ``cell_timestamp_us``: whole milliseconds, ``storage.cell_timestamp_us`` of the window's
    base and the aggregate's count: later panes of a window never smaller, from state.
    """

    video_id: str
    event_type: str
    granularity: str
    window_start_s: int
    aggregate: Aggregate
    pane_index: int
    cell_timestamp_us: int


class DayCount(NamedTuple):
    """The count of one (video, type) over the UTC day starting at ``day_start_s`` so far;
    ``complete`` False: the key was restored from state without the day counts of its dropped
    hours (module doc), so ``count`` may miss some and a restart marker asks for the day's
    list to be rebuilt."""

    video_id: str
    event_type: str
    day_start_s: int
    count: int
    complete: bool = True


def aggregate_events(events) -> dict[tuple[str, str], Aggregate]:
    """Fold events into one ``Aggregate`` per ``(video_id, event_type)``."""
    out: dict[tuple[str, str], list] = {}
    _fold(out, events)
    return {k: Aggregate(*v) for k, v in out.items()}


def _fold(accs: dict, events) -> None:
    """Add events to mutable accumulators ``{(video_id, event_type): [count, value_count, sum, min, max]}``."""
    for ev in events:
        key = (ev.video_id, ev.event_type)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = [0, 0, 0.0, None, None]
        acc[0] += 1
        v = ev.value
        if v is not None:
            acc[1] += 1
            acc[2] += v
            if acc[3] is None or v < acc[3]:
                acc[3] = v
            if acc[4] is None or v > acc[4]:
                acc[4] = v


class PreAggregate(beam.DoFn):
    """See the module doc. Partials are flushed at the end of every bundle."""

    def __init__(self, shards: int) -> None:
        self._shards = shards

    def start_bundle(self) -> None:
        self._by_minute: dict[int, dict] = defaultdict(dict)
        self._arrival_us = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        arrival_us, chunk = element
        _fold(self._by_minute[timestamp.micros // US_PER_S], chunk)
        self._arrival_us = max(self._arrival_us, arrival_us)

    def finish_bundle(self):
        by_shard: dict[int, dict] = defaultdict(lambda: defaultdict(dict))
        shards: dict[str, int] = {}
        for minute_s, accs in self._by_minute.items():
            for key, acc in accs.items():
                shard = shards.get(key[0])
                if shard is None:
                    shard = shards[key[0]] = shard_of(key[0], self._shards)
                by_shard[shard][minute_s][key] = Aggregate(*acc)
        for shard, minutes in by_shard.items():
            yield WindowedValue((shard, (self._arrival_us, dict(minutes))), Timestamp(min(minutes)), (GlobalWindow(),))


def encode_partials(partials: dict[tuple[str, str], Aggregate]) -> bytes:
    return dumps_exact([[*key, *agg] for key, agg in partials.items()])


def decode_partials(blob: bytes) -> dict[tuple[str, str], Aggregate]:
    return {(r[0], r[1]): Aggregate(*r[2:]) for r in orjson.loads(blob)}


class _Window:
    """One open window of one shard: aggregates, changed keys, pane bookkeeping, and the
    base of its cell timestamps (``storage.cell_timestamp_us``: wall-clock ms when the
    window's state was created)."""

    __slots__ = ("aggs", "changed", "next_pane", "on_time_fired", "base_ms", "blobs")

    def __init__(self, base_ms: int, next_pane: int = 0, on_time_fired: bool = False) -> None:
        self.aggs: dict[tuple[str, str], Aggregate] = {}
        self.changed: set[tuple[str, str]] = set()
        self.next_pane = next_pane
        self.on_time_fired = on_time_fired
        self.base_ms = base_ms
        self.blobs: list[bytes] = []  # this window's state entries, re-added when the bag is rewritten

    def add(self, partials: dict[tuple[str, str], Aggregate], blob: bytes) -> None:
        aggs = self.aggs
        for key, agg in partials.items():
            aggs[key] = merge(aggs.get(key, EMPTY), agg)
        self.changed.update(partials)
        self.blobs.append(blob)


class _ShardWindows:
    """The open windows of one pane shard, ``{(size_s, start_s): _Window}``, and the day counts
    of its dropped hour windows, ``{day_start_s: {(video, type): count}}``, at a state version.

    ``unknown_before_s``: None, or the wall clock (epoch s) at which the key was found restored
    without its dropped hours' cell: the days begun by then miss them; ``marked_days``: those
    of them a restart marker names, ``unmarked_days`` those it must name (an incomplete count
    was emitted). ``restored_without_cell``: found so when built, not yet handled
    (``FirePanes._shard``). ``cell_present``/``cell_changed``:
    whether the cell holds a value, and whether it is behind this view (``FirePanes._commit``)."""

    def __init__(self, version: int, bookkeeping: bytes | None, entries, dropped_hours: bytes | None) -> None:
        self.version = version
        self.windows: dict[tuple[int, int], _Window] = {}
        stored = orjson.loads(dropped_hours) if dropped_hours is not None else {}
        if isinstance(stored, list):  # the cell as written before it kept unknown_before_s
            stored = {"days": stored}
        self.dropped_hours: dict[int, dict[tuple[str, str], int]] = {
            day_s: {(v, t): c for v, t, c in counts} for day_s, counts in stored.get("days", [])
        }
        self.unknown_before_s: int | None = stored.get("unknown_before_s")
        self.marked_days: set[int] = set(stored.get("marked_days", []))
        self.unmarked_days: set[int] = set()
        # state written before windows kept a base (four fields) takes the base from now
        for size_s, start_s, next_pane, fired, *base_ms in orjson.loads(bookkeeping or b"[]"):
            self.windows[(size_s, start_s)] = _Window(base_ms[0] if base_ms else wall_clock_ms(), next_pane, fired)
        for size_s, start_s, blob in entries:
            self.window(size_s, start_s).add(decode_partials(blob), blob)
        self.cell_present = dropped_hours is not None
        self.cell_changed = False
        # the cell is written whenever the bookkeeping is: bookkeeping or entries without it
        # are an older version's (module docstring)
        self.restored_without_cell = not self.cell_present and (bookkeeping is not None or bool(self.windows))

    def holds_state(self) -> bool:
        return bool(self.windows or self.dropped_hours or self.unknown_before_s is not None)

    def window(self, size_s: int, start_s: int) -> _Window:
        w = self.windows.get((size_s, start_s))
        if w is None:
            w = self.windows[(size_s, start_s)] = _Window(wall_clock_ms())
        return w

    def entries(self):
        """The bag's entries for the open windows: ``(size_s, start_s, blob)``."""
        return ((size_s, start_s, blob) for (size_s, start_s), w in self.windows.items() for blob in w.blobs)

    def bookkeeping(self) -> bytes:
        return orjson.dumps([[s, t, w.next_pane, w.on_time_fired, w.base_ms] for (s, t), w in self.windows.items()])

    def encoded_dropped_hours(self) -> bytes:
        return orjson.dumps(
            {
                "days": [
                    [day_s, [[v, t, c] for (v, t), c in counts.items()]] for day_s, counts in self.dropped_hours.items()
                ],
                "unknown_before_s": self.unknown_before_s,
                "marked_days": sorted(self.marked_days),
            }
        )

    def drop_hour(self, start_s: int, w: _Window) -> None:
        """Fold a dropped hour window's counts into its day's."""
        day = self.dropped_hours.setdefault(start_s - start_s % _DAY_S, {})
        for key, agg in w.aggs.items():
            day[key] = day.get(key, 0) + agg.count
        self.cell_changed = True

    def day_counts(self, out: list[DayCount], hour_start_s: int, keys) -> None:
        """Append the ``DayCount`` of each (video, type) of ``keys`` for the day of ``hour_start_s``."""
        day_s = hour_start_s - hour_start_s % _DAY_S
        dropped = self.dropped_hours.get(day_s, {})
        hours = [
            w.aggs
            for (size_s, start_s), w in self.windows.items()
            if size_s == _HOUR_S and start_s - start_s % _DAY_S == day_s
        ]
        complete = self.unknown_before_s is None or day_s >= self.unknown_before_s
        if not complete and day_s not in self.marked_days:
            self.unmarked_days.add(day_s)
        for key in keys:
            out.append(
                DayCount(
                    key[0],
                    key[1],
                    day_s,
                    dropped.get(key, 0) + sum(aggs[key].count for aggs in hours if key in aggs),
                    complete,
                )
            )


class _Firing:
    """What one firing of a shard emits (``outputs``): its rows (one pane of each window it
    fires) on the main output, and the ``DayCount``s of its hour rows on ``DAY_COUNTS``."""

    __slots__ = ("rows", "days")

    def __init__(self) -> None:
        self.rows: list[AggregateRow] = []
        self.days: list[DayCount] = []

    def outputs(self):
        if self.rows:
            yield self.rows
        if self.days:
            yield beam.pvalue.TaggedOutput(DAY_COUNTS, self.days)


# Per pipeline (keyed by a token made at construction) and shard key, in this process.
_WINDOWS: dict[tuple[str, int], _ShardWindows] = {}


class FirePanes(beam.DoFn):
    """See the module doc. ``early_firing_s=None``: only on-time panes (batch).
    ``archive_path``: where a key restored without its dropped hours' cell writes its restart
    marker (``schemas.restart_markers.write_marker``); None: it only logs a warning.

    Why not Beam's own windows: ``WindowInto(FixedWindows)`` with the same trigger, accumulation
    and lateness plus ``CombinePerKey`` over the same partials gave identical final panes at
    0.69x and 0.23x this DoFn's events/s on the two portable engines the bench measures, and wrote
    every cell twice (docs/decisions.md has the figures). Reproduce: ``viewcounts bench --parts
    windowing``."""

    PARTIALS = BagStateSpec("partials", TupleCoder((VarIntCoder(), VarIntCoder(), BytesCoder())))
    PANES = ReadModifyWriteStateSpec("panes", BytesCoder())
    VERSION = ReadModifyWriteStateSpec("version", VarIntCoder())
    FIRST_UNFIRED = ReadModifyWriteStateSpec("first_unfired_arrival_us", VarIntCoder())
    DROPPED_HOURS = ReadModifyWriteStateSpec("dropped_hour_day_counts", BytesCoder())
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)
    EARLY = TimerSpec("early", TimeDomain.REAL_TIME)

    def __init__(self, allowed_lateness_s: int, early_firing_s: int | None, archive_path: str | None = None) -> None:
        self._lateness_s = allowed_lateness_s
        self._early_s = early_firing_s
        self._archive_path = archive_path
        self._token = uuid.uuid4().hex

    def _shard(self, key, bag, panes, dropped_hours, version) -> _ShardWindows:
        shard = cached_view(
            _WINDOWS,
            (self._token, key),
            version,
            lambda v: _ShardWindows(v, panes.read(), bag.read(), dropped_hours.read()),
        )
        if shard.restored_without_cell:
            self._restored_without_cell(key, shard)
        return shard

    @staticmethod
    def _restored_without_cell(key, shard: _ShardWindows) -> None:
        """A key restored from an older version's state (no dropped hours' cell): the days begun
        by now may miss the hours that version dropped. Their ``DayCount``s are marked
        incomplete from here on (``_mark_days`` names them in restart markers); the caller's
        commit writes the cell."""
        shard.restored_without_cell = False
        shard.unknown_before_s = wall_clock_ms() // 1000
        shard.cell_changed = True
        _LOG.warning(
            "pane shard %s was restored from state without its day counts of dropped hours (a checkpoint "
            "of an older version): the day top lists of the days begun by now may stay low until "
            "python -m pipelines.batch_recompute --after_restarts rebuilds them",
            key,
        )

    def _mark_days(self, key, shard: _ShardWindows) -> None:
        """Write a restart marker (``schemas.restart_markers.LACKS_DAY_COUNTS``) naming the days this
        key emitted their first incomplete ``DayCount`` of, so ``--after_restarts`` rebuilds
        their lists once they close; without ``archive_path`` only log them."""
        days = sorted(shard.unmarked_days)
        path = None
        if self._archive_path:
            path = write_marker(
                self._archive_path,
                f"{key}-{new_run_id()}",
                self._lateness_s,
                wall_clock_ms(),
                lacks_state=LACKS_DAY_COUNTS,
                days=days,
            )
        _LOG.warning(
            "pane shard %s: day counts of %s miss the hours an older version dropped; restart marker %s",
            key,
            [_utc_day(d) for d in days],
            path,
        )
        shard.marked_days.update(days)
        shard.unmarked_days.clear()
        shard.cell_changed = True

    def _commit(self, key, shard: _ShardWindows, panes, dropped_hours) -> None:
        """Write the pane bookkeeping, and the dropped hours' cell if it is behind the view: a
        key holding state has both (``_ShardWindows``), one holding none has neither; first
        the restart marker of days with a first incomplete count (``_mark_days``). The caller
        drew the version (``new_version``) before it changed the view."""
        if shard.unmarked_days:
            self._mark_days(key, shard)
        if shard.holds_state():
            panes.write(shard.bookkeeping())
            if shard.cell_changed or not shard.cell_present:
                dropped_hours.write(shard.encoded_dropped_hours())
                shard.cell_present = True
        else:
            panes.clear()
            if shard.cell_present:
                dropped_hours.clear()
                shard.cell_present = False
        shard.cell_changed = False

    @staticmethod
    def _on_time_at_us(size_s: int, start_s: int) -> int:
        """When a window's on-time pane fires: its last millisecond (``end - 1 ms``). Timers
        carry milliseconds on the Fn API, so a timer set at ``end - 1 µs`` may fire at
        ``end - 1 ms``, never pass a check against ``end - 1 µs`` and be set again for ever.
        Inputs are stamped at minute starts, so none falls in a window's
        last millisecond."""
        return (start_s + size_s) * US_PER_S - 1000

    def _drop_after_us(self, size_s: int, start_s: int) -> int:
        return (start_s + 2 * size_s + self._lateness_s + WINDOW_LATENESS_MARGIN_S) * US_PER_S

    def _day_done_us(self, day_start_s: int) -> int:
        """When a day's counts of dropped hours go: the drop time of its last hour, after
        which no pane is of that day."""
        return self._drop_after_us(_HOUR_S, day_start_s + _DAY_S - _HOUR_S)

    def _next_boundary_us(self, shard: _ShardWindows) -> int | None:
        """When the watermark next matters: the earliest end of a window not yet fired on
        time (``_on_time_at_us``), drop time of one that was, or ``_day_done_us`` of a day
        whose dropped hours' counts are kept, or of the last day ``unknown_before_s`` marks."""
        unknown = [] if shard.unknown_before_s is None else [shard.unknown_before_s - shard.unknown_before_s % _DAY_S]
        return min(
            [
                *(
                    (self._drop_after_us(s, t) if w.on_time_fired else self._on_time_at_us(s, t))
                    for (s, t), w in shard.windows.items()
                ),
                *map(self._day_done_us, [*shard.dropped_hours, *unknown]),
            ],
            default=None,
        )

    def process(
        self,
        element,
        bag=beam.DoFn.StateParam(PARTIALS),
        panes=beam.DoFn.StateParam(PANES),
        version=beam.DoFn.StateParam(VERSION),
        first_unfired=beam.DoFn.StateParam(FIRST_UNFIRED),
        dropped_hours=beam.DoFn.StateParam(DROPPED_HOURS),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
        early=beam.DoFn.TimerParam(EARLY),
    ):
        key, (arrival_us, by_minute) = element
        shard = self._shard(key, bag, panes, dropped_hours, version)
        new_version(shard, version)
        firing = _Firing()
        unfired = False
        for minute_s, partials in by_minute.items():
            blob = encode_partials(partials)
            for size_s in GRANULARITY_SECONDS.values():
                start_s = minute_s - minute_s % size_s
                w = shard.window(size_s, start_s)
                w.add(partials, blob)
                bag.add((size_s, start_s, blob))
                if w.on_time_fired:  # late data: a late pane now (AfterCount(1))
                    self._pane(firing, shard, size_s, start_s, w, w.changed)
                else:
                    unfired = True
        if unfired and self._early_s is not None:
            since_us = first_unfired.read()
            if since_us is None:
                first_unfired.write(arrival_us)
                early.set(Timestamp.now() + self._early_s)
            elif arrival_us - since_us >= self._early_s * US_PER_S:
                self._early_panes(firing, shard)
                first_unfired.clear()
        self._commit(key, shard, panes, dropped_hours)
        window_end.set(Timestamp(micros=self._next_boundary_us(shard)))
        yield from firing.outputs()

    @on_timer(EARLY)
    def on_early(
        self,
        key=beam.DoFn.KeyParam,
        bag=beam.DoFn.StateParam(PARTIALS),
        panes=beam.DoFn.StateParam(PANES),
        version=beam.DoFn.StateParam(VERSION),
        first_unfired=beam.DoFn.StateParam(FIRST_UNFIRED),
        dropped_hours=beam.DoFn.StateParam(DROPPED_HOURS),
    ):
        first_unfired.clear()
        shard = self._shard(key, bag, panes, dropped_hours, version)
        if not shard.cell_changed and not any(not w.on_time_fired and w.changed for w in shard.windows.values()):
            return
        new_version(shard, version)
        firing = _Firing()
        self._early_panes(firing, shard)
        self._commit(key, shard, panes, dropped_hours)
        yield from firing.outputs()

    def _early_panes(self, firing: _Firing, shard: _ShardWindows) -> None:
        for (size_s, start_s), w in shard.windows.items():
            if not w.on_time_fired and w.changed:
                self._pane(firing, shard, size_s, start_s, w, w.changed)

    @on_timer(WINDOW_END)
    def on_window_end(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        bag=beam.DoFn.StateParam(PARTIALS),
        panes=beam.DoFn.StateParam(PANES),
        version=beam.DoFn.StateParam(VERSION),
        first_unfired=beam.DoFn.StateParam(FIRST_UNFIRED),
        dropped_hours=beam.DoFn.StateParam(DROPPED_HOURS),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
        early=beam.DoFn.TimerParam(EARLY),
    ):
        shard = self._shard(key, bag, panes, dropped_hours, version)
        new_version(shard, version)
        firing = _Firing()
        dropped = False
        for (size_s, start_s), w in list(shard.windows.items()):
            if not w.on_time_fired and self._on_time_at_us(size_s, start_s) <= fired.micros:
                self._pane(firing, shard, size_s, start_s, w, w.aggs)
                w.on_time_fired = True
            if w.on_time_fired and self._drop_after_us(size_s, start_s) <= fired.micros:
                del shard.windows[(size_s, start_s)]
                if size_s == _HOUR_S:
                    shard.drop_hour(start_s, w)
                dropped = True
        if dropped:  # the bag holds only the remaining windows' entries
            rewrite_bag(bag, shard.entries())
        for day_s in [d for d in shard.dropped_hours if self._day_done_us(d) <= fired.micros]:
            del shard.dropped_hours[day_s]
            shard.cell_changed = True
        if (
            shard.unknown_before_s is not None
            and self._day_done_us(shard.unknown_before_s - shard.unknown_before_s % _DAY_S) <= fired.micros
        ):
            shard.unknown_before_s = None  # every day it marked is done
            shard.marked_days.clear()
            shard.cell_changed = True
        # the cell is written only when the day counts change (not per minute dropped)
        self._commit(key, shard, panes, dropped_hours)
        if self._early_s is not None and all(w.on_time_fired for w in shard.windows.values()):
            # no window waits for its on-time pane, so none can take an early one: a
            # processing-time timer left set would hold a bounded job for ever where the
            # end of the input flushes every pending timer
            early.clear()
            first_unfired.clear()
        boundary_us = self._next_boundary_us(shard)
        if boundary_us is not None:
            window_end.set(Timestamp(micros=boundary_us))
        yield from firing.outputs()

    @staticmethod
    def _pane(firing: _Firing, shard: _ShardWindows, size_s: int, start_s: int, w: _Window, keys) -> None:
        """Append one pane of window ``w``: a row for each of ``keys``, its cell timestamp from
        the window's state (``storage.cell_timestamp_us``), never from this worker's clock; for
        an hour window, the ``DayCount`` of each of ``keys`` too."""
        granularity = _GRANULARITY_OF_SIZE[size_s]
        for video_id, event_type in keys:
            agg = w.aggs[(video_id, event_type)]
            firing.rows.append(
                AggregateRow(
                    video_id,
                    event_type,
                    granularity,
                    start_s,
                    agg,
                    w.next_pane,
                    cell_timestamp_us(w.base_ms, agg.count),
                )
            )
        if size_s == _HOUR_S:
            shard.day_counts(firing.days, start_s, keys)
        w.next_pane += 1
        w.changed = set()


def _utc_day(day_start_s: int) -> str:
    return format_time_us(day_start_s * US_PER_S)[:10]


class WindowedAggregates(beam.PTransform):
    """Accepted events per minute (``[Event, ...]``) -> ``PCollection[list[AggregateRow]]`` for
    minute and hour windows (main output) and ``PCollection[list[DayCount]]`` (``DAY_COUNTS``).
    ``early_firing_s=None``: no early or late panes (batch)."""

    def __init__(self, allowed_lateness_s: int, early_firing_s: int | None, shards: int) -> None:
        super().__init__()
        self._lateness_s = allowed_lateness_s
        self._early_s = early_firing_s
        self._shards = shards

    def expand(self, accepted):
        # restart markers of keys restored from an older version's state go to the job's raw archive
        archive_path = accepted.pipeline.options.get_all_options().get("archive_path")
        return (
            accepted
            | "pre-aggregate" >> beam.ParDo(PreAggregate(self._shards))
            | "fire panes"
            >> beam.ParDo(FirePanes(self._lateness_s, self._early_s, archive_path)).with_outputs(
                DAY_COUNTS, main="rows"
            )
        )
