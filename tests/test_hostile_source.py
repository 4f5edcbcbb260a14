"""Hostile input at the Pub/Sub source (``transforms/pubsub_io.py``; SPEC section 1: "no input,
however large or strange, may raise, stall or retry for ever", and the ``ts`` attribute).

* The timestamp attribute: every non-ASCII Unicode digit, generated strings and a corpus
  of nasty ones never raise and never yield a time past the wall clock plus the skew.
* ``PullWatermark``: generated pull / empty / restore / clock-step-back sequences never rise
  past the ceiling (wall clock + ``max_future_skew_s``) and never go back, except that a state
  restored above the ceiling comes down to it; periodic old ``ts`` attributes (late data) do
  not hold the watermark back from the live traffic.
* Real emulator: a 9.9 MB message is received; a channel too small for a pull response
  shrinks the batch down to one message instead of failing for ever; an unreachable
  Pub/Sub is a logged, backed-off failure, never an exception.
* End to end, per runner (local, embedded Flink with checkpoints): a flights replay
  interleaved with hostile messages ends equal to the reference, every hostile message is
  counted or a dead letter, the job still runs.
* A redelivery storm (Flink; ack deadline 10 s, checkpoints every 30 s): exact.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.runners import runner_flags
from schemas.archive import DeadLetter, local_lines
from schemas.event import END_EPOCH_MS, format_time_us
from tests.streaming_jobs import PROJECT, Deployment, kill, latest_checkpoint
from tests.test_streaming_runners import _wait_for
from transforms.pubsub_io import PullWatermark, _PullFn, message_timestamp_us, subscriber_client
from viewcounts.commands import replay

NOW_US = 1_764_000_000_000_000  # 2025-11-24
SKEW_S = 300
PUBLISHED_US = 7
YEAR_2100_MS = 4_102_444_800_000
BIG = 9_900_000  # bytes: under Pub/Sub's 10 MB limit with the attributes

HOSTILE_TS = {
    "superscript two": "²",
    "5,000 digits": "9" * 5000,
    "5,000 zeros then 1": "0" * 5000 + "1",
    "year 2100": str(YEAR_2100_MS),
    "year 10000": str(END_EPOCH_MS),
    "19 nines": "9" * 19,
    "empty": "",
    "negative": "-1",
    "plus": "+1",
    "space": " 1",
    "float": "1.5e12",
    "Arabic-Indic": "١٧٦٤٠٠٠٠٠٠٠٠٠",
    "full-width": "１７６４０００００００００",
    "RFC 3339": "2025-11-24T00:00:00Z",
    "NUL": "1\x00",
    "lone surrogate": "\ud800",
    "just past the skew": str(NOW_US // 1000 + SKEW_S * 1000 + 1),
}


@pytest.mark.hostile
@pytest.mark.parametrize("name", HOSTILE_TS)
def test_hostile_timestamp_attribute_reads_as_no_attribute(name):
    assert message_timestamp_us({"ts": HOSTILE_TS[name]}, PUBLISHED_US, "ts", NOW_US, SKEW_S) == PUBLISHED_US


@pytest.mark.hostile
def test_every_non_ascii_unicode_digit_is_refused():
    digits = [
        chr(c) for c in range(sys.maxunicode + 1) if (chr(c).isdigit() or chr(c).isnumeric()) and not chr(c).isascii()
    ]
    assert len(digits) > 1000
    for d in digits:
        for raw in (d, d * 13, "1764" + d + "00000000"):
            assert message_timestamp_us({"ts": raw}, PUBLISHED_US, "ts", NOW_US, SKEW_S) == PUBLISHED_US, raw


def _attribute_values():
    return st.one_of(
        st.text(),
        st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=20),
        st.from_regex(r"[0-9]{1,40}", fullmatch=True),
        st.integers(-(10**20), 10**20).map(str),
        st.integers(0, 60).map(lambda n: "9" * n),
        st.integers(0, END_EPOCH_MS + 10**9).map(str),
    )


@pytest.mark.hostile
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw=_attribute_values(),
    now_us=st.integers(0, 2**62),
    publish_us=st.integers(0, 2**62),
    skew_s=st.integers(0, 86_400),
)
def test_timestamp_attribute_is_total_and_bounded(raw, now_us, publish_us, skew_s):
    got = message_timestamp_us({"ts": raw}, publish_us, "ts", now_us, skew_s)
    readable = raw.isascii() and raw.isdigit() and len(raw) <= 20
    if readable and int(raw) < END_EPOCH_MS and int(raw) * 1000 <= now_us + skew_s * 1_000_000:
        assert got == int(raw) * 1000
    else:
        assert got == publish_us


@pytest.mark.hostile
def test_restored_watermark_ahead_of_the_ceiling_comes_down():
    """A checkpoint written while a far-future ``ts`` was followed (before this bound):
    the restored watermark, newest time and samples are lowered to wall clock + skew."""
    now_s = NOW_US / 1e6
    ahead = PullWatermark(
        (YEAR_2100_MS * 1000, YEAR_2100_MS * 1000, None, ((now_s - 1, YEAR_2100_MS * 1000),)), SKEW_S, now_s=now_s
    )
    ceiling = NOW_US + SKEW_S * 1_000_000
    assert ahead.current_watermark().micros == ceiling
    ahead.pulled([NOW_US - 10_000_000], now_s + 1, sample_s=60)
    assert ahead.current_watermark().micros == ceiling  # never back below the ceiling it was lowered to
    ahead.empty(now_s + 2, idle_s=5, sample_s=60)
    ahead.empty(now_s + 60, idle_s=5, sample_s=60)  # idle rule: from the (lowered) newest time
    assert ahead.current_watermark().micros <= NOW_US + 60_000_000 + SKEW_S * 1_000_000


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pull"), st.floats(0, 120), st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=4)),
        st.tuples(st.just("empty"), st.floats(0, 120), st.just(None)),
        st.tuples(st.just("restore"), st.floats(0, 120), st.just(None)),
        st.tuples(
            st.just("clock"), st.floats(-3600, 0), st.just(None)
        ),  # the wall clock steps back (NTP, another worker)
    ),
    max_size=40,
)


@pytest.mark.hostile
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=_OPS, skew_s=st.integers(0, 3600), restored=st.one_of(st.none(), st.integers(-(2**62), 2**62)))
def test_pull_watermark_never_passes_the_ceiling_nor_goes_back(ops, skew_s, restored):
    """Between constructions the watermark never decreases, also when the wall clock steps
    back; it only rises to at most the current ceiling. A construction (a restore) lowers it
    to the ceiling of the restoring clock, never further."""
    now_s = NOW_US / 1e6
    state = None if restored is None else (restored, restored, None, ())
    w = PullWatermark(state, skew_s, now_s=now_s)
    before = w.current_watermark().micros
    assert before <= NOW_US + skew_s * 1_000_000
    for op, dt_s, timestamps in ops:
        now_s += dt_s
        ceiling = round(now_s * 1_000_000) + skew_s * 1_000_000
        if op == "pull":
            w.pulled(timestamps, now_s, sample_s=60)
        elif op == "empty":
            w.empty(now_s, idle_s=5, sample_s=60)
        elif op == "restore":
            w = PullWatermark(w.get_estimator_state(), skew_s, now_s=now_s)
        after = w.current_watermark().micros
        if op == "restore":
            assert after == min(before, ceiling)
        else:
            assert before <= after <= max(before, ceiling)
        before = after


@pytest.mark.hostile
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    gaps_s=st.lists(st.floats(1, 10), min_size=1, max_size=8),
    lags_s=st.lists(st.floats(0, 30), min_size=1, max_size=8),
    old_ms=st.lists(st.integers(0, NOW_US // 1000 - 7 * 86_400_000), min_size=1, max_size=3),
    old_every_s=st.floats(1, 59),
    old_alone=st.booleans(),
    old_first=st.booleans(),
)
def test_periodic_old_timestamps_do_not_hold_the_watermark(gaps_s, lags_s, old_ms, old_every_s, old_alone, old_first):
    """Live traffic (pulls every ``gaps_s``, timestamps ``lags_s`` behind the wall clock) with
    old ``ts`` attributes (``"1"``, a year ago ...) arriving more often than once per sample
    period, alone in their pull or among live ones, from the first pull on or not: the old
    ones are late, and the watermark follows the live ones (at most a sample period plus the
    greatest lag behind the clock) within a few sample periods."""
    sample_s = 60
    now_s = NOW_US / 1e6
    w = PullWatermark(None, SKEW_S, now_s=now_s)
    end_s = now_s + 2400
    i, next_old_s, olds_sent = 0, now_s if old_first else now_s + old_every_s, 0
    while now_s < end_s:
        live = [round((now_s - lags_s[(i + k) % len(lags_s)]) * 1_000_000) for k in range(2)]
        if now_s >= next_old_s:
            ts = str(old_ms[olds_sent % len(old_ms)])
            old = message_timestamp_us({"ts": ts}, round(now_s * 1_000_000), "ts", round(now_s * 1_000_000), SKEW_S)
            assert old == int(ts) * 1000  # valid epoch ms: read, not replaced by the publish time
            if old_alone:
                w.pulled([old], now_s, sample_s)
            else:
                live.append(old)
            olds_sent += 1
            next_old_s += old_every_s
        w.pulled(live, now_s, sample_s)
        if now_s > end_s - 600:  # after the first 1,800 s: following the live traffic
            assert w.current_watermark().micros >= round((now_s - sample_s - max(lags_s)) * 1_000_000)
        now_s += gaps_s[i % len(gaps_s)]
        i += 1
    assert olds_sent >= 2400 // 59


# --- the real emulator ----------------------------------------------------------------------


def _subscription(ack_deadline_s: int = 10) -> tuple[str, str]:
    from google.cloud import pubsub_v1

    name = uuid.uuid4().hex[:8]
    topic, sub = f"projects/{PROJECT}/topics/h-{name}", f"projects/{PROJECT}/subscriptions/h-{name}-sub"
    pubsub_v1.PublisherClient().create_topic(name=topic)
    with pubsub_v1.SubscriberClient() as s:
        s.create_subscription(name=sub, topic=topic, ack_deadline_seconds=ack_deadline_s)
    return topic, sub


def _publish(topic: str, messages: list[tuple[bytes, dict]]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
    for f in [publisher.publish(topic, data, **attributes) for data, attributes in messages]:
        f.result(timeout=120)


def _pull_fn(max_messages: int) -> _PullFn:
    fn = _PullFn(
        "ts", max_messages, max_pull_s=1.0, poll_s=0.5, idle_s=5.0, pause_s=0.0, sample_s=60.0, max_future_skew_s=SKEW_S
    )
    fn.setup()
    return fn


@pytest.mark.hostile
@pytest.mark.slow
@pytest.mark.emulator
def test_ten_megabyte_messages_and_a_too_small_channel(pubsub_host, caplog):
    """Pub/Sub's largest messages arrive; when a response still exceeds the channel's limit
    (a 4 MiB channel here, so two 3 MB messages overflow it) the batch halves down to one
    message and every message arrives; nothing raises."""
    topic, sub = _subscription()
    big = os.urandom(BIG)
    _publish(topic, [(big, {"ts": "²"})])
    fn = _pull_fn(1000)
    started = time.monotonic()
    received = fn._pull(sub)
    print(f"a {BIG:,}-byte message pulled in {time.monotonic() - started:.2f} s")
    assert [m.message.data for m in received] == [big]
    fn._acknowledge(sub, [m.ack_id for m in received])
    fn.teardown()

    three_mb = [os.urandom(3_000_000) for _ in range(3)]
    _publish(topic, [(data, {}) for data in three_mb])
    fn = _pull_fn(4)
    fn._client.close()
    fn._client = subscriber_client(max_response_bytes=4 * 1024 * 1024)
    got, pulls, failures = [], 0, 0
    deadline = time.monotonic() + 120  # refused messages come back after the 10 s ack deadline
    while len(got) < 3 and time.monotonic() < deadline:
        received = fn._pull(sub)
        pulls += 1
        if received is None:
            failures += 1
            continue
        got += [m.message.data for m in received]
        fn._acknowledge(sub, [m.ack_id for m in received])
    fn.teardown()
    print(f"3 x 3 MB through a 4 MiB channel: {pulls} pulls, {failures} refused")
    assert sorted(got) == sorted(three_mb)
    assert failures >= 1 and "larger than max" in caplog.text


class _Finalizer:
    """The bundle-finalizer parameter: keeps the callbacks a bundle registers."""

    def __init__(self) -> None:
        self.callbacks = []

    def register(self, callback) -> None:
        self.callbacks.append(callback)


@pytest.mark.hostile
@pytest.mark.slow
@pytest.mark.emulator
def test_unreachable_pubsub_is_a_logged_failure_not_an_exception(pubsub_host, monkeypatch, caplog):
    """Two bundles of the source against a port nobody listens on: each ends without
    raising and resumes later; the idle rule does not take a failed pull for an empty
    subscription (the watermark stays), and a failed acknowledgement is logged."""
    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
    from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker

    from viewcounts.local.emulators import free_port

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    sub = f"projects/{PROJECT}/subscriptions/none"
    fn = _pull_fn(1000)
    now_us = time.time_ns() // 1000
    idle = PullWatermark((now_us - 3_600_000_000, now_us - 1_800_000_000, now_us / 1e6 - 100, ()), SKEW_S)
    for _ in range(2):
        tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(0, sys.maxsize)))
        finalizer = _Finalizer()
        assert list(fn.process(sub, finalizer, tracker, idle)) == []
        assert tracker.deferred_status() is not None  # resumes after a backoff
        assert idle.current_watermark().micros == now_us - 3_600_000_000
        for callback in finalizer.callbacks:
            callback()  # nothing to acknowledge
    fn._acknowledge(sub, ["a", "b"])  # logged, not raised
    fn.teardown()
    assert "pull of up to 1000 messages failed (2 in a row" in caplog.text
    assert "acknowledging 2 messages failed" in caplog.text


@pytest.mark.faults
def test_local_runner_reader_rides_out_an_unreachable_pubsub(monkeypatch, caplog):
    """The local runner's Pub/Sub reader (Beam's evaluator, patched by
    ``pipelines.direct_runner_fix``) gets an empty answer, not an exception, from a failed pull."""
    from google.cloud import pubsub

    from pipelines import direct_runner_fix
    from viewcounts.local.emulators import free_port

    direct_runner_fix.apply()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    client = pubsub.SubscriberClient()  # as the evaluator calls it
    try:
        response = client.pull(subscription=f"projects/{PROJECT}/subscriptions/none", max_messages=10, timeout=30)
    finally:
        client.close()
    assert list(response.received_messages) == []
    assert "Pub/Sub pull failed" in caplog.text


# --- end to end ---------------------------------------------------------------------------

REPLAY = replay.ReplayPlan(duplicate_rate=0.05, time_mode="shift", fit_span_s=240, events_per_message=100)
CONVERGE_S = 300


def _hostile_messages(now_us: int) -> tuple[list[tuple[bytes, dict]], list[dict], int]:
    """``(messages, events they must count, how many must be dead letters)``: one valid
    event under each hostile ``ts`` of the issue, a 9.9 MB valid event (padded with an
    ignored field) and 9.9 MB of random bytes (a ``decode_error``)."""

    def event(name: str) -> dict:
        return {
            "event_id": f"hostile/{name}",
            "video_id": "HOSTILE",
            "event_type": "departed",
            "event_time": format_time_us(now_us - 60_000_000),
            "value": 1.0,
        }

    ts = {
        "superscript two": "²",
        "5,000 digits": "9" * 5000,
        "year 2100": str(YEAR_2100_MS),
        "year 10000": str(END_EPOCH_MS),
        "empty": "",
        "negative": "-1",
    }
    messages = [(orjson.dumps(event(name)), {"ts": raw}) for name, raw in ts.items()]
    big = event("9.9 MB")
    padded = orjson.dumps({**big, "padding": ""})
    messages.append((orjson.dumps({**big, "padding": "x" * (BIG - len(padded))}), {}))
    messages.append((os.urandom(BIG), {"ts": "²"}))
    return messages, [event(name) for name in ts] + [big], 1


def _dead_letters(folder: str) -> list[DeadLetter]:
    return [DeadLetter.from_json(line) for line in local_lines(f"{folder}/dead-letters")]


@pytest.mark.hostile
@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("runner", ["local", pytest.param("flink", marks=pytest.mark.flink)])
def test_replay_with_hostile_messages_equals_the_reference(runner, tmp_path, pubsub_host, bigtable_host):
    d = Deployment(str(tmp_path))
    flags = runner_flags("flink", checkpoint_dir=str(tmp_path / "checkpoints")) if runner == "flink" else []
    job = d.start_job(*flags)
    try:
        now_us = time.time_ns() // 1000
        events = replay.plan_events(replay.read_source("flights", 2000), REPLAY, now_us)
        half = len(events) // 2
        d.publish(events[:half], REPLAY)
        messages, counted, dead = _hostile_messages(now_us)
        started = time.monotonic()
        _publish(f"projects/{PROJECT}/topics/{d.topic}", messages)
        print(f"{len(messages)} hostile messages published in {time.monotonic() - started:.1f} s")
        manifest = f"{d.folder}/manifest-hostile.jsonl"
        with open(manifest, "wb") as f:
            f.writelines(orjson.dumps(e) + b"\n" for e in counted)
        d.manifests.append(manifest)
        d.publish(events[half:], REPLAY)
        mismatches, waited = d.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        print(f"{runner}: every aggregate equal {waited:.1f} s after publishing")
        _wait_for(lambda: len(_dead_letters(d.folder)) >= dead, 120, "the garbage message's dead letter")
        letters = _dead_letters(d.folder)
        assert [(x.reason, len(x.payload)) for x in letters] == [("decode_error", BIG)]
        assert job.poll() is None, "the job stopped"
    finally:
        kill(job)
    log = b"".join(open(p, "rb").read() for p in sorted(tmp_path.glob("job-*.log")))
    assert b"larger than max" not in log


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.flink
@pytest.mark.faults
def test_redelivery_storm_is_exact(tmp_path, pubsub_host, bigtable_host):
    """Ack deadline 10 s, checkpoints (hence acks) every 30 s, published just after a
    checkpoint: every message is delivered about three times before its ack. After the aggregates first equal the reference,
    two more checkpoints complete (every copy pulled before the first is acked by the
    second) and the aggregates are checked again. The raw archive keeps every copy read, so
    its line count over the events published is the redelivery factor."""
    from google.cloud import pubsub_v1

    d = Deployment(str(tmp_path))
    with pubsub_v1.SubscriberClient() as s:
        s.update_subscription(
            request={
                "subscription": {
                    "name": f"projects/{PROJECT}/subscriptions/{d.subscription}",
                    "ack_deadline_seconds": 10,
                },
                "update_mask": {"paths": ["ack_deadline_seconds"]},
            }
        )
    checkpoints = str(tmp_path / "checkpoints")
    job = d.start_job(*runner_flags("flink", checkpointing_interval_ms=30_000, checkpoint_dir=checkpoints))
    try:
        # published just after a checkpoint, so 30 s pass before the next one acks them
        _wait_for(lambda: latest_checkpoint(checkpoints), 120, "the first checkpoint")
        events = replay.plan_events(replay.read_source("flights", 3000), REPLAY, time.time_ns() // 1000)
        figures = d.publish(events, REPLAY)
        mismatches, waited = d.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        for _ in range(2):
            before = latest_checkpoint(checkpoints)
            _wait_for(lambda: latest_checkpoint(checkpoints) not in (None, before), 120, "a checkpoint")
        mismatches, _ = d.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        archived = sum(1 for _ in local_lines(f"{d.folder}/archive"))
        letters = _dead_letters(d.folder)
        print(
            f"redelivery storm: {figures['published']} events published, {archived} copies read "
            f"(factor {archived / len(events):.2f}), every aggregate equal {waited:.1f} s after publishing, "
            f"dead letters {sorted({x.reason for x in letters})}"
        )
        assert archived >= 2 * len(events), "every message should have been delivered twice or more"
        assert all(x.reason == "too_late" for x in letters)
        assert job.poll() is None
    finally:
        kill(job)
