"""The dedup stage's search for the watermark (``transforms.dedup``, ``stamped_watermark=False``),
one shard key driven directly through rounds of a runner's event-time timers.

A round at watermark ``W`` fires the key's pending timers at or below ``W`` in time order
(a timer set again before it fires moves). Every pending timer holds the stage's output
watermark at its time (Beam's watermark holds; Python's event-time timers hold at their
firing time), so a rung left below ``W`` holds the next stage back. For a guess ``G`` (the
stamp of the element that starts the search) anywhere from years before to years after
``W``, generated:

* the view never passes the watermark (it is a lower bound: nothing the SPEC accepts is refused);
* after one round, no pending rung is more than ``|G - W|`` below ``W`` (the ladder that
  climbed from the minimum of time held the stage 1.5 years, then 118,000 years back);
* after ``2 * log2(|G - W| / 5 s) + 3`` rounds (up the ladder, then down) the view is within 5 s of ``W`` and nothing is held below it.
"""

from __future__ import annotations

import math

from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S, parse_event_time
from tests.test_parallel_state import KEY, Cell
from transforms.dedup import WATERMARK_VIEW_STEP_S, DedupAndJudgeLateness

W0_US = parse_event_time("2013-06-01T12:00:00Z")
YEAR_S = 365 * 86400
STEP_US = WATERMARK_VIEW_STEP_S * US_PER_S


class Timers:
    """One key's pending event-time timers, ``{tag: time_us}`` (``rung.set`` as Beam's TimerParam)."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}

    def set(self, ts: Timestamp, dynamic_timer_tag: str = "") -> None:
        self.pending[dynamic_timer_tag] = ts.micros

    def held_us(self) -> int | None:
        return min(self.pending.values(), default=None)


class SearchingKey:
    """One shard key of a ``DedupAndJudgeLateness`` on the timer path: its state and its rungs."""

    def __init__(self) -> None:
        self.fn = DedupAndJudgeLateness(600, stamped_watermark=False)
        self.fn.setup()
        self.state = {"ids": Cell(bag=True), "version": Cell(), "view": Cell(), "base": Cell(), "searches": Cell()}
        self.timers = Timers()

    def stamp(self, at_us: int) -> None:
        """One empty element stamped ``at_us`` (a probe, or a message's stamp)."""
        list(
            self.fn.process(
                (KEY, (0, [])), timestamp=Timestamp(micros=at_us), expiry=Cell(), rung=self.timers, **self.state
            )
        )

    def round(self, w_us: int) -> None:
        """The runner's round at watermark ``w_us``: the rungs due when it starts fire in time order."""
        for at_us, tag in sorted((t, tag) for tag, t in self.timers.pending.items() if t <= w_us):
            if self.timers.pending.get(tag) != at_us:
                continue  # set again earlier in this round
            del self.timers.pending[tag]
            self.fn.on_rung(
                fired=Timestamp(micros=at_us),
                tag=tag,
                view=self.state["view"],
                base=self.state["base"],
                rung=self.timers,
            )

    def view_us(self) -> int | None:
        return self.state["view"].read()

    def searches(self) -> list[tuple[int, int]]:
        """The key's searches as its state holds them, ``[(guess_us, view_us when it started), ...]``."""
        return list(self.state["searches"].read() or ())


@settings(max_examples=300, deadline=None)
@given(st.integers(-10 * YEAR_S, 10 * YEAR_S), st.integers(0, 3))
def test_one_round_finds_the_watermark_within_the_guess_distance(guess_offset_s, probes_first):
    key = SearchingKey()
    g_us = W0_US + guess_offset_s * US_PER_S
    for _ in range(probes_first):  # the same guess again: no second search
        key.stamp(g_us)
    key.stamp(g_us)
    distance_us = max(abs(g_us - W0_US), STEP_US)
    key.round(W0_US)
    assert key.view_us() is None or key.view_us() <= W0_US
    assert key.timers.held_us() is None or key.timers.held_us() >= W0_US - distance_us
    for _ in range(2 * math.ceil(math.log2(distance_us / STEP_US)) + 2):
        key.round(W0_US)
        assert key.view_us() is None or key.view_us() <= W0_US
    if g_us > W0_US or key.view_us() is not None:  # a guess below W is found when W creeps on
        assert W0_US - STEP_US <= key.view_us() <= W0_US
        assert key.timers.held_us() > W0_US - STEP_US


@settings(max_examples=100, deadline=None)
@given(st.integers(-YEAR_S, YEAR_S), st.lists(st.integers(0, 3 * YEAR_S), min_size=1, max_size=8))
def test_the_view_follows_jumps_with_elements_stamped_at_the_watermark(guess_offset_s, jumps_s):
    """The probe's guess anywhere, then the watermark jumps; each element after a jump is
    stamped at the new watermark (its reader's), as ``ReadFromPubSubPortable`` stamps them."""
    key = SearchingKey()
    key.stamp(W0_US + guess_offset_s * US_PER_S)
    w_us = W0_US
    for jump_s in jumps_s:
        w_us += jump_s * US_PER_S
        key.stamp(w_us)
        key.round(w_us)
        assert key.view_us() <= w_us
        # one round: nothing held further below W than the search's guess was from it, or a 320 s gap
        assert key.timers.held_us() >= w_us - max(abs(jump_s), 320) * US_PER_S * 2
