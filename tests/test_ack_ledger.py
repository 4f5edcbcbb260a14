"""``transforms.pubsub_io.AckLedger``: a pull's messages are acknowledged only once a completed
checkpoint surely holds its bundle, whatever order the runner finalizes bundles in.

The model: a runner that checkpoints a stage and, at each checkpoint's completion notice,
finalizes every bundle finished so far (Beam 2.70's Flink runner), including bundles that
ran after that checkpoint's barrier. Hypothesis draws the interleaving of bundles, barriers,
completion notices and failures (a restore from the last completed checkpoint); the
invariant: every acknowledged message was pulled by a bundle that finished before the
barrier of a checkpoint that had completed when the ack was sent, and the job never later
restores a state without it.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.pubsub_io import AckLedger


def test_a_bundle_is_acknowledged_after_two_later_rounds_not_at_its_own_finalization():
    ledger = AckLedger(rounds=2)
    ledger.started("r", 0)
    assert ledger.finalized("r", 0, ["a"], 1, started_s=0.0, now_s=1.0) == []   # its own notice
    assert ledger.finalized("r", 1, [], None, started_s=0.5, now_s=1.1) == []   # same notice (started before it)
    assert ledger.finalized("r", 1, [], None, started_s=1.2, now_s=2.0) == []   # round 1
    assert ledger.finalized("r", 1, [], None, started_s=2.1, now_s=3.0) == ["a"]  # round 2
    assert ledger.oldest_publish_us() is None


def test_a_restore_to_before_a_bundle_drops_its_ids():
    ledger = AckLedger(rounds=1)
    ledger.started("r", 5)
    assert ledger.finalized("r", 5, ["a", "b"], 7, started_s=0.0, now_s=1.0) == []
    assert ledger.oldest_publish_us() == 7
    ledger.started("r", 5)   # the job went back to the state before that bundle
    assert ledger.oldest_publish_us() is None
    assert ledger.finalized("r", 5, [], None, started_s=2.0, now_s=3.0) == []
    ledger.started("other", 0)  # another reader's restart leaves this reader's entries alone
    assert ledger.finalized("r", 6, ["c"], 8, started_s=3.5, now_s=4.0) == []
    ledger.started("other", 0)
    assert ledger.oldest_publish_us() == 8


@st.composite
def histories(draw):
    return draw(st.lists(st.sampled_from(["bundle", "bundle", "bundle", "barrier", "notice", "fail"]),
                         min_size=5, max_size=60))


@settings(max_examples=400, deadline=None)
@given(histories(), st.integers(min_value=1, max_value=3))
def test_nothing_is_acknowledged_that_a_restore_can_lose(history, rounds):
    """One reader; each bundle pulls one message (its position). A barrier snapshots the
    position reached; a notice completes the oldest pending checkpoint whose barrier came
    before it (in order) and finalizes every bundle finished so far; a failure restores the
    newest completed checkpoint. ``rounds >= 1`` keeps the invariant when notices reach the
    stage before the next barrier (Flink's order)."""
    ledger = AckLedger(rounds=rounds)
    clock = 0.0
    position = 0
    completed = 0           # position held by the newest completed checkpoint
    pending: list[int] = []  # positions held by checkpoints whose barrier passed, not yet complete
    finished: list[tuple[int, float]] = []  # bundles awaiting finalization: (position, start time)
    acked: set[int] = set()
    ledger.started("r", position)
    for step in history:
        clock += 1.0
        if step == "bundle":
            ledger.started("r", position)
            finished.append((position, clock))
            position += 1
        elif step == "barrier":
            pending.append(position)
        elif step == "notice" and pending:
            completed = pending.pop(0)
            pending.clear()  # one checkpoint at a time: older pending ones are subsumed
            for first, started in finished:
                clock += 0.01
                for ack in ledger.finalized("r", first, [str(first)], first, started, clock):
                    assert int(ack) < completed, f"acked message {ack} outside checkpoint at {completed}"
                    acked.add(int(ack))
            finished.clear()
        elif step == "fail":
            position, pending, finished = completed, [], []
            ledger.started("r", position)
            assert all(a < completed for a in acked)
