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

import pickle
import time

from apache_beam.metrics.execution import MetricsContainer
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pubsub_doubles import Finalizer, ScriptedSubscriber, metrics_scope, run_bundle
from transforms import pubsub_io
from transforms.pubsub_io import AckLedger, _PullFn, reader_elements


def test_a_bundle_is_acknowledged_after_two_later_rounds_not_at_its_own_finalization():
    ledger = AckLedger(rounds=2)
    ledger.started("r", 0)
    assert ledger.finalized("r", 0, ["a"], 1, started_s=0.0, now_s=1.0) == []  # its own notice
    assert ledger.finalized("r", 1, [], None, started_s=0.5, now_s=1.1) == []  # same notice (started before it)
    assert ledger.finalized("r", 1, [], None, started_s=1.2, now_s=2.0) == []  # round 1
    assert ledger.finalized("r", 1, [], None, started_s=2.1, now_s=3.0) == ["a"]  # round 2
    assert ledger.oldest_publish_us() is None


def test_a_restore_to_before_a_bundle_drops_its_ids():
    ledger = AckLedger(rounds=1)
    ledger.started("r", 5)
    assert ledger.finalized("r", 5, ["a", "b"], 7, started_s=0.0, now_s=1.0) == []
    assert ledger.oldest_publish_us() == 7
    ledger.started("r", 5)  # the job went back to the state before that bundle
    assert ledger.oldest_publish_us() is None
    assert ledger.finalized("r", 5, [], None, started_s=2.0, now_s=3.0) == []
    ledger.started("other", 0)  # another reader's restart leaves this reader's entries alone
    assert ledger.finalized("r", 6, ["c"], 8, started_s=3.5, now_s=4.0) == []
    ledger.started("other", 0)
    assert ledger.oldest_publish_us() == 8


@st.composite
def histories(draw):
    return draw(
        st.lists(st.sampled_from(["bundle", "bundle", "bundle", "barrier", "notice", "fail"]), min_size=5, max_size=60)
    )


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
    completed = 0  # position held by the newest completed checkpoint
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


def test_messages_are_acknowledged_whichever_processor_ran_their_bundle(monkeypatch):
    """The SDK keeps a bundle's processor (its DoFn instance) until the bundle is finalized
    and reuses released ones last-in first-out, so a processor can sit unused for good. Model
    of the runner (Flink, one source subtask): bundles one at a time, each pulling one
    message; at each completion notice every pending bundle is finalized and its processor
    released in that order; interval 0 runs 3 bundles, later ones 2. Every message pulled
    more than ``ACK_ROUNDS + 1`` intervals before the end is acknowledged (the ledger is
    shared by the process's instances), and none is acknowledged at its own notice."""
    client = ScriptedSubscriber()
    monkeypatch.setattr(pubsub_io, "subscriber_client", lambda: client)
    reader = reader_elements("projects/p/subscriptions/s", 1)[0]
    template = pickle.dumps(
        _PullFn(None, 1000, max_pull_s=60, poll_s=0.01, idle_s=5, pause_s=0, sample_s=60, max_future_skew_s=300)
    )
    cache: list[_PullFn] = []  # BundleProcessorCache.cached_bundle_processors[descriptor]
    pending: list[tuple[_PullFn, Finalizer]] = []
    position, seq, made = 0, 0, 0
    pulled_at: dict[str, int] = {}
    t0 = time.time() - 25 * 5.0  # model time: interval k is 5 s after interval k - 1, the last one ends now
    for interval in range(25):  # 25 checkpoint intervals = 125 s at 5 s
        for _ in range(3 if interval == 0 else 2):
            if cache:
                fn = cache.pop()
            else:
                fn = pickle.loads(template)  # as the SDK makes a processor's DoFn: from the pickled one
                fn.setup()
                made += 1
            ack_id = f"m{seq}"
            seq += 1
            pulled_at[ack_id] = interval
            client.batches += [[(ack_id, t0 + 5.0 * interval)], []]
            finalizer = Finalizer()
            with metrics_scope(MetricsContainer("pull")):  # a fresh metrics scope per bundle
                run_bundle(fn, reader, finalizer, start=position)
            position += 1
            pending.append((fn, finalizer))
            time.sleep(0.002)
        for fn, finalizer in pending:  # completion notice: finalize all, release in that order
            for cb in finalizer.callbacks:
                cb()
            cache.append(fn)
        pending.clear()
        time.sleep(0.002)
    due = {a for a, i in pulled_at.items() if i < 25 - (pubsub_io.ACK_ROUNDS + 1)}
    assert made >= 2  # several processors really served the source
    assert due <= set(client.acked), sorted(due - set(client.acked), key=lambda a: int(a[1:]))
    assert not {a for a, i in pulled_at.items() if i == 24} & set(client.acked)  # not at its own notice
