"""Top entities (docs/contract.md, "Aggregates"): per (event type, window) of each granularity (``minute``, ``hour``
and the ``day`` rollup of hours), the ``storage.TOP_K`` videos with the highest ``count``,
ties broken by ``video_id`` ascending (``storage.top_rank``); stored as one cell per window
(``schemas.storage`` top rows) and read by ``query.top.get_top``.

Streaming (``TopEntities``: ``(PCollection[list[AggregateRow]], PCollection[list[DayCount]])``,
``CountEvents``' ``rows`` and ``day_counts`` -> ``PCollection[list[TopRow]]``), exact with
bounded state. The day counts come from the windows stage itself (``transforms.aggregate``:
per video and type, the day's dropped hours plus its open ones), so no stage is keyed by video.
``WindowOffers`` first merges each bundle's rows and day counts per stage-1 key.

1. ``ShardTop``, keyed by ``(event_type, granularity, window_start_s, shard)`` with ``shard =
   validate.shard_of(video_id, shards)``: keeps the shard's top K (``BoundedTop``) and emits the
   entries that entered it or rose in it, ``[(video_id, count), ...]``, when there are any.
   Exact: every pane carries a window's *accumulated* count, which only grows, so a video
   outside the kept K has a count no higher (in ``top_rank`` order) than the K-th kept, the
   K-th only rises, and any later change to that video arrives with its full new count.
2. ``MergeTop``, keyed by ``(event_type, granularity, window_start_s)``: offers the shards'
   changed entries to one ``BoundedTop`` of K (the same argument: a video dropped from its
   shard's top K has K videos of its shard ranked above it, each offered here when it entered
   or rose, so it is in no global top K) and emits the top K as a ``TopRow`` when it changes.
   Entries arriving out of order are harmless: an older count of a video is never above the
   one kept. Work per element: the entries it carries and the K kept, not the shards.

Cell order (``schemas.storage``): ``MergeTop`` keeps a base (wall clock ms when the window's
state was created) and stamps each list ``cell_timestamp_us(base, sum of its counts)``; later
lists never sort before earlier ones, whatever worker fires them.

State cleanup: every stage clears a key's state when an event-time timer at ``window_start +
2 * window + allowed_lateness + WINDOW_LATENESS_MARGIN_S`` fires (``drop_at_s``; as
``transforms.aggregate.FirePanes`` drops a window; a day's lists use the day's size). No pane
of a window is made after that drop time (a late pane is fired by an event accepted within the
allowed lateness of the watermark), as long as the watermark waits for the output of
``FirePanes``' timers. Where it does not, give ``cleanup_grace_s``: the state is then cleared
that many seconds of processing time after the drop timer fires. Without it, one watermark
jump there fires ``FirePanes``' on-time panes and these stages' drop timers together, and a
pane arriving after its window's state was cleared would start a new list holding only
itself, with a newer base that wins (``tests/test_top_streaming.py`` failed so; related:
apache/beam#20705, timer watermark holds in the Python SDK).

Batch (``TopFromRows``: the recompute's ``list[EnrichedRow]`` per entity -> ``list[TopRow]``)
ranks the final aggregates with Beam's ``combiners.Top.PerKey``: minute and hour lists of the
hours the recompute overwrites, and day lists of the days it was given, each from the hour rows
of all 24 hours (the recompute reads a day's other hours for that, ``pipelines.batch_recompute``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.coders import BytesCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from schemas.storage import TOP_GRANULARITY_SECONDS, TOP_K, cell_timestamp_us, top_rank, wall_clock_ms
from transforms.aggregate import WINDOW_LATENESS_MARGIN_S, AggregateRow, DayCount
from transforms.validate import shard_of

TOP_SHARDS = 16  # shards of stage 1 (parallelism of the per-window ranking)
CLEANUP_GRACE_S = 60  # processing time between a window's drop time and its state's clearing
_HOUR_S = TOP_GRANULARITY_SECONDS["hour"]
_DAY_S = TOP_GRANULARITY_SECONDS["day"]
_Offers = list[tuple[str, int]]  # [(video_id, count), ...]
_WindowShard = tuple[str, str, int, int]  # (event_type, granularity, window_start_s, shard)
_Window = tuple[str, str, int]  # (event_type, granularity, window_start_s)


class TopRow(NamedTuple):
    """One top list to store: ``items`` ``((video_id, count), ...)`` ranked by ``top_rank``, at
    most ``TOP_K``; ``cell_timestamp_us`` as in the module docstring."""

    event_type: str
    granularity: str
    window_start_s: int
    items: tuple
    cell_timestamp_us: int


class BoundedTop:
    """The top ``k`` (``top_rank``) of ``(video_id, count)`` offers where each video's newest
    count is its largest: ``offer`` keeps a video's largest count, drops the lowest ranked past
    ``k`` entries, and says whether the kept entries changed."""

    def __init__(self, k: int, items=()) -> None:
        self.k = k
        self.counts: dict[str, int] = dict(items)
        self._worst: tuple[str, int] | None = None

    def offer(self, video_id: str, count: int) -> bool:
        counts = self.counts
        old = counts.get(video_id)
        if old is not None:
            if count <= old:
                return False
            counts[video_id] = count
            self._worst = None
            return True
        if len(counts) >= self.k:
            if self._worst is None:
                self._worst = max(counts.items(), key=top_rank)
            if top_rank((video_id, count)) >= top_rank(self._worst):
                return False
            del counts[self._worst[0]]
        counts[video_id] = count
        self._worst = None
        return True

    def items(self) -> tuple:
        """The kept entries ranked by ``top_rank``."""
        return tuple(sorted(self.counts.items(), key=top_rank))


def top_of(counts, k: int = TOP_K) -> tuple:
    """The first ``k`` of ``(video_id, count)`` pairs (each video once) ranked by ``top_rank``."""
    return tuple(sorted(counts, key=top_rank)[:k])


def drop_at_s(granularity: str, window_start_s: int, allowed_lateness_s: int) -> int:
    """When a stage's state of a window is cleared (module docstring), epoch seconds."""
    return window_start_s + 2 * TOP_GRANULARITY_SECONDS[granularity] + allowed_lateness_s + WINDOW_LATENESS_MARGIN_S


def row_offers(rows: list[AggregateRow]):
    """A firing's rows -> ``(event_type, granularity, window_start_s, video_id, count)`` each."""
    return ((r.event_type, r.granularity, r.window_start_s, r.video_id, r.aggregate.count) for r in rows)


def day_offers(days: list[DayCount]):
    """A firing's day counts -> ``(event_type, "day", day_start_s, video_id, count)`` each."""
    return ((d.event_type, "day", d.day_start_s, d.video_id, d.count) for d in days)


class WindowOffers(beam.DoFn):
    """A firing's list, read by ``offers_of`` (``row_offers`` or ``day_offers``) -> ``((event_type,
    granularity, window_start_s, shard), [(video_id, count), ...])``: per stage-1 key, each video's highest
    count among the bundle's elements (a higher count of a video holds every lower one: counts
    only grow), emitted at the end of the bundle, one element per key, timestamped with the
    window's start. Fewer, larger elements into the keyed stage: each element crossing a stage
    costs more than its offers."""

    def __init__(self, shards: int, offers_of) -> None:
        self._shards, self._offers_of = shards, offers_of

    def start_bundle(self) -> None:
        self._offers: dict[tuple, dict[str, int]] = defaultdict(dict)

    def process(self, counts):
        offers, shards = self._offers, self._shards
        for event_type, granularity, window_s, video_id, count in self._offers_of(counts):
            by_video = offers[(event_type, granularity, window_s, shard_of(video_id, shards))]
            if count > by_video.get(video_id, 0):
                by_video[video_id] = count

    def finish_bundle(self):
        for key, by_video in self._offers.items():
            yield WindowedValue((key, list(by_video.items())), Timestamp(seconds=key[2]), (GlobalWindow(),))
        self._offers = defaultdict(dict)


class _Cleared(beam.DoFn):
    """A stateful stage with one state, ``STATE`` (JSON bytes), cleared ``CLEANUP_GRACE_S`` of
    processing time after the watermark passes ``drop_at_s`` (module docstring). Each subclass
    takes its own specs and callbacks from ``_cleanup_specs``."""

    def __init__(self, allowed_lateness_s: int, k: int = TOP_K, grace_s: int | None = None) -> None:
        self._lateness_s, self._k, self._grace_s = allowed_lateness_s, k, grace_s

    def _arm(self, timer, granularity: str, window_start_s: int) -> None:
        timer.set(Timestamp(seconds=drop_at_s(granularity, window_start_s, self._lateness_s)))


def _cleanup_specs():
    """``(STATE, CLEANUP, on_cleanup, on_grace)`` of one ``_Cleared`` subclass: its state spec,
    its watermark timer at ``drop_at_s``, and the callbacks that clear the state when that
    timer fires, or ``grace_s`` of processing time after it when set (new specs per class: Beam
    binds one callback per spec)."""
    state_spec = ReadModifyWriteStateSpec("state", BytesCoder())
    cleanup_spec = TimerSpec("cleanup", TimeDomain.WATERMARK)
    grace_spec = TimerSpec("grace", TimeDomain.REAL_TIME)

    @on_timer(cleanup_spec)
    def on_cleanup(self, grace=beam.DoFn.TimerParam(grace_spec), state=beam.DoFn.StateParam(state_spec)):
        if self._grace_s is None:
            state.clear()
        else:
            grace.set(Timestamp.now() + self._grace_s)

    @on_timer(grace_spec)
    def on_grace(self, state=beam.DoFn.StateParam(state_spec)):
        state.clear()

    return state_spec, cleanup_spec, on_cleanup, on_grace


class ShardTop(_Cleared):
    """Stage 1 (module docstring): ``((event_type, granularity, window_start_s, shard),
    [(video_id, count), ...])`` -> ``((event_type, granularity, window_start_s), [(video_id,
    count), ...])``: the offers that changed the shard's top K, when there are any. State: the
    kept ``[[video_id, count], ...]``."""

    STATE, CLEANUP, on_cleanup, on_grace = _cleanup_specs()

    def process(self, element, state=beam.DoFn.StateParam(STATE), cleanup=beam.DoFn.TimerParam(CLEANUP)):
        (event_type, granularity, window_s, shard), offers = element
        stored = state.read()
        if stored is None:
            self._arm(cleanup, granularity, window_s)
        top = BoundedTop(self._k, orjson.loads(stored) if stored else ())
        changed = [(video_id, count) for video_id, count in offers if top.offer(video_id, count)]
        if changed:
            state.write(orjson.dumps(list(top.counts.items())))
            yield (event_type, granularity, window_s), changed


class MergeTop(_Cleared):
    """Stage 2 (module docstring): ``((event_type, granularity, window_start_s), [(video_id,
    count), ...])`` -> ``[TopRow]`` when the window's top K changed. State: ``[base_ms,
    [[video_id, count], ...]]``."""

    STATE, CLEANUP, on_cleanup, on_grace = _cleanup_specs()

    def process(self, element, state=beam.DoFn.StateParam(STATE), cleanup=beam.DoFn.TimerParam(CLEANUP)):
        (event_type, granularity, window_s), offers = element
        stored = state.read()
        if stored is None:
            self._arm(cleanup, granularity, window_s)
        base_ms, kept = orjson.loads(stored) if stored else (wall_clock_ms(), ())
        top = BoundedTop(self._k, kept)
        changed = False
        for video_id, count in offers:
            changed |= top.offer(video_id, count)
        if not changed:
            return ()
        state.write(orjson.dumps([base_ms, list(top.counts.items())]))
        items = top.items()
        return [
            [TopRow(event_type, granularity, window_s, items, cell_timestamp_us(base_ms, sum(c for _, c in items)))]
        ]


class TopEntities(beam.PTransform):
    """Streaming top lists (module docstring): ``(rows, day_counts)``, ``CountEvents``' outputs
    of those names -> ``PCollection[list[TopRow]]``. ``k``: entries kept per window (``TOP_K``;
    tests use fewer).
    ``cleanup_grace_s``: seconds of processing time the state outlives its drop time, or None
    to clear it at the drop time (module docstring, "State cleanup")."""

    def __init__(
        self, allowed_lateness_s: int, shards: int = TOP_SHARDS, k: int = TOP_K, cleanup_grace_s: int | None = None
    ) -> None:
        super().__init__()
        self._lateness_s, self._shards, self._k = allowed_lateness_s, shards, k
        self._grace_s = cleanup_grace_s

    def expand(self, rows_and_day_counts):
        rows, day_counts = rows_and_day_counts
        # typed keys: deterministic key coders for the stateful stages. A ParDo on each input,
        # not a Flatten of them: Beam's portable fuser fails ("consumed but never produced") on
        # a PCollection read by a Flatten and another transform (apache/beam#34647), as the rows are.
        offers = [
            pcoll | name >> beam.ParDo(WindowOffers(self._shards, read)).with_output_types(tuple[_WindowShard, _Offers])
            for name, pcoll, read in (("window offers", rows, row_offers), ("day offers", day_counts, day_offers))
        ]
        return (
            offers
            | "minute, hour and day offers" >> beam.Flatten().with_output_types(tuple[_WindowShard, _Offers])
            | "top per shard"
            >> beam.ParDo(ShardTop(self._lateness_s, self._k, self._grace_s)).with_output_types(tuple[_Window, _Offers])
            | "top per window" >> beam.ParDo(MergeTop(self._lateness_s, self._k, self._grace_s))
        )


def _ranked(enriched_rows, hours: frozenset):
    """``list[EnrichedRow]`` -> ``((event_type, granularity, window_start_s), (video_id, count))``
    per row of a window starting in one of ``hours`` (epoch s)."""
    for e in enriched_rows:
        r = e.row
        if r.window_start_s - r.window_start_s % _HOUR_S in hours:
            yield (r.event_type, r.granularity, r.window_start_s), (r.video_id, r.aggregate.count)


def _hours_of_days(enriched_rows, days: frozenset):
    """``list[EnrichedRow]`` -> ``((event_type, video_id, day_start_s), hour count)`` per hour row
    of one of ``days`` (epoch s)."""
    for e in enriched_rows:
        r = e.row
        if r.granularity == "hour" and r.window_start_s - r.window_start_s % _DAY_S in days:
            yield (r.event_type, r.video_id, r.window_start_s - r.window_start_s % _DAY_S), r.aggregate.count


class TopFromRows(beam.PTransform):
    """Batch top lists (module docstring): ``PCollection[list[EnrichedRow]]`` (final aggregates)
    -> ``PCollection[list[TopRow]]``. ``hours``: the hour starts (epoch s) whose minute and hour
    lists are made (rows of other hours make none); ``days``: the day starts (epoch s) whose day
    lists are made, each the sum of its hour rows: the rows must hold all 24 hours of each.
    Cell timestamps from the wall clock when a list is made (a recompute's cells win)."""

    def __init__(self, hours, days) -> None:
        super().__init__()
        self._hours, self._days = frozenset(hours), frozenset(days)
        if any(d % _DAY_S for d in self._days):
            raise ValueError(f"days must be UTC day starts, got {sorted(self._days)}")

    def expand(self, rows):
        day_counts = (
            rows
            | "hours of days" >> beam.FlatMap(_hours_of_days, self._days)
            | "day counts" >> beam.CombinePerKey(sum)
            | "day offers" >> beam.MapTuple(lambda k, count: ((k[0], "day", k[2]), (k[1], count)))
        )
        return (
            ((rows | "window offers" >> beam.FlatMap(_ranked, self._hours)), day_counts)
            | "all offers" >> beam.Flatten()
            | "top per window" >> beam.combiners.Top.PerKey(TOP_K, key=top_rank, reverse=True)
            | "top rows" >> beam.MapTuple(_top_row)
        )


def _top_row(key, items) -> list[TopRow]:
    ranked = top_of(items)
    return [TopRow(*key, ranked, cell_timestamp_us(wall_clock_ms(), sum(c for _, c in ranked)))]
