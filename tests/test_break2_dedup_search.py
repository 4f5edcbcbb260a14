"""The dedup stage's watermark search (``transforms.dedup``, ``stamped_watermark=False``) when
more elements stamped far from a good guess arrive before the round that would confirm it.

The break: every search set the same rung tags (``"d0"`` ..), so a second search moved every
pending rung of the first. The probe guessed the watermark exactly (wall clock at the job's
start); one element stamped years away (on the native source with ``timestamp_attribute``:
a publisher's ``ts`` years ahead or a backfill's from years back) threw that search away: one
round later the view was years behind the watermark and the stage's output watermark was
held there (the issue 13 symptom), for about 14 rounds at 8,000 years; meanwhile events far
more than ``allowed_lateness_s`` behind the watermark were judged on time (SPEC section 2
lets the view lag by at most 5 s). Now each search has tags of its own (a slot), and a search
no round has tested yet is never replaced.

Driven directly as ``tests/test_watermark_search.py`` does (one key, rounds of due timers),
generated: the first element after each round is stamped at the watermark of the next round
(the probe, then a reader's watermark after each jump), then any number of elements stamped
far from it (future, past, near, repeated), then the round. A stamp within ``SEARCH_GAP_S`` of
an earlier one starts no search of its own (the earlier search's rungs are within the gap of
it), so the generated stamps keep the good ones further than that from every earlier one."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S
from tests.test_watermark_search import STEP_US, W0_US, YEAR_S, SearchingKey
from transforms.dedup import SEARCH_GAP_S

_FAR_S = st.one_of(
    st.integers(SEARCH_GAP_S + 1, 8000 * YEAR_S),
    st.integers(-8000 * YEAR_S, -SEARCH_GAP_S - 1),
    st.integers(-3 * SEARCH_GAP_S, 3 * SEARCH_GAP_S),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(2 * SEARCH_GAP_S, 50 * YEAR_S), st.lists(_FAR_S, max_size=10)), min_size=1, max_size=5
    )
)
def test_far_stamps_after_a_good_guess_keep_its_search(rounds):
    key = SearchingKey()
    w_us = W0_US
    earlier_us: list[int] = []
    for r, (jump_s, far_offsets_s) in enumerate(rounds):
        w_us += jump_s * US_PER_S if r else 0
        assume(all(abs(w_us - e_us) > SEARCH_GAP_S * US_PER_S for e_us in earlier_us))
        earlier_us += [w_us] + [w_us + offset_s * US_PER_S for offset_s in far_offsets_s]
        key.stamp(w_us)  # the good guess: the probe, or the stamp of the reader whose watermark jumped
        for offset_s in far_offsets_s:
            key.stamp(w_us + offset_s * US_PER_S)
        key.round(w_us)
        assert w_us - STEP_US <= key.view_us() <= w_us
        assert key.timers.held_us() > w_us - STEP_US
