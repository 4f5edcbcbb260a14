"""Dedup by ``event_id`` and the ``too_late`` rule (SPEC.md section 2), in one stateful DoFn.

Input: ``((shard, minute_start_s), [Event, ...])`` from ``ValidateEvents``. Because every
copy of an event carries the same event time, all copies meet under the same key; state
for a key holds the ids of one shard of one event-time minute, and all of it expires at
once, when the watermark passes ``minute end + allowed_lateness``: by then every event of
that minute is ``too_late``, so no copy can be counted twice (SPEC.md section 2).

The watermark view. A DoFn is not told its input watermark, so each key keeps its own
*view*: an event-time timer that fires at ``minute_start + L``, then every
``WATERMARK_VIEW_STEP_S`` seconds up to ``minute_end + L``. A timer that fired at ``T`` proves
the watermark reached ``T``, so the view lags the runner's watermark by at most one step
where it matters for this minute (SPEC.md allows 5 s). A key seen for the first time
starts from the largest timer any key of this pipeline fired in this process (a lower
bound of the watermark); after a restart that bound starts again from nothing, which can
only admit, never wrongly refuse, an event.

Outputs: main, the accepted events of the chunk (``[Event, ...]``, timestamp = minute
start); ``DEAD_LETTER``, ``too_late`` dead letters. Duplicates are counted
(``duplicates_dropped``), not dead-lettered.
"""
from __future__ import annotations

import uuid

import apache_beam as beam
from apache_beam.coders import IterableCoder, StrUtf8Coder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from schemas.archive import DeadLetter
from schemas.event import TOO_LATE, US_PER_S, format_time_us
from transforms import metrics
from transforms.validate import DEAD_LETTER

WATERMARK_VIEW_STEP_S = 5
# Lower bounds of the watermark per pipeline (keyed by a token made at construction), shared
# by every instance of the DoFn in this process.
_WATERMARK_FLOOR_US: dict[str, int] = {}


class DedupAndJudgeLateness(beam.DoFn):
    IDS = BagStateSpec("ids", IterableCoder(StrUtf8Coder()))
    VIEW = ReadModifyWriteStateSpec("watermark_view_us", VarIntCoder())
    STEP = TimerSpec("watermark_step", TimeDomain.WATERMARK)

    def __init__(self, allowed_lateness_s: int) -> None:
        self._lateness_s = allowed_lateness_s
        self._token = uuid.uuid4().hex

    def setup(self) -> None:
        self._accepted = metrics.counter(metrics.EVENTS_ACCEPTED)
        self._duplicates = metrics.counter(metrics.DUPLICATES_DROPPED)
        self._dead = metrics.DeadLetterCounters()

    def process(self, element, ids=beam.DoFn.StateParam(IDS), view=beam.DoFn.StateParam(VIEW),
                step=beam.DoFn.TimerParam(STEP)):
        (_, minute_s), chunk = element
        expiry_s = minute_s + 60 + self._lateness_s
        view_us = view.read()
        if view_us is None:
            view_us = _WATERMARK_FLOOR_US.get(self._token, -(2**62))
            if view_us < expiry_s * US_PER_S:
                view.write(view_us)
                step.set(Timestamp(self._next_step_s(minute_s, view_us)))
        boundary_us = view_us - self._lateness_s * US_PER_S
        seen = None
        new_ids: set[str] = set()
        accepted = []
        for ev in chunk:
            if ev.time_us < boundary_us:
                self._dead.inc(TOO_LATE)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, beam.window.TimestampedValue(
                    DeadLetter(ev.raw, TOO_LATE,
                               f"event_time {format_time_us(ev.time_us)} is more than {self._lateness_s} s "
                               f"behind the watermark ({format_time_us(view_us)})", view_us),
                    Timestamp(micros=view_us)))
                continue
            if seen is None:
                seen = set().union(*ids.read())
            if ev.event_id in seen or ev.event_id in new_ids:
                self._duplicates.inc()
                continue
            new_ids.add(ev.event_id)
            accepted.append(ev)
        if new_ids:
            ids.add(sorted(new_ids))
            self._accepted.inc(len(accepted))
            yield beam.window.TimestampedValue(accepted, Timestamp(minute_s))

    def _next_step_s(self, minute_s: int, view_us: int) -> int:
        """The first view step of this minute strictly after ``view_us``."""
        first_s = minute_s + self._lateness_s
        if view_us < first_s * US_PER_S:
            return first_s
        steps = (view_us // US_PER_S - first_s) // WATERMARK_VIEW_STEP_S + 1
        return min(first_s + steps * WATERMARK_VIEW_STEP_S, minute_s + 60 + self._lateness_s)

    @on_timer(STEP)
    def on_step(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                ids=beam.DoFn.StateParam(IDS), view=beam.DoFn.StateParam(VIEW),
                step=beam.DoFn.TimerParam(STEP)):
        _, minute_s = key
        fired_us = fired.micros
        if fired_us > _WATERMARK_FLOOR_US.get(self._token, -(2**62)):
            _WATERMARK_FLOOR_US[self._token] = fired_us
        if fired_us >= (minute_s + 60 + self._lateness_s) * US_PER_S:
            ids.clear()
            view.clear()
            return
        view.write(fired_us)
        step.set(Timestamp(self._next_step_s(minute_s, fired_us)))
