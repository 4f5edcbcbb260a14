"""Hostile tests of the dedup stage's watermark search slots (commits 6c5d506, 26695f1, afc84d1:
``transforms.dedup._slot_for``, ``on_rung``'s tag parsing) on a key restored from a checkpoint
of the version before them: its searches' state (``search_guess_us``) is not read any more, and
its pending search rungs carry the old tags ``"d0"`` .. ``"d41"`` (no slot).

Driven as ``tests/test_dedup_search_properties.py`` does (one key, rounds of due timers), from
old-format state: a view (or none), a ladder base, an old search's rungs at ``G - 5 s * 2**i``
above the view, with ``G`` anywhere from years behind to years ahead of the watermark; then any
rounds and stamps. Holds: the view never passes the watermark, the old search's guess is found
in the first round at a watermark at or past its first rung, the pending timers stay bounded
(the old search's rungs on top of the new bound), and nothing pending at or below the view
after a round.
"""

from __future__ import annotations

from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S
from tests.test_dedup_search_properties import _ADVANCE_S, _OFFSET_S
from tests.test_watermark_search import STEP_US, W0_US, YEAR_S, SearchingKey
from transforms.dedup import _END_US, LADDER_RUNGS, SEARCH_SLOTS


def _old_key(view_offset_s: int | None, guess_offset_s: int) -> tuple[SearchingKey, int]:
    """A key as the version before 6c5d506 left it: a view (or none), the ladder base at it,
    and one search's rungs tagged ``"d{i}"``."""
    key = SearchingKey()
    view_us = None if view_offset_s is None else W0_US + view_offset_s * US_PER_S
    key.state["view"].write(view_us)
    base_us = view_us if view_us is not None else W0_US - 10 * YEAR_S * US_PER_S
    key.state["base"].write(base_us)
    g_us = W0_US + guess_offset_s * US_PER_S
    for i in range(LADDER_RUNGS):
        at_us = g_us - STEP_US * 2**i
        if at_us <= base_us:
            break
        key.timers.set(Timestamp(micros=min(at_us, _END_US)), dynamic_timer_tag=f"d{i}")
    return key, g_us


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.integers(-YEAR_S, 0)),
    st.integers(-5 * YEAR_S, 5 * YEAR_S),
    st.lists(st.tuples(_ADVANCE_S, st.lists(_OFFSET_S, max_size=8)), min_size=1, max_size=8),
)
def test_a_key_restored_with_old_search_tags(view_offset_s, guess_offset_s, rounds):
    key, g_us = _old_key(view_offset_s, guess_offset_s)
    old_search = "d0" in key.timers.pending  # its first rung was above the view
    w_us = W0_US
    for advance_s, offsets_s in rounds:
        w_us += advance_s * US_PER_S
        for offset_s in offsets_s:
            key.stamp(w_us + offset_s * US_PER_S)
            assert len(key.searches()) <= SEARCH_SLOTS
            assert len(key.timers.pending) <= (SEARCH_SLOTS + 2) * LADDER_RUNGS
        key.round(w_us)
        view_us = key.view_us()
        assert view_us is None or view_us <= w_us
        if old_search and g_us - STEP_US <= w_us:
            assert view_us >= g_us - STEP_US
        assert view_us is None or all(t > view_us for t in key.timers.pending.values())
