"""Dedup by ``event_id`` and the ``too_late`` rule (docs/contract.md, "Acceptance"), in one stateful DoFn.

Input: ``((DEDUP_KEY, shard), (arrival_us, [Event, ...]))`` from ``ValidateEvents``, plus,
when the view comes from timers (below), one ``((DEDUP_KEY, shard), (0, []))`` element per
shard from ``probe_elements`` (an empty chunk, stamped with the wall clock, that starts the
shard's search for the watermark).

Dedup. A shard key (``crc32(event_id) % dedup_shards``) holds every remembered id of its
shard, grouped by the event-time minute of the first accepted copy, so a copy is found
whatever time it carries (a re-stamped copy is the same event while its id is
remembered). A minute's ids are forgotten together, by one event-time timer per key set
at the earliest ``minute end + allowed_lateness``: by then every copy carrying that time
is ``too_late``, so no copy with the same time can ever be counted twice, and state stays
bounded.

State is a bag of ``(minute, encode_ids(ids))`` entries plus a version, a fresh random token
drawn before every write (``state_values.new_version``). Each process keeps the ids of the
keys it serves in memory (``_ShardIds``), tagged with the version it was built from
(``state_values.cached_view``): a key that moved between workers, or state restored from a
checkpoint, never matches a view built elsewhere or before.

The watermark view. A DoFn is not told its input watermark (docs/contract.md, "Acceptance":
the job judges ``too_late`` against its own view of it, lagging by at most 5 s). The view
is per shard key, in state, and comes from one of two places:

* ``stamped_watermark=True``: each element's timestamp is the watermark it arrived at
  (``transforms.pubsub_io.ReadFromPubSubPortable`` with one reader stamps messages so, and
  the scenario tests' ``TestStream`` does the same); a message is judged against its own
  stamp (or the key's view from expiry timers, below, when that is higher), never against
  another message's (the contract's watermark at arrival is each message's own), so messages of
  one key may reach this stage out of order. Only for one stamping source: the stamps of
  several readers are each their own reader's watermark, which can be above the source's
  (the minimum over the readers).
* ``stamped_watermark=False`` (any number of source readers, or a source whose element
  timestamps are publish or event times): every shard key keeps a
  *ladder* of event-time timers at ``view + 5 s * 2**i`` (i = 0..41, dynamic timer tags
  ``"0"`` .. ``"41"``). A timer that fires at ``T`` proves the watermark reached ``T``; the
  view becomes the highest rung that fired and the rungs up to one above it are set again
  from there (``_set_ladder``): while the watermark creeps forward rung 0 fires every 5 s
  of event time, and after a jump of D the view is back within 5 s in about
  log2(D / 5 s) rounds (a round: the due timers of a key fire together).
  A ladder climbing from nowhere (the minimum of time, 292,000 years back) would take
  ~41 rounds, and every rung still below the watermark holds this stage's output
  watermark there (Beam holds a stateful DoFn's output watermark at its pending
  event-time timers; Python's timers hold at their firing time), and on-time panes
  downstream wait for it. So the ladder is found by a *search* from a
  guess ``G`` of the watermark (``_maybe_search``): rungs ``"{k}d0"`` .. ``"{k}d41"`` at
  ``G - 5 s * 2**i`` (those above the view), ``k`` the search's slot. All the rungs below
  the watermark fire in the next round, and the highest of them is within ``|G - W|`` of
  it; it starts the ladder from there like an ordinary rung (``"{k}dj"`` counts as rung
  ``j``). The guesses: an element's timestamp (``ReadFromPubSubPortable`` stamps each
  message with its reader's watermark; a native source with its publish or event time)
  more than ``SEARCH_GAP_S`` above the view and as far from the guess of every search
  whose first rung has not fired yet; the probe elements (``probe_elements``, one per
  key, so that keys without data find the watermark too and hold nothing below it) carry
  the wall clock at the job's start. Several searches can start before a round (the
  probe, a replay's first stamp, a publisher's ``ts`` years ahead or a backfill's years
  back): each has its own slot, so a later one moves no rung of an earlier one, and a
  guess that was right is found in the next round whatever came after it. A key holds at
  most ``SEARCH_SLOTS`` searches (state ``[(guess_us, view_us at its start), ...]``, read
  only for a stamp more than ``SEARCH_GAP_S`` above the view): a new one takes the slot of
  a search whose first rung fired, or a new slot, else that of one a round has already
  tested (the view rose since it started, so the watermark was below its first rung then),
  else none (no search until the next round: a search no round has tested is never
  replaced; ``_slot_for``). So a key has at most ``(SEARCH_SLOTS + 1) * LADDER_RUNGS``
  timers and starts at most ``SEARCH_SLOTS`` searches between two rounds whatever its
  elements carry. A replaced search's rungs that the new one does not set again stay:
  above the watermark of the round that tested it, they fire when the watermark gets
  there, and any rung that fires proves it. Where a stage's input watermark is held at its
  own earliest pending timer, the ladder advances 5 s per round: use the stamped view there
  (related: apache/beam#29772).

Expiry timers raise the view (in both modes): an expiry at ``T`` forgot ids, so no copy
judged after it may be judged below ``T``; it fired at this stage's input watermark, which
no later element of the key was stamped below (a stage's output watermark is held until
the elements before it are out). The view is per key: Beam orders a key's elements and
timers by time, but not one key's timers against other keys' elements (timers may fire at
the upstream watermark while older elements of other keys still wait in the stage, so a
view shared between keys could run hours ahead). Both views are
lower bounds of the watermark each element of the key is judged at, so neither refuses an
event the contract accepts.

Outputs: main, the accepted events of one message per event-time minute, with the
message's arrival time (``(arrival_us, [Event, ...])``, timestamp = minute start);
``DEAD_LETTER``, ``too_late`` dead letters (their processing time is the message's arrival
time). Duplicates are counted (``duplicates_dropped``), not dead-lettered.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import apache_beam as beam
import orjson
from apache_beam.coders import BytesCoder, IterableCoder, TupleCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from schemas.archive import DeadLetter
from schemas.event import TOO_LATE, US_PER_S, format_time_us
from transforms import metrics
from transforms.state_values import cached_view, dumps_exact, new_version, rewrite_bag
from transforms.validate import DEAD_LETTER, DEDUP_KEY

WATERMARK_VIEW_STEP_S = 5
LADDER_RUNGS = 42  # 5 s * 2**41 spans Beam's whole timestamp range
SEARCH_GAP_S = WATERMARK_VIEW_STEP_S * 2**6  # a stamp further above the view starts a search (_slot_for)
SEARCH_SLOTS = 3  # searches a key holds at once, each with rung tags of its own (_slot_for)
_DESCENDING = "d"  # a search's rung tags: f"{slot}d{i}" (a ladder's: f"{i}")
_STEP_US = WATERMARK_VIEW_STEP_S * US_PER_S
_END_US = GlobalWindow().max_timestamp().micros
_START_US = MIN_TIMESTAMP.micros
# Per pipeline (keyed by a token made at construction), shared by every instance of the
# DoFn in this process: the ids of the shard keys served here.
_IDS: dict[tuple[str, tuple[int, int]], _ShardIds] = {}


def probe_elements(shards: int) -> list[TimestampedValue]:
    """The elements that start every shard key's search for the watermark (fed once, from an
    ``Impulse``): ``((DEDUP_KEY, shard), (0, []))``, timestamped with the wall clock now
    (the search's guess; an ``Impulse``'s own timestamp, the minimum of time, is no guess)."""
    now = Timestamp.now()
    return [TimestampedValue(((DEDUP_KEY, s), (0, [])), now) for s in range(shards)]


class _ShardIds:
    """The remembered ids of one shard key, ``{minute_s: set(ids)}``, at a state version, and
    the bag's entries per minute (``blobs``: re-added, not re-encoded, when the bag is
    rewritten; the same objects as the bag's where state is kept in memory)."""

    def __init__(self, version: int, entries) -> None:
        self.version = version
        self.by_minute: dict[int, set[str]] = defaultdict(set)
        self.blobs: dict[int, list[bytes]] = defaultdict(list)
        for minute_s, blob in entries:
            self.add(minute_s, decode_ids(blob), blob)

    def add(self, minute_s: int, ids, blob: bytes) -> None:
        self.by_minute[minute_s].update(ids)
        self.blobs[minute_s].append(blob)

    def remembered(self, candidates: set[str]) -> set[str]:
        """The ids among ``candidates`` that this shard remembers (set intersections, in C)."""
        return set().union(*(candidates & ids for ids in self.by_minute.values()))

    def entries(self):
        """The bag's entries for what the view holds: ``(minute_s, blob)``."""
        return ((minute_s, blob) for minute_s, blobs in self.blobs.items() for blob in blobs)

    def drop_until(self, expiry_s_of) -> None:
        """Forget the minutes for which ``expiry_s_of(minute)`` is True."""
        for minute_s in [m for m in self.by_minute if expiry_s_of(m)]:
            del self.by_minute[minute_s], self.blobs[minute_s]


def _slot_for(searches: list[tuple[int, int]], stamp_us: int, view_us: int) -> int | None:
    """The slot for a search from ``stamp_us`` at view ``view_us``, or None for no search.

    ``searches``: ``[(guess_us, view_us when it started), ...]``, the search in slot ``k`` at
    position ``k``. A search is *done* once the view reached its first rung (``guess - 5 s``):
    it has nothing left to find. One that is not done and whose guess is within
    ``SEARCH_GAP_S`` of the stamp makes the search needless (its rungs are still set). Else
    the slot is the first done one, or a new one while fewer than ``SEARCH_SLOTS`` are held,
    or, among the searches that a round has tested (the view rose since they started, and
    their first rung did not fire: the watermark was below it), the one with the highest
    guess. A search that no round has tested yet is never replaced: if every slot holds one,
    there is no search (until the next round)."""
    gap_us = SEARCH_GAP_S * US_PER_S
    pending = [guess_us - _STEP_US > view_us for guess_us, _ in searches]
    if any(p and abs(stamp_us - guess_us) <= gap_us for p, (guess_us, _) in zip(pending, searches)):
        return None
    if False in pending:
        return pending.index(False)
    if len(searches) < SEARCH_SLOTS:
        return len(searches)
    tested = [k for k, (_, started_view_us) in enumerate(searches) if view_us > started_view_us]
    return max(tested, key=lambda k: searches[k][0], default=None)


def encode_ids(ids) -> bytes:
    """A minute's ids as one opaque state value (a JSON array), so state that is copied per
    access (deep copies in memory) copies one object, not every id."""
    return dumps_exact(sorted(ids))


def decode_ids(blob: bytes) -> list[str]:
    return orjson.loads(blob)


class DedupAndJudgeLateness(beam.DoFn):
    IDS = BagStateSpec("ids", TupleCoder((VarIntCoder(), BytesCoder())))
    VERSION = ReadModifyWriteStateSpec("version", VarIntCoder())
    VIEW = ReadModifyWriteStateSpec("watermark_view_us", VarIntCoder())
    LADDER_BASE = ReadModifyWriteStateSpec("ladder_base_us", VarIntCoder())
    SEARCHES = ReadModifyWriteStateSpec("watermark_searches", IterableCoder(TupleCoder((VarIntCoder(), VarIntCoder()))))
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
    RUNG = TimerSpec("watermark_ladder", TimeDomain.WATERMARK)

    def __init__(self, allowed_lateness_s: int, stamped_watermark: bool) -> None:
        self._lateness_s = allowed_lateness_s
        self._stamped = stamped_watermark
        self._token = uuid.uuid4().hex

    def setup(self) -> None:
        self._accepted = metrics.counter(metrics.EVENTS_ACCEPTED)
        self._duplicates = metrics.counter(metrics.DUPLICATES_DROPPED)
        self._dead = metrics.DeadLetterCounters()

    @staticmethod
    def _view_us(view) -> int:
        stored = view.read()
        return _START_US if stored is None else stored

    @staticmethod
    def _raise_view(view, seen_us: int) -> int:
        """Raise the view to ``seen_us`` (a time the watermark is known to have reached);
        returns the view."""
        view_us = DedupAndJudgeLateness._view_us(view)
        if seen_us > view_us:
            view.write(seen_us)
            return seen_us
        return view_us

    def _expiry_s(self, minute_s: int) -> int:
        return minute_s + 60 + self._lateness_s

    def _shard_ids(self, key, bag, version_state) -> _ShardIds:
        return cached_view(_IDS, (self._token, key), version_state, lambda v: _ShardIds(v, bag.read()))

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        ids=beam.DoFn.StateParam(IDS),
        version=beam.DoFn.StateParam(VERSION),
        view=beam.DoFn.StateParam(VIEW),
        base=beam.DoFn.StateParam(LADDER_BASE),
        searches=beam.DoFn.StateParam(SEARCHES),
        expiry=beam.DoFn.TimerParam(EXPIRY),
        rung=beam.DoFn.TimerParam(RUNG),
    ):
        key, (arrival_us, chunk) = element
        if self._stamped:  # this message's own watermark at arrival, not the key's highest stamp
            view_us = max(timestamp.micros, self._view_us(view))
        else:
            view_us = self._view_us(view)
            if timestamp.micros - view_us > SEARCH_GAP_S * US_PER_S:  # the searches are read only then
                self._maybe_search(timestamp.micros, view_us, base, searches, rung)
        if chunk:
            yield from self._judge(key, arrival_us, chunk, view_us, ids, version, expiry)

    def _judge(self, key, arrival_us: int, chunk: list, view_us: int, ids, version, expiry):
        """Judge a non-empty chunk of one key's events against the watermark view ``view_us``:
        yields a ``too_late`` dead letter per event behind it, drops ids the key remembers, and
        yields the accepted ones as ``(arrival_us, events)`` per event minute (timestamped at the
        minute), remembering their ids and setting the expiry timer."""
        boundary_us = view_us - self._lateness_s * US_PER_S
        on_time = []
        for ev in chunk:
            if ev.time_us < boundary_us:
                self._dead.inc(TOO_LATE)
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    DeadLetter(
                        ev.raw,
                        TOO_LATE,
                        f"event_time {format_time_us(ev.time_us)} is more than "
                        f"{self._lateness_s} s behind the watermark (at least {format_time_us(view_us)})",
                        arrival_us,
                    ),
                )
            else:
                on_time.append(ev)
        if not on_time:
            return
        shard = self._shard_ids(key, ids, version)
        seen = shard.remembered({ev.event_id for ev in on_time})  # then: ids accepted from this chunk
        accepted: dict[int, list] = defaultdict(list)
        for ev in on_time:
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
            accepted[ev.time_us // (60 * US_PER_S) * 60].append(ev)
        n_accepted = sum(map(len, accepted.values()))
        if n_accepted < len(on_time):
            self._duplicates.inc(len(on_time) - n_accepted)
        if not accepted:
            return
        first_expiry_s = min(map(self._expiry_s, shard.by_minute), default=None)
        new_version(shard, version)  # before the view changes (state_values.new_version)
        for minute_s, events in accepted.items():
            minute_ids = [ev.event_id for ev in events]
            blob = encode_ids(minute_ids)
            ids.add((minute_s, blob))
            shard.add(minute_s, minute_ids, blob)
            yield beam.window.TimestampedValue((arrival_us, events), Timestamp(minute_s))
        self._accepted.inc(n_accepted)
        earliest_s = min(map(self._expiry_s, accepted))
        if first_expiry_s is None or earliest_s < first_expiry_s:
            expiry.set(Timestamp(earliest_s))

    @on_timer(EXPIRY)
    def on_expiry(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        ids=beam.DoFn.StateParam(IDS),
        version=beam.DoFn.StateParam(VERSION),
        view=beam.DoFn.StateParam(VIEW),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        self._raise_view(view, fired.micros)
        fired_s = fired.micros // US_PER_S
        shard = self._shard_ids(key, ids, version)
        new_version(shard, version)
        shard.drop_until(lambda minute_s: self._expiry_s(minute_s) <= fired_s)
        rewrite_bag(ids, shard.entries())
        if shard.by_minute:
            expiry.set(Timestamp(min(map(self._expiry_s, shard.by_minute))))

    @on_timer(RUNG)
    def on_rung(
        self,
        fired=beam.DoFn.TimestampParam,
        tag=beam.DoFn.DynamicTimerTagParam,
        view=beam.DoFn.StateParam(VIEW),
        base=beam.DoFn.StateParam(LADDER_BASE),
        rung=beam.DoFn.TimerParam(RUNG),
    ):
        view_us = self._raise_view(view, fired.micros)
        if view_us > base.read():
            self._set_ladder(view_us, base, rung, min(int(tag.rpartition(_DESCENDING)[2]) + 2, LADDER_RUNGS))

    @staticmethod
    def _maybe_search(stamp_us: int, view_us: int, base, searches, rung) -> None:
        """Search from an element's timestamp, more than ``SEARCH_GAP_S`` above the view (a
        first guess, a jump of the watermark, or a first guess far off: the wall clock of the
        probes against a replay of 2013), in the slot ``_slot_for`` gives, if any. ``searches``
        holds the key's searches, ``[(guess_us, view_us when it started), ...]``, one per slot."""
        held = list(searches.read() or ())
        slot = _slot_for(held, stamp_us, view_us)
        if slot is None:
            return
        held[slot : slot + 1] = [(stamp_us, view_us)]  # replaces the slot's search, or appends one
        searches.write(held)
        if base.read() is None:
            base.write(view_us)
        for i in range(LADDER_RUNGS):
            at_us = stamp_us - _STEP_US * 2**i
            if at_us <= view_us:
                break
            rung.set(Timestamp(micros=min(at_us, _END_US)), dynamic_timer_tag=f"{slot}{_DESCENDING}{i}")

    @staticmethod
    def _set_ladder(from_us: int, base, rung, rungs: int = LADDER_RUNGS) -> None:
        """Set rungs ``0 .. rungs - 1`` above ``from_us``. After rung ``k`` fires only rungs
        ``0 .. k + 1`` move: the higher ones stay within twice their distance from the new
        view, and a creeping watermark costs two timers per rung 0 instead of the ladder."""
        base.write(from_us)
        for i in range(rungs):
            at_us = min(from_us + _STEP_US * 2**i, _END_US)
            if at_us > from_us:
                rung.set(Timestamp(micros=at_us), dynamic_timer_tag=str(i))
