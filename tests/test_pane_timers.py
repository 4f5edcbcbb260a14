"""``FirePanes``'s processing-time (early) timer once every window has fired on time.

Beam's Flink operator fires every pending timer when its input ends, so an early timer
left set after the last on-time pane kept a bounded job (a shared case on Flink) in its
final flush for ever. Local runner and Prism end such a job anyway, so the timer is checked
where it is recorded: one pane shard key is driven directly, its timers Beam's own
``RuntimeTimer`` (which records each ``set`` and ``clear``) and its state in memory, the
watermark timer fired as a runner would (at its time, once the watermark passes it).
"""

import inspect

from apache_beam.transforms.userstate import RuntimeTimer
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S, parse_event_time
from schemas.storage import Aggregate
from tests.test_parallel_state import Cell
from transforms import aggregate
from transforms.aggregate import FirePanes

T0_S = parse_event_time("2024-05-14T10:00:00Z") // US_PER_S
END_US = 2**62  # past every window's drop time: the end of a bounded input


def _pending(timer: RuntimeTimer) -> Timestamp | None:
    """When the timer fires next, from its recordings (None: never set, or cleared)."""
    rec = timer._timer_recordings.get("")
    return None if rec is None or rec.cleared else rec.timestamp


def _call(method, *args, **available):
    """Call a DoFn method with the state and timers it declares, as the runner does."""
    declared = inspect.signature(method).parameters
    return list(method(*args, **{k: v for k, v in available.items() if k in declared}))


class PaneShard:
    """One pane shard key of ``FirePanes(600, 30)`` on a runner that keeps its timers."""

    def __init__(self):
        self.fn = FirePanes(600, 30)
        self.state = {
            "bag": Cell(bag=True),
            "panes": Cell(),
            "version": Cell(),
            "first_unfired": Cell(),
            "dropped_hours": Cell(),
        }
        self.window_end, self.early = RuntimeTimer(), RuntimeTimer()

    def add(self, minute_s: int, arrival_us: int) -> None:
        partials = {("V1", "view"): Aggregate(1, 0, 0.0, None, None)}
        _call(
            self.fn.process,
            (1, (arrival_us, {minute_s: partials})),
            window_end=self.window_end,
            early=self.early,
            **self.state,
        )

    def advance_watermark(self, to_us: int) -> None:
        """Fire the watermark timer for as long as it is due at ``to_us``."""
        while (at := _pending(self.window_end)) is not None and at.micros <= to_us:
            self.window_end.clear()
            _call(self.fn.on_window_end, key=1, fired=at, window_end=self.window_end, early=self.early, **self.state)

    def waiting_windows(self) -> int:
        """Open windows whose on-time pane has not fired."""
        shard = aggregate._WINDOWS.get((self.fn._token, 1))
        return 0 if shard is None else sum(not w.on_time_fired for w in shard.windows.values())


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 180), st.integers(0, 400)),  # event minute, arrival s after T0
        st.tuples(st.just("watermark"), st.integers(0, 240 * 60)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_the_early_timer_is_cleared_once_no_window_waits_for_its_on_time_pane(steps):
    shard = PaneShard()
    watermark_us = T0_S * US_PER_S
    for kind, *args in steps:
        if kind == "add":
            minute, arrival_s = args
            shard.add(T0_S + 60 * minute, (T0_S + arrival_s) * US_PER_S)
        else:
            watermark_us = max(watermark_us, (T0_S + args[0]) * US_PER_S)
            shard.advance_watermark(watermark_us)
        if shard.waiting_windows() and shard.state["first_unfired"].read() is not None:
            assert _pending(shard.early) is not None  # early panes still come for waiting windows
    shard.advance_watermark(END_US)
    assert shard.waiting_windows() == 0
    assert _pending(shard.early) is None and shard.state["first_unfired"].read() is None
    assert _pending(shard.window_end) is None  # every window dropped: nothing left to fire
