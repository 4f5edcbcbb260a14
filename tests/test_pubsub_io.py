"""The portable Pub/Sub source and sink (transforms/pubsub_io.py) against the emulator, on
Prism and on an embedded Flink: every published message is read, stamped with the watermark
it was pulled at (which follows the timestamp attribute), and what the sink publishes arrives
with its attributes."""

from __future__ import annotations

import os
import time
import uuid

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.runners import flink_default_max_parallelism, flink_key_group, runner_flags
from transforms.pubsub_io import (
    PullWatermark,
    ReadFromPubSubPortable,
    WriteToPubSubPortable,
    message_timestamp_us,
    reader_elements,
    subscription_of,
)
from viewcounts.commands import replay
from viewcounts.local import provision

pytestmark = [pytest.mark.slow, pytest.mark.emulator]
PROJECT = "test-project"


class _Record(beam.DoFn):
    """Append ``(event time µs, payload)`` lines to ``path`` (LOOPBACK workers share this machine)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, payload: bytes, timestamp=beam.DoFn.TimestampParam):
        with open(self._path, "ab") as f:
            f.write(orjson.dumps([timestamp.micros, payload.decode()]) + b"\n")
        yield payload, {"seen": "yes"}


def _read(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f]


@pytest.mark.parametrize(
    "runner", [pytest.param("prism", marks=pytest.mark.prism), pytest.param("flink", marks=pytest.mark.flink)]
)
def test_every_message_is_read_stamped_with_the_watermark_and_republished(runner, tmp_path, pubsub_host):
    name = uuid.uuid4().hex[:8]
    provision.create_topic_and_subscription(PROJECT, f"in-{name}", f"in-{name}-sub")
    provision.create_topic_and_subscription(PROJECT, f"out-{name}", f"out-{name}-sub")
    seen = str(tmp_path / "seen.jsonl")
    options = PipelineOptions(runner_flags(runner))
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    (
        pipeline
        | ReadFromPubSubPortable(f"projects/{PROJECT}/subscriptions/in-{name}-sub", "ts")
        | beam.ParDo(_Record(seen))
        | WriteToPubSubPortable(f"projects/{PROJECT}/topics/out-{name}")
    )
    result = pipeline.run()
    try:
        events = [
            {
                "event_id": f"e{i}",
                "video_id": "v",
                "event_type": "view",
                "event_time": f"2013-01-01T{i // 60:02d}:{i % 60:02d}:00.5Z",
            }
            for i in range(200)
        ]
        plan = replay.ReplayPlan(time_mode="real", events_per_message=10)
        replay.publish(events, PROJECT, f"in-{name}", plan, None, progress=False)
        deadline = time.monotonic() + 180
        while len(_read(seen)) < 20 and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        result.cancel()
    got = _read(seen)
    assert sorted(p for _, p in got) == sorted(orjson.dumps(b).decode() for b in replay.messages(events, 10))
    # published in time order, so the watermark a message is pulled at never passes its own time
    for t_us, payload in got:
        assert t_us <= min(replay._time_us(e) for e in orjson.loads(payload))
    from google.cloud import pubsub_v1

    with pubsub_v1.SubscriberClient() as sub:
        out = sub.pull(subscription=f"projects/{PROJECT}/subscriptions/out-{name}-sub", max_messages=100, timeout=30)
    assert out.received_messages and all(m.message.attributes["seen"] == "yes" for m in out.received_messages)


def test_timestamp_attribute_forms_and_fallback():
    now_us = 1_700_000_000_000_000
    assert message_timestamp_us({"ts": "1356998400500"}, 7, "ts", now_us) == 1356998400500000
    assert message_timestamp_us({"ts": "2013-01-01T00:00:00.5Z"}, 7, "ts", now_us) == 7  # SPEC: epoch ms only
    assert message_timestamp_us({"ts": "not a time"}, 7, "ts", now_us) == 7
    assert message_timestamp_us({}, 7, "ts", now_us) == 7
    assert message_timestamp_us({"ts": "1"}, 7, None, now_us) == 7
    assert message_timestamp_us({"ts": str(now_us // 1000 + 300_000)}, 7, "ts", now_us) == now_us + 300_000_000
    assert message_timestamp_us({"ts": str(now_us // 1000 + 300_001)}, 7, "ts", now_us) == 7  # past the skew


def test_pull_watermark_holds_the_earliest_of_the_sample_period_and_jumps_after_idle():
    w = PullWatermark(None)
    w.pulled([300, 100, 200], now_s=1000.0, sample_s=60)
    assert w.current_watermark().micros == 100
    w.pulled([500, 400], now_s=1010.0, sample_s=60)  # a later pull does not pass an earlier one's minimum
    assert w.current_watermark().micros == 100
    w.pulled([50], now_s=1020.0, sample_s=60)  # never backwards
    assert w.current_watermark().micros == 100
    w.pulled([600], now_s=1065.0, sample_s=60)  # the first pull left the sample period
    assert w.current_watermark().micros == 400  # the 50 of 1020 was late: no sample, it holds nothing
    w.pulled([700], now_s=1081.0, sample_s=60)
    assert w.current_watermark().micros == 600  # the earliest of the pulls of the last 60 s
    resumed = PullWatermark(w.get_estimator_state())  # another worker, or a restored job
    resumed.empty(2000.0, idle_s=5, sample_s=60)
    resumed.empty(2004.0, idle_s=5, sample_s=60)
    assert resumed.current_watermark().micros == 600
    resumed.empty(2005.0, idle_s=5, sample_s=60)
    assert resumed.current_watermark().micros == 700 + 5_000_000  # the newest timestamp pulled + the idle time
    resumed.pulled([650, 900], now_s=2010.0, sample_s=60)
    resumed.empty(3000.0, idle_s=5, sample_s=60)
    assert resumed.current_watermark().micros == 700 + 5_000_000  # the idle clock restarted with the data
    live = PullWatermark(None)  # live data from a clock 5 s ahead: never past the wall clock
    live.pulled([2005_000_000], now_s=2000.0, sample_s=60)
    live.empty(2001.0, idle_s=5, sample_s=60)
    live.empty(2010.0, idle_s=5, sample_s=60)
    assert live.current_watermark().micros == 2010_000_000


@pytest.mark.parametrize("readers", [1, 2, 3, 4, 8])
def test_readers_fall_in_their_own_share_of_flink_key_groups(readers):
    sub = "projects/p/subscriptions/" + "s" * 150  # a name over 127 bytes: a two-byte length prefix
    elements = reader_elements(sub, readers, flink_key_group, 128)
    assert len(set(elements)) == readers and {subscription_of(e) for e in elements} == {sub}
    for parallelism in (1, 2, 4, 8):
        subtasks = [flink_key_group(e) * parallelism // 128 for e in elements]
        per_subtask = [subtasks.count(i) for i in range(parallelism)]
        assert max(per_subtask) - min(per_subtask) <= 1 if readers >= parallelism else max(per_subtask) == 1
    with pytest.raises(ValueError):
        reader_elements(sub, 0)
    with pytest.raises(ValueError):
        reader_elements(sub, 129, flink_key_group, 128)


@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([128, 256]),
    st.sampled_from(
        [
            "projects/viewcounts-local/subscriptions/viewcounts-events-sub",
            "projects/test-project/subscriptions/events-sub",
            "projects/p/subscriptions/x",
        ]
    ),
)
@settings(max_examples=150, deadline=None)
def test_readers_spread_evenly_whenever_one_count_divides_the_other(readers, parallelism, max_parallelism, sub):
    """Flink gives key group ``g`` to subtask ``g * p // m``: with readers a multiple of the
    parallelism each subtask runs the same number of readers, and with the parallelism a
    multiple of the readers no subtask runs two (reported by review: floor boundaries put
    two readers on one subtask at parallelism 9 to 15)."""
    if readers % parallelism and parallelism % readers:
        return
    elements = reader_elements(sub, readers, lambda e: flink_key_group(e, max_parallelism), max_parallelism)
    subtasks = [flink_key_group(e, max_parallelism) * parallelism // max_parallelism for e in elements]
    per_subtask = [subtasks.count(i) for i in range(parallelism)]
    assert max(per_subtask) == (readers // parallelism if readers >= parallelism else 1)
    assert len(set(subtasks)) == min(readers, parallelism)


def test_flink_default_max_parallelism_is_flinks():
    assert [flink_default_max_parallelism(p) for p in (1, 2, 85, 86, 100, 171, 172, 30000)] == [
        128,
        128,
        128,
        256,
        256,
        256,
        512,
        32768,
    ]


@pytest.mark.flink
def test_flink_key_group_is_the_job_servers(tmp_path):
    """``flink_key_group`` against Beam's ``FlinkKey`` and Flink's ``KeyGroupRangeAssignment``
    from the job server jar's own classpath."""
    import shutil
    import subprocess

    from pipelines.runners import FLINK_JOB_SERVER_JAR

    if not (shutil.which("javac") and FLINK_JOB_SERVER_JAR.exists()):
        pytest.skip("needs javac and `make flink-job-server`")
    (tmp_path / "K.java").write_text(
        "import org.apache.beam.runners.flink.adapter.FlinkKey;\n"
        "import org.apache.beam.sdk.coders.StringUtf8Coder;\n"
        "import org.apache.flink.runtime.state.KeyGroupRangeAssignment;\n"
        "public class K { public static void main(String[] a) { for (String s : a) System.out.println("
        "KeyGroupRangeAssignment.assignToKeyGroup(FlinkKey.of(s, StringUtf8Coder.of()), 128)); } }\n"
    )
    cp = ":".join(str(p) for p in sorted((FLINK_JOB_SERVER_JAR.parent / "lib").glob("*.jar")))
    subprocess.run(["javac", "-cp", cp, "K.java"], cwd=tmp_path, check=True, timeout=120)
    elements = reader_elements("projects/p/subscriptions/" + "x" * 200, 4, flink_key_group, 128) + ["", "é" * 70, "abc"]
    out = subprocess.run(
        ["java", "-cp", f"{cp}:{tmp_path}", "K", *elements], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert [int(x) for x in out] == [flink_key_group(e) for e in elements]
