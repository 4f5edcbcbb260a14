"""``FirePanes``' day counts (``transforms.aggregate.DAY_COUNTS``), the input of the day top lists.

One pane shard key is driven directly with its state in memory and its timers recorded
(as in ``tests/test_pane_timers.py``): random events of a few videos over two UTC days,
each accepted only within the allowed lateness of the watermark (as the dedup stage
accepts them), random watermark advances, and random losses of the process's cached view
(a key moved to another worker, or a job restored from a checkpoint). Invariant: every
``DayCount`` a firing emits equals the number of events of its (video, type) and day
added so far, and every hour row of a firing has its day count in the same firing.
"""

from __future__ import annotations

from collections import Counter

from apache_beam.pvalue import TaggedOutput
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S, parse_event_time
from schemas.storage import Aggregate
from tests.test_pane_timers import END_US, PaneShard, _call, _pending
from transforms import aggregate
from transforms.aggregate import DAY_COUNTS

LATENESS_S = 600
DAY0_S = parse_event_time("2024-05-14T00:00:00Z") // US_PER_S
SPAN_MIN = 2 * 24 * 60  # two days of minutes
VIDEOS = ("V1", "V2", "V#3")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 12 * 60), st.sampled_from(VIDEOS), st.integers(1, 5)),  # minutes on
        st.tuples(st.just("watermark"), st.integers(1, 6 * 60)),  # minutes forward
        st.tuples(st.just("early"), st.just(0)),
        st.tuples(st.just("moved"), st.just(0)),
    ),
    min_size=1,
    max_size=60,
)


class DayShard(PaneShard):
    """A pane shard key whose firings are collected: rows and day counts."""

    def __init__(self):
        super().__init__()
        self.firings: list[tuple[list, list]] = []

    def _collect(self, outputs) -> None:
        rows = [r for out in outputs if isinstance(out, list) for r in out]
        days = [d for out in outputs if isinstance(out, TaggedOutput) and out.tag == DAY_COUNTS for d in out.value]
        if rows or days:
            self.firings.append((rows, days))

    def add_events(self, minute_s: int, video_id: str, n: int, arrival_us: int) -> None:
        partials = {(video_id, "view"): Aggregate(n, 0, 0.0, None, None)}
        self._collect(
            _call(
                self.fn.process,
                (1, (arrival_us, {minute_s: partials})),
                window_end=self.window_end,
                early=self.early,
                **self.state,
            )
        )

    def fire_early(self) -> None:
        self._collect(_call(self.fn.on_early, key=1, **self.state))

    def advance_watermark(self, to_us: int) -> None:
        while (at := _pending(self.window_end)) is not None and at.micros <= to_us:
            self.window_end.clear()
            self._collect(
                _call(
                    self.fn.on_window_end, key=1, fired=at, window_end=self.window_end, early=self.early, **self.state
                )
            )


@settings(max_examples=200, deadline=None)
@given(steps)
@example(
    [
        ("watermark", 120),
        *[("watermark", 360)] * 7,
        ("add", 0, "V1", 1),
        ("watermark", 310),
        ("add", 0, "V1", 1),
        ("early", 0),
    ]
)  # adds past the span's end once the watermark passed it: too late, not counted
def test_every_day_count_is_the_days_events_so_far(steps):
    shard = DayShard()
    watermark_s = DAY0_S + 60
    added: Counter = Counter()  # (video, day) -> events added so far
    arrival_us = DAY0_S * US_PER_S
    for kind, arg, *rest in steps:
        arrival_us += US_PER_S
        seen = len(shard.firings)
        if kind == "add":  # an event within the lateness of the watermark, as dedup accepts it
            earliest_s = max(DAY0_S, watermark_s - LATENESS_S + 59) // 60 * 60  # a minute start not late
            minute_s = min(earliest_s + 60 * arg, DAY0_S + 60 * (SPAN_MIN - 1))
            if minute_s < watermark_s - LATENESS_S:  # past the span's end: dedup refuses it (too_late)
                continue
            video_id, n = rest
            shard.add_events(minute_s, video_id, n, arrival_us)
            added[(video_id, minute_s - minute_s % 86400)] += n
        elif kind == "watermark":
            watermark_s = min(watermark_s + 60 * arg, DAY0_S + 60 * SPAN_MIN + 3 * 86400)
            shard.advance_watermark(watermark_s * US_PER_S)
        elif kind == "early":
            shard.fire_early()
        else:  # the cached view is gone: rebuilt from state
            aggregate._WINDOWS.clear()
        for rows, days in shard.firings[seen:]:
            assert {(d.video_id, d.day_start_s) for d in days} == {
                (r.video_id, r.window_start_s - r.window_start_s % 86400) for r in rows if r.granularity == "hour"
            }
            for d in days:
                assert d.count == added[(d.video_id, d.day_start_s)], (d, added)
    shard.advance_watermark(END_US)
    assert shard.state["dropped_hours"].read() is None  # every day's counts dropped with its last hour
