"""The replayer (a product feature) and the independent reconciliation."""

import orjson
import pytest

from schemas.event import US_PER_S, parse_event_time
from viewcounts.commands import replay
from viewcounts.commands.reconcile import expected_aggregates, reconcile
from viewcounts.samples import flights


def test_flight_mapping_is_dst_aware_and_uses_scheduled_time_plus_delay():
    winter = {
        "year": "2013",
        "month": "1",
        "day": "1",
        "dep_time": "517",
        "sched_dep_time": "515",
        "dep_delay": "2",
        "carrier": "UA",
        "flight": "1545",
        "origin": "EWR",
        "dest": "IAH",
    }
    summer = dict(winter, month="7", day="4", dep_delay="-3")
    cancelled = dict(winter, dep_time="NA", dep_delay="NA")
    assert flights.flight_to_event(winter) == {
        "event_id": "2013-01-01/UA1545/EWR",
        "video_id": "IAH",
        "event_type": "departed",
        "event_time": "2013-01-01T10:17:00Z",
        "value": 2,
    }
    assert flights.flight_to_event(summer)["event_time"] == "2013-07-04T09:12:00Z"  # EDT is UTC-4
    c = flights.flight_to_event(cancelled)
    assert c["event_type"] == "cancelled" and "value" not in c and c["event_time"] == "2013-01-01T10:15:00Z"


def test_flights_source_reads_the_real_package():
    events = list(flights.flight_events(limit=500))
    assert len(events) == 500 and len({e["event_id"] for e in events}) == 500
    assert "JFK" in flights.airport_metadata()


def _events(n):
    return [
        {
            "event_id": f"e{i}",
            "video_id": "V",
            "event_type": "view",
            "event_time": f"2013-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
        }
        for i in range(n)
    ]


def test_shift_keeps_spacing_and_lands_the_newest_event_at_now():
    now = 1_800_000_000 * US_PER_S
    out = replay.plan_events(_events(120), replay.ReplayPlan(time_mode="shift"), now)
    times = [parse_event_time(e["event_time"]) for e in out]
    assert max(times) == now and times[1] - times[0] == US_PER_S


def test_fit_span_speeds_events_up_into_the_span():
    now = 1_800_000_000 * US_PER_S
    out = replay.plan_events(_events(120), replay.ReplayPlan(fit_span_s=11.9), now)
    times = [parse_event_time(e["event_time"]) for e in out]
    assert max(times) == now and now - min(times) == pytest.approx(11.9 * US_PER_S, abs=1)


def test_real_mode_keeps_times_and_duplicates_come_after_their_original():
    src = _events(2000)
    out = replay.plan_events(src, replay.ReplayPlan(duplicate_rate=0.1, time_mode="real", seed=7), 0)
    assert [e["event_time"] for e in out if e["event_id"] == "e5"][0] == "2013-01-01T00:00:05Z"
    copies = len(out) - len(src)
    assert 150 < copies < 250
    # originals keep their order; every copy comes after its original
    assert list(dict.fromkeys(e["event_id"] for e in out)) == [e["event_id"] for e in src]


def test_plan_is_deterministic_for_a_seed():
    plan = replay.ReplayPlan(duplicate_rate=0.3, seed=1)
    assert replay.plan_events(_events(300), plan, 10**15) == replay.plan_events(_events(300), plan, 10**15)


@pytest.mark.parametrize(
    "bad", [dict(duplicate_rate=1.5), dict(time_mode="warp"), dict(events_per_message=0), dict(speedup=0)]
)
def test_bad_plans_are_refused(bad):
    with pytest.raises(ValueError):
        replay.ReplayPlan(**bad)


def test_expected_aggregates_dedup_and_window(tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"event_id": "a", "video_id": "V", "event_type": "departed", "event_time": "2024-05-14T10:00:05Z", "value": 3},
        {"event_id": "a", "video_id": "V", "event_type": "departed", "event_time": "2024-05-14T10:00:05Z", "value": 3},
        {
            "event_id": "b",
            "video_id": "V",
            "event_type": "departed",
            "event_time": "2024-05-14T10:00:59.999999Z",
            "value": -1,
        },
        {"event_id": "c", "video_id": "V", "event_type": "departed", "event_time": "2024-05-14T10:01:00Z"},
    ]
    manifest.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    exp = expected_aggregates(str(manifest))
    m0 = 1715680800
    assert exp[("V", "departed", "minute", m0)] == (2, 2, 2.0, -1.0, 3.0)
    assert exp[("V", "departed", "minute", m0 + 60)] == (1, 0, 0.0, None, None)
    assert exp[("V", "departed", "hour", m0)] == (3, 2, 2.0, -1.0, 3.0)
    assert reconcile(exp, dict(exp)) == []
    changed = dict(exp)
    changed[("V", "departed", "hour", m0)] = (3, 2, 2.5, -1.0, 3.0)
    del changed[("V", "departed", "minute", m0 + 60)]
    assert {m.key for m in reconcile(exp, changed)} == {
        ("V", "departed", "hour", m0),
        ("V", "departed", "minute", m0 + 60),
    }


@pytest.mark.emulator
def test_publish_batches_events_and_writes_an_exact_manifest(pubsub_host, tmp_path):
    from google.cloud import pubsub_v1

    from viewcounts.local.provision import create_topic_and_subscription

    create_topic_and_subscription("test-project", "replay-topic", "replay-sub")
    plan = replay.ReplayPlan(duplicate_rate=0.2, time_mode="real", events_per_message=7, seed=3)
    events = replay.plan_events(_events(100), plan, 0)
    manifest = tmp_path / "manifest.jsonl"
    figures = replay.publish(events, "test-project", "replay-topic", plan, str(manifest), progress=False)
    assert figures["published"] == len(events) and figures["messages"] == -(-len(events) // 7)
    assert [orjson.loads(line) for line in manifest.read_bytes().splitlines()] == events
    received = []
    with pubsub_v1.SubscriberClient() as sub:
        path = sub.subscription_path("test-project", "replay-sub")
        while len(received) < figures["messages"]:
            resp = sub.pull(subscription=path, max_messages=100, timeout=30)
            received += [orjson.loads(m.message.data) for m in resp.received_messages]
            sub.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
    assert all(isinstance(batch, list) and 1 <= len(batch) <= 7 for batch in received)
    assert sorted(e["event_id"] for batch in received for e in batch) == sorted(e["event_id"] for e in events)
