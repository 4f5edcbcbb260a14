"""The dedup stage's watermark searches (``transforms.dedup``, ``stamped_watermark=False``) under
any sequence of element stamps: rounds of the runner's timers at a watermark that moves on by
nothing, seconds, minutes or years, and before each round any number of elements stamped at
it, near it, years ahead of it or years behind it (hostile ``ts``, backfills, readers ahead).

Driven directly as ``tests/test_watermark_search.py`` does (one key, rounds of due timers).
Generated, each of these holds after every element and every round:

1. the view never passes the watermark (nothing the SPEC accepts is refused);
2. a search's guess ``G``, once made, is never lost: a search is not replaced before a round
   has tested it, and after a round at ``W >= G - 5 s`` the view is at least ``G - 5 s``
   (within SPEC's 5 s of ``W`` when the guess was right, ``G - 5 s <= W <= G``); and a stamp
   more than ``SEARCH_GAP_S`` above the view and from every pending guess starts a search
   unless ``SEARCH_SLOTS`` have started since the view last rose (searches are bounded, not
   starved);
3. a key holds at most ``SEARCH_SLOTS`` searches and ``(SEARCH_SLOTS + 1) * LADDER_RUNGS``
   pending timers, whatever the stamps;
4. after a round nothing is pending at or below the view, and nothing further below ``W``
   than the nearest guess held at the round was from it (or 5 s): no superseded search
   holds the stage's output watermark back.
"""

from __future__ import annotations

from apache_beam.utils.timestamp import MIN_TIMESTAMP
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S
from tests.test_watermark_search import STEP_US, W0_US, YEAR_S, SearchingKey
from transforms.dedup import LADDER_RUNGS, SEARCH_GAP_S, SEARCH_SLOTS

GAP_US = SEARCH_GAP_S * US_PER_S
_ADVANCE_S = st.one_of(st.just(0), st.integers(1, 10), st.integers(1, 4 * SEARCH_GAP_S), st.integers(1, 100 * YEAR_S))
_OFFSET_S = st.one_of(
    st.just(0),
    st.integers(-2 * SEARCH_GAP_S, 2 * SEARCH_GAP_S),
    st.integers(SEARCH_GAP_S, 10_000 * YEAR_S),
    st.integers(-10_000 * YEAR_S, -SEARCH_GAP_S),
)


def _pending_guesses(searches, view_us: int) -> list[int]:
    return [g_us for g_us, _ in searches if g_us - STEP_US > view_us]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_ADVANCE_S, st.lists(_OFFSET_S, max_size=12)), min_size=1, max_size=8))
def test_any_stamps_keep_the_view_below_the_watermark_and_good_guesses_found(rounds):
    key = SearchingKey()
    w_us = W0_US
    since_view_rose = 0  # searches started since the view last rose
    for advance_s, offsets_s in rounds:
        w_us += advance_s * US_PER_S
        started: list[tuple[int, int]] = []
        for offset_s in offsets_s:
            stamp_us = w_us + offset_s * US_PER_S
            view_us = key.view_us() or MIN_TIMESTAMP.micros
            before = key.searches()
            key.stamp(stamp_us)
            after = key.searches()
            may_search = stamp_us - view_us > GAP_US and all(
                abs(stamp_us - g_us) > GAP_US for g_us in _pending_guesses(before, view_us)
            )
            if may_search and since_view_rose < SEARCH_SLOTS:
                assert (stamp_us, view_us) in after and len(after) >= len(before)
                started.append((stamp_us, view_us))
                since_view_rose += 1
            else:
                assert after == before
            assert len(after) <= SEARCH_SLOTS
            assert len(key.timers.pending) <= (SEARCH_SLOTS + 1) * LADDER_RUNGS
        held = key.searches()
        assert all(s in held for s in started)  # none replaced before a round tested it
        view_before = key.view_us()
        key.round(w_us)
        view_us = key.view_us()
        assert view_us is None or view_us <= w_us
        assert view_before is None or view_us >= view_before
        for g_us, _ in held:
            if g_us - STEP_US <= w_us:
                assert view_us >= g_us - STEP_US
        if key.timers.pending:
            assert view_us is None or key.timers.held_us() > view_us
            if held:
                assert key.timers.held_us() >= w_us - max(STEP_US, min(abs(g_us - w_us) for g_us, _ in held))
        if view_us != view_before:
            since_view_rose = 0
