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

``test_a_restore_from_a_job_without_dropped_hours_state``: a job of the version before 6266ca2
had no ``dropped_hour_day_counts`` state (its day lists came from a stage keyed by video, gone
now); restored from its checkpoint or savepoint, ``FirePanes`` cannot know the hours that job
had already dropped. It tells such a key (bookkeeping without that cell), marks the day
counts of the days begun by then incomplete, and writes a restart marker naming each such
day, so ``--after_restarts`` rebuilds their lists (``pipelines.restarts``): any day whose
count ends low must be one of them.
"""

from __future__ import annotations

import uuid
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
        self._collect(
            _call(
                self.fn.process,
                (1, (arrival_us, by_minute)),
                window_end=self.window_end,
                early=self.early,
                **self.state,
            )
        )

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
        kind = draw(
            st.sampled_from(["add", "add", "add", "watermark", "watermark", "early", "moved", "checkpoint", "restore"])
        )
        if kind == "add":
            steps.append(
                (
                    "add",
                    [
                        (
                            draw(st.sampled_from(["earliest", "near", "any"])),
                            draw(st.integers(0, 12 * 60)),
                            draw(st.sampled_from(VIDEOS)),
                            draw(st.integers(1, 4)),
                        )
                        for _ in range(draw(st.integers(1, 4)))
                    ],
                )
            )
        elif kind == "watermark":
            steps.append(("watermark", draw(st.one_of(st.integers(1, 120), st.integers(120, 48 * 60)))))
        else:
            steps.append((kind, None))
    return lateness_s, start_s, steps


def _place(earliest_s: int, where: str, ahead_min: int) -> int:
    """A minute start not late at ``earliest_s`` (epoch s, a minute start): just within the
    lateness, around the next midnight UTC, or anywhere ahead."""
    midnight_s = (earliest_s // DAY_S + 1) * DAY_S
    m = {
        "earliest": earliest_s + 60 * (ahead_min % 90),
        "near": midnight_s + 60 * (ahead_min % 120 - 90),
        "any": earliest_s + 60 * ahead_min,
    }[where]
    return max(m, earliest_s)


def _play(shard: _Shard, lateness_s: int, watermark_s: int, steps, clock: dict) -> Counter:
    """Run ``steps`` (``_runs``'s, or ``"restore old"``: restored from the last checkpoint as the
    version before 6266ca2 wrote it, without the ``dropped_hour_day_counts`` cell), with
    ``clock["s"]`` the processing clock (the watermark: a job that keeps up), then the input's
    end; no day count is ever above the day's events so far. Returns the events of each
    (video, day) added since the last restore (the inputs after the checkpoint restored are
    lost with the failed attempt, so the reference goes back too)."""
    added: Counter = Counter()  # (video, day) -> events added so far
    arrival_us = DAY0_S * US_PER_S
    snap = (shard.snapshot(), watermark_s, Counter())
    for kind, arg in steps:
        arrival_us += US_PER_S
        clock["s"] = watermark_s
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
            clock["s"] = watermark_s
            shard.advance_watermark(watermark_s * US_PER_S)
        elif kind == "early":
            shard.fire_early()
        elif kind == "moved":
            aggregate._WINDOWS.clear()
        elif kind == "checkpoint":
            snap = (shard.snapshot(), watermark_s, Counter(added))
        else:  # restored from the last checkpoint: what came after it is lost and not counted
            state, watermark_s, added = snap[0], snap[1], Counter(snap[2])
            clock["s"] = watermark_s
            shard.restore(state)
            if kind == "restore old":
                shard.state["dropped_hours"].clear()
            aggregate._WINDOWS.clear()
            shard.firings.clear()  # the restored job's day lists restart from what it re-fires
            seen = 0
        for _rows, days in shard.firings[seen:]:
            for d in days:
                assert d.count <= added[(d.video_id, d.day_start_s)], (d, added)
    shard.advance_watermark(END_US)
    return added


def _highest(shard: _Shard) -> Counter:
    """The highest day count of each (video, day) fired since the last restore."""
    highest: Counter = Counter()
    for _rows, days in shard.firings:
        for d in days:
            highest[(d.video_id, d.day_start_s)] = max(highest[(d.video_id, d.day_start_s)], d.count)
    return highest


@settings(max_examples=300, deadline=None)
@given(_runs())
def test_day_counts_exact_at_any_lateness_with_restores(run):
    lateness_s, watermark_s, steps = run
    shard = _Shard(lateness_s)
    added = _play(shard, lateness_s, watermark_s, steps, {})
    # every (video, day) fired since the last restore has its exact count as its highest
    for key, count in _highest(shard).items():
        assert count == added[key], (key, count, added[key])
    assert shard.state["dropped_hours"].read() is None
    assert shard.state["bag"].read() == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_runs(), st.integers(0, 39))
def test_a_restore_from_a_job_without_dropped_hours_state(tmp_path, monkeypatch, run, old_at):
    """The steps of ``_runs``, restored once (before step ``old_at``) from the last checkpoint
    as the version before 6266ca2 wrote it: the same bag, bookkeeping and timer, no
    ``dropped_hour_day_counts`` cell. Every day count stays at most the day's events; a day
    whose count ends low was marked incomplete (days begun after the restore are complete and
    end exact), and the restart markers the key wrote have ``plan_recompute`` select it (its
    day list is rebuilt once it closes); the state is gone at the end."""
    from pipelines.restarts import plan_recompute

    lateness_s, watermark_s, steps = run
    archive = str(tmp_path / f"archive-{uuid.uuid4().hex}")
    shard = _Shard(lateness_s)
    shard.fn = FirePanes(lateness_s, 30, archive)
    clock = {"s": watermark_s}
    monkeypatch.setattr(aggregate, "wall_clock_ms", lambda: clock["s"] * 1000)
    added = _play(shard, lateness_s, watermark_s, [*steps[:old_at], ("restore old", None), *steps[old_at:]], clock)
    incomplete = {d.day_start_s for _rows, days in shard.firings for d in days if not d.complete}
    assert {day for (video_id, day), count in _highest(shard).items() if count < added[(video_id, day)]} <= incomplete
    assert incomplete <= set(plan_recompute(archive, now_s=END_US // US_PER_S).days)
    assert shard.state["dropped_hours"].read() is None
    assert shard.state["bag"].read() == []
    assert shard.state["panes"].read() is None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(0, 8 * DAY_S), st.sampled_from([0, 600, DAY_S]))
def test_marked_days_are_rebuilt_by_after_restarts_once_closed(tmp_path, days, now_after_s, lateness_s):
    """Markers naming days (as ``FirePanes`` writes them): ``--after_restarts`` rebuilds each
    day's list once the day is closed (``closes_at_s``), reading its 24 hours and rewriting
    none, and reports it open before that (a dry run's scope: no stored lists read)."""
    from pipelines.batch_recompute import RecomputeOptions, recompute_scope
    from schemas.closed_windows import closes_at_s
    from schemas.restart_markers import LACKS_DAY_COUNTS, write_marker

    archive = str(tmp_path / f"archive-{uuid.uuid4().hex}")
    marked = {DAY0_S + d * DAY_S for d in days}
    for i, d in enumerate(days):
        write_marker(
            archive,
            f"{i}-m",
            lateness_s,
            (DAY0_S + d * DAY_S + 3600) * 1000,
            lacks_state=LACKS_DAY_COUNTS,
            days=[DAY0_S + d * DAY_S],
        )
    now_s = DAY0_S + now_after_s
    r = RecomputeOptions(["--after_restarts", "--rows_path=/nonexistent-rows"])
    scope = recompute_scope(archive, r, 600, now_s)
    closes = {d: closes_at_s(d, DAY_S, max(lateness_s, 600)) for d in marked}
    assert scope.hours == []
    assert scope.days == sorted(d for d in marked if closes[d] <= now_s)
    assert scope.open_days == {d: at for d, at in sorted(closes.items()) if at > now_s}
    assert scope.hours_read == sorted(h for d in scope.days for h in range(d, d + DAY_S, 3600))


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
                e = {
                    "event_id": f"e{len(known)}",
                    "video_id": draw(st.sampled_from(_STREAM_VIDEOS)),
                    "event_type": "view",
                    "event_time": format_time_us(t),
                }
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
