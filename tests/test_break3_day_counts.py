"""Hostile tests of ``FirePanes``' day counts (``transforms.aggregate.DAY_COUNTS``, commit 6266ca2).

One pane shard key is driven directly (``tests.test_day_counts.DayShard``), with what
``tests/test_day_counts.py`` leaves out: allowed lateness from 10 minutes to two days (hour
windows of a day open long after it ends, days whose dropped hours overlap), elements holding
several minutes of several days at once (as ``PreAggregate`` makes them), events bunched in
the last hour of a day and across midnight UTC, lost caches (a key moved) and restores from a
checkpoint taken at any step (state and the watermark timer as they were then; the inputs
since are lost with the failed attempt, so the reference goes back too). Invariant: no day
count is ever above the day's events so far, the highest day count of each (video, day) is
exactly its events once the input ends, and the state of dropped hours is gone then. And end to
end on the local runner (``test_streaming_day_lists_across_midnight_equal_the_reference``, slow,
emulator): streams over midnight UTC with hours dropped before it, late events of 23:xx after
it, too-late ones and duplicates; every stored list equals the reference (forgetting dropped
hours' counts makes it fail).

``test_a_restore_from_a_job_without_dropped_hours_state`` (xfail, not fixed): a job of the
version before 6266ca2 had no ``dropped_hour_day_counts`` state (its day lists came from a
stage keyed by video, gone now); restored from its checkpoint or savepoint, the new
``FirePanes`` takes the hours that job had already dropped as none, and every later day count
of that day misses them. The restore writes no restart marker (an ``Impulse`` is not emitted
again), so ``viewcounts recompute --after-restarts`` does not select that day either.
"""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S, format_time_us
from schemas.storage import Aggregate
from tests.test_day_counts import DAY0_S, DayShard
from tests.test_pane_timers import END_US, _call, _pending
from transforms import aggregate
from transforms.aggregate import FirePanes

DAY_S = 86400
SPAN_S = 3 * DAY_S
LATENESS_S = st.sampled_from([600, 3599, 3600, 3 * 3600 + 7, DAY_S - 60, DAY_S + 1800, 2 * DAY_S])
VIDEOS = ("V1", "V2", "V#3")


class _Shard(DayShard):
    """A ``DayShard`` of any allowed lateness that takes several minutes per element and can be
    restored from a snapshot of its state and watermark timer."""

    def __init__(self, lateness_s: int) -> None:
        super().__init__()
        self.fn = FirePanes(lateness_s, 30)

    def add_minutes(self, by_minute: dict, arrival_us: int) -> None:
        self._collect(_call(self.fn.process, (1, (arrival_us, by_minute)), window_end=self.window_end,
                            early=self.early, **self.state))

    def snapshot(self):
        return {k: c.v for k, c in self.state.items()}, _pending(self.window_end)

    def restore(self, snap) -> None:
        values, at = snap
        for k, v in values.items():
            self.state[k].v = v
        self.window_end.clear()
        if at is not None:
            self.window_end.set(at)


@st.composite
def _runs(draw):
    lateness_s = draw(LATENESS_S)
    start_s = DAY0_S + 60 * draw(st.integers(1, SPAN_S // 60))  # the watermark at the start
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["add", "add", "add", "watermark", "watermark", "early", "moved", "checkpoint",
                                     "restore"]))
        if kind == "add":
            steps.append(("add", [(draw(st.sampled_from(["earliest", "near", "any"])), draw(st.integers(0, 12 * 60)),
                                   draw(st.sampled_from(VIDEOS)), draw(st.integers(1, 4)))
                                  for _ in range(draw(st.integers(1, 4)))]))
        elif kind == "watermark":
            steps.append(("watermark", draw(st.one_of(st.integers(1, 120), st.integers(120, 48 * 60)))))
        else:
            steps.append((kind, None))
    return lateness_s, start_s, steps


def _place(earliest_s: int, where: str, ahead_min: int) -> int:
    """A minute start not late at ``earliest_s`` (epoch s, a minute start): just within the
    lateness, around the next midnight UTC, or anywhere ahead."""
    midnight_s = (earliest_s // DAY_S + 1) * DAY_S
    m = {"earliest": earliest_s + 60 * (ahead_min % 90), "near": midnight_s + 60 * (ahead_min % 120 - 90),
         "any": earliest_s + 60 * ahead_min}[where]
    return max(m, earliest_s)


@settings(max_examples=300, deadline=None)
@given(_runs())
def test_day_counts_exact_at_any_lateness_with_restores(run):
    lateness_s, watermark_s, steps = run
    shard = _Shard(lateness_s)
    added: Counter = Counter()  # (video, day) -> events added so far
    arrival_us = DAY0_S * US_PER_S
    snap = (shard.snapshot(), watermark_s, Counter())
    for kind, arg in steps:
        arrival_us += US_PER_S
        seen = len(shard.firings)
        if kind == "add":  # each minute within the lateness of the watermark, as dedup accepts it
            earliest_s = (watermark_s - lateness_s + 59) // 60 * 60
            by_minute: dict = {}
            for where, ahead_min, video_id, n in arg:
                minute_s = _place(earliest_s, where, ahead_min)
                partials = by_minute.setdefault(minute_s, {})
                old = partials.get((video_id, "view"))
                partials[(video_id, "view")] = Aggregate((old.count if old else 0) + n, 0, 0.0, None, None)
                added[(video_id, minute_s - minute_s % DAY_S)] += n
            shard.add_minutes(by_minute, arrival_us)
        elif kind == "watermark":
            watermark_s += 60 * arg
            shard.advance_watermark(watermark_s * US_PER_S)
        elif kind == "early":
            shard.fire_early()
        elif kind == "moved":
            aggregate._WINDOWS.clear()
        elif kind == "checkpoint":
            snap = (shard.snapshot(), watermark_s, Counter(added))
        else:  # restored from the last checkpoint: what came after it is lost and not counted
            state, watermark_s, added = snap[0], snap[1], Counter(snap[2])
            shard.restore(state)
            aggregate._WINDOWS.clear()
            shard.firings.clear()  # the restored job's day lists restart from what it re-fires
            seen = 0
        for _rows, days in shard.firings[seen:]:
            for d in days:
                assert d.count <= added[(d.video_id, d.day_start_s)], (d, added)
    shard.advance_watermark(END_US)
    highest: Counter = Counter()
    for _rows, days in shard.firings:
        for d in days:
            highest[(d.video_id, d.day_start_s)] = max(highest[(d.video_id, d.day_start_s)], d.count)
    # every (video, day) fired since the last restore has its exact count as its highest
    for key, count in highest.items():
        assert count == added[key], (key, count, added[key])
    assert shard.state["dropped_hours"].read() is None
    assert shard.state["bag"].read() == []


@pytest.mark.xfail(strict=True, reason="6266ca2: a job restored from a checkpoint of the version before it has no "
                   "dropped_hour_day_counts state: the hours that job dropped count as none in every later day "
                   "count of their day (and no restart marker asks for a recompute)")
def test_a_restore_from_a_job_without_dropped_hours_state():
    shard = _Shard(600)
    day_s = DAY0_S
    for hour in range(6):  # one event per hour, 00:00 .. 05:00
        shard.add_minutes({day_s + hour * 3600: {("V1", "view"): Aggregate(1, 0, 0.0, None, None)}},
                          (day_s + hour * 3600) * US_PER_S)
    shard.advance_watermark((day_s + 5 * 3600 + 60) * US_PER_S)  # hours 00 .. 02 dropped, their counts kept
    assert shard.state["dropped_hours"].read() is not None
    # the older version's checkpoint: the same bag, bookkeeping and timers, no dropped_hours cell
    shard.state["dropped_hours"].clear()
    aggregate._WINDOWS.clear()
    shard.firings.clear()
    shard.add_minutes({day_s + 6 * 3600: {("V1", "view"): Aggregate(1, 0, 0.0, None, None)}},
                      (day_s + 6 * 3600) * US_PER_S)
    shard.advance_watermark(END_US)
    highest = max(d.count for _rows, days in shard.firings for d in days if d.day_start_s == day_s)
    assert highest == 7  # the day's events: one per hour 00 .. 06


MIDNIGHT_US = (DAY0_S + DAY_S) * US_PER_S  # 2024-05-15T00:00:00Z, a day after test_properties' START's day
_STREAM_VIDEOS = ["V1", "V2", "V3", "V#1", "é"]


@st.composite
def _midnight_streams(draw):
    """Steps as ``tests.test_top_streaming.streams`` makes them, over midnight UTC: the
    processing clock and the watermark moved from ``START`` to 20:00-21:00 (hours dropped
    before the day ends: ``FirePanes``' dropped-hour day counts), then in phases to 23:40, 23:50-23:59, 00:00-00:09 (the last hour's late events still accepted), 00:10-00:40
    (they are too late), each phase publishing events from 900 s behind the watermark (too late
    past 600 s) to 200 s ahead of it, with same-time copies: late events of the day's last hour
    after midnight, first events of the next day before it."""
    from tests.test_properties import START_US

    proc_us = MIDNIGHT_US - 4 * 3600 * US_PER_S
    steps, known = [("wait", (proc_us - START_US) // US_PER_S)], []
    for lo_s, hi_s in ((-4 * 3600, -3 * 3600), (-20 * 60, -20 * 60), (-10 * 60, -60), (0, 540), (600, 2400)):
        wm_us = MIDNIGHT_US + draw(st.integers(lo_s, hi_s)) * US_PER_S
        if wm_us > proc_us:
            steps.append(("wait", (wm_us - proc_us) // US_PER_S))
            proc_us = wm_us
        steps.append(("watermark", wm_us))
        for _ in range(draw(st.integers(1, 3))):
            events = []
            for _ in range(draw(st.integers(1, 8))):
                if known and draw(st.integers(0, 4)) == 0:
                    events.append(dict(draw(st.sampled_from(known))))  # a same-time copy: a duplicate
                    continue
                t = wm_us + draw(st.integers(-900, 200)) * US_PER_S
                boundary = wm_us - 600 * US_PER_S
                if abs(t - boundary) < 10 * US_PER_S:
                    t = boundary + 20 * US_PER_S
                e = {"event_id": f"e{len(known)}", "video_id": draw(st.sampled_from(_STREAM_VIDEOS)),
                     "event_type": "view", "event_time": format_time_us(t)}
                events.append(e)
                known.append(e)
            steps.append(("publish", events))
            if draw(st.booleans()):
                s = draw(st.integers(1, 40))  # an early firing may come between publishes
                steps.append(("wait", s))
                proc_us += s * US_PER_S
    return steps


@pytest.mark.emulator
@pytest.mark.slow
@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_midnight_streams())
def test_streaming_day_lists_across_midnight_equal_the_reference(bigtable_host, steps):
    """End to end on the local runner (``tests.test_top_streaming.check_stream``: the full job
    and a K=2 branch over 3 shards, every stored list equal to the reference's, days summing
    their hours), over midnight UTC."""
    from tests.test_top_streaming import check_stream

    check_stream(steps)
