"""Dead letters land durably in files and never stall the job, whatever the dead-letter topic does
(``transforms/dead_letters.py``, ``transforms/files.py``, the publisher in ``transforms/pubsub_io.py``).

* Files: a bundle's lines are in files when the bundle ends, or sooner when its buffer
  fills; names are unique and carry the run.
* The Pub/Sub copy of a dead letter is bounded (generated payloads and details): at most
  ``MAX_PUBLISHED_PAYLOAD_BYTES`` of payload, attributes within Pub/Sub's limits, the full
  size and a ``truncated`` flag when cut.
* The publisher against the emulator: a deleted topic and a message over Pub/Sub's 10 MB
  limit are given up and counted within the bundle's timeout; nothing raises.
* The streaming job (local runner and embedded Flink, real emulators): a 9.9 MB payload
  that is a dead letter (its copy would pass Pub/Sub's limit) reaches the topic cut to
  1 MB and the files whole; then the dead-letter topic is deleted mid-run; the job keeps
  counting (0 mismatches on the good events against the polars reference), and every
  dead letter of both phases is in the files.
"""

from __future__ import annotations

import glob
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.options import default_dead_letter_path
from pipelines.runners import runner_flags
from schemas.archive import MAX_ATTRIBUTE_BYTES, MAX_PUBLISHED_PAYLOAD_BYTES, DeadLetter, local_lines, parse_file_path
from tests.streaming_jobs import PROJECT, Deployment, kill
from tests.test_streaming_runners import _wait_for
from transforms.files import _WriteBundleFiles
from transforms.pubsub_io import _PublishFn
from viewcounts.commands import replay
from viewcounts.local import provision

pytestmark = pytest.mark.faults

BIG = 9_900_000  # bytes: a message Pub/Sub accepts, whose dead letter with attributes would not fit
H10 = 1_715_680_800  # 2024-05-14T10:00:00Z


@settings(max_examples=200, deadline=None)
@given(
    payload_size=st.integers(0, 3 * MAX_PUBLISHED_PAYLOAD_BYTES),
    detail=st.text(max_size=3000),
    limit=st.integers(1, 2 * MAX_PUBLISHED_PAYLOAD_BYTES),
)
def test_the_pubsub_copy_of_a_dead_letter_is_bounded(payload_size, detail, limit):
    payload = bytes(range(256)) * (payload_size // 256) + b"x" * (payload_size % 256)
    data, attributes = DeadLetter(payload, "json_error", detail, 12).pubsub_message(limit)
    assert data == payload[:limit]
    assert attributes["payload_bytes"] == str(payload_size)
    assert (attributes.get("truncated") == "true") == (payload_size > limit)
    for value in attributes.values():
        assert len(value.encode("utf-8")) <= MAX_ATTRIBUTE_BYTES
    assert attributes["detail"] == detail.encode("utf-8", "replace")[:MAX_ATTRIBUTE_BYTES].decode("utf-8", "ignore")


def test_dead_letter_files_default_beside_the_archive():
    assert default_dead_letter_path("gs://b/archive/") == "gs://b/dead-letters"
    assert default_dead_letter_path("/data/x/archive") == "/data/x/dead-letters"
    assert default_dead_letter_path("gs://b") is None and default_dead_letter_path(None) is None


def test_a_job_without_a_folder_for_its_dead_letters_is_refused(tmp_path):
    """write_failed dead letters are the only record of an aggregate Bigtable refused: every
    job that makes dead letters writes them to files, or is not built."""
    import apache_beam as beam

    from pipelines import batch_recompute, streaming
    from pipelines.graph import count_and_store
    from pipelines.options import SinkConfig
    from transforms.dead_letters import WriteDeadLetters
    from transforms.enrich import EnrichFromFile
    from transforms.validate import AcceptancePolicy

    sub = "--input_subscription=projects/my-project/subscriptions/s"
    for flags in (
        [sub],
        [sub, "--dead_letter_topic=projects/my-project/topics/t"],
        [sub, "--archive_path=gs://bucket"],
    ):
        with pytest.raises(ValueError, match="--dead_letter_path"):
            streaming.build_pipeline(flags)
    with pytest.raises(ValueError, match="--dead_letter_path"):
        batch_recompute.build_pipeline(
            ["--archive_path=gs://bucket", "--start=2024-05-14T10:00:00Z", "--end=2024-05-14T11:00:00Z"]
        )
    with pytest.raises(ValueError, match="--dead_letter_path"):
        count_and_store(
            beam.Pipeline() | beam.Create([]),
            EnrichFromFile(None, None),
            AcceptancePolicy(),
            None,
            SinkConfig("p", "i", "t", None, None, None),
        )
    for flags, folder in (
        ([f"--dead_letter_path={tmp_path}/dl"], f"{tmp_path}/dl"),
        ([f"--archive_path={tmp_path}/archive"], f"{tmp_path}/dead-letters"),
    ):
        found = []

        class Visitor(beam.pipeline.PipelineVisitor):
            def enter_composite_transform(self, node):
                if isinstance(node.transform, WriteDeadLetters):
                    found.append(node.transform._path)

        streaming.build_pipeline([sub, *flags]).visit(Visitor())
        assert found == [folder], flags


def test_bundle_files_are_written_before_the_bundle_ends_and_when_the_buffer_fills(tmp_path):
    root = str(tmp_path / "files")
    fn = _WriteBundleFiles(root, "dead-letters", "00000000ab", max_buffer_bytes=1000)
    fn.start_bundle()
    fn.process((H10, [b"a" * 600]))
    assert _lines(root) == []
    fn.process((H10, [b"b" * 600]))  # over the buffer: written now, within the bundle
    assert sorted(_lines(root)) == [b"a" * 600, b"b" * 600]
    fn.process((H10 + 3600, [b"c"]))
    fn.process((H10, [b"d"]))
    fn.finish_bundle()
    files = glob.glob(f"{root}/**/*.jsonl", recursive=True)
    assert sorted(_lines(root)) == [b"a" * 600, b"b" * 600, b"c", b"d"] and len(files) == len(set(files)) == 3
    assert {parse_file_path(f).run_id for f in files} == {"00000000ab"}
    assert not glob.glob(f"{root}/**/*.tmp", recursive=True)


def _lines(root: str) -> list[bytes]:
    return list(local_lines(root))


def _publish_fn(topic: str, timeout_s: float = 10.0, backoff_s: float = 60.0) -> _PublishFn:
    fn = _PublishFn(topic, timeout_s, backoff_s)
    fn.setup()
    return fn


@pytest.mark.emulator
def test_publisher_gives_up_on_a_deleted_topic_and_an_oversized_message_without_raising(pubsub_host):
    from google.cloud import pubsub_v1

    name = uuid.uuid4().hex[:8]
    provision.create_topic_and_subscription(PROJECT, f"dl-{name}", None)
    topic = f"projects/{PROJECT}/topics/dl-{name}"
    fn = _publish_fn(topic)
    try:
        fn.start_bundle()
        fn.process((b"ok", {"reason": "json_error"}))
        fn.process((b"x" * 10_500_000, {}))  # over Pub/Sub's limit: refused by the client or the server
        fn.finish_bundle()
        assert fn._failed == 1 and not fn._topic_failed

        pubsub_v1.PublisherClient().delete_topic(topic=topic)
        started = time.monotonic()
        fn.start_bundle()
        for i in range(20):
            fn.process((b"refused %d" % i, {}))
        fn.finish_bundle()
        assert fn._failed == 20 and fn._topic_failed
        fn.start_bundle()  # the topic is skipped for backoff_s: no wait at all
        fn.process((b"skipped", {}))
        fn.finish_bundle()
        assert fn._failed == 1
        assert time.monotonic() - started < 10 + 5  # one bundle timeout at most, plus slack for a busy machine
    finally:
        fn.teardown()


def _bad_payloads(tag: str) -> dict[bytes, str]:
    """Raw messages that are each one dead letter of the whole payload: {payload: reason}."""
    return {
        b"{not json " + tag.encode(): "json_error",
        b"\xff\xfe" + tag.encode(): "decode_error",
        b'"' + tag.encode() + b'"': "not_an_object",
    }


def _publish_raw(topic: str, payloads) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    try:
        for f in [publisher.publish(publisher.topic_path(PROJECT, topic), p) for p in payloads]:
            f.result(timeout=120)
    finally:
        publisher.stop()


def _filed(folder: str) -> list[DeadLetter]:
    return [DeadLetter.from_json(line) for line in local_lines(f"{folder}/dead-letters")]


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("runner", ["local", pytest.param("flink", marks=pytest.mark.flink)])
def test_dead_letters_land_in_files_when_the_topic_is_too_small_or_gone(runner, tmp_path, pubsub_host, bigtable_host):
    from google.cloud import pubsub_v1

    d = Deployment(str(tmp_path))
    dead_topic, dead_sub = f"dl-{d.name}", f"dl-{d.name}-sub"
    provision.create_topic_and_subscription(PROJECT, dead_topic, dead_sub)
    plan = replay.ReplayPlan(duplicate_rate=0.05, time_mode="shift", fit_span_s=120, events_per_message=50)
    flights = replay.plan_events(replay.read_source("flights", 2000), plan, time.time_ns() // 1000)
    job = d.start_job(f"--dead_letter_topic=projects/{PROJECT}/topics/{dead_topic}", *runner_flags(runner))
    try:
        # phase 1: the topic is there; a 9.9 MB dead letter is published cut to 1 MB
        big = b'"' + b"x" * (BIG - 2) + b'"'
        phase1 = {**_bad_payloads("phase 1"), big: "not_an_object"}
        d.publish(flights[:1000], plan)
        _publish_raw(d.topic, phase1)
        subscriber = pubsub_v1.SubscriberClient()
        copies = []

        def big_copy():
            response = subscriber.pull(
                subscription=subscriber.subscription_path(PROJECT, dead_sub), max_messages=10, timeout=30
            )
            copies.extend(response.received_messages)
            return next((m.message for m in copies if m.message.attributes.get("truncated")), None)

        copy = _wait_for(big_copy, 240, "the 9.9 MB dead letter's copy on the topic")
        assert len(copy.data) == MAX_PUBLISHED_PAYLOAD_BYTES and copy.data == big[:MAX_PUBLISHED_PAYLOAD_BYTES]
        assert copy.attributes["payload_bytes"] == str(BIG) and copy.attributes["reason"] == "not_an_object"

        # phase 2: the topic is deleted mid-run: publishing is refused, the job goes on
        pubsub_v1.PublisherClient().delete_topic(topic=f"projects/{PROJECT}/topics/{dead_topic}")
        phase2 = _bad_payloads("phase 2")
        d.publish(flights[1000:], plan)
        _publish_raw(d.topic, phase2)
        mismatches, waited = d.converged(240, job)
        assert mismatches == [], mismatches[:5]
        expected = set({**phase1, **phase2}.items())
        _wait_for(
            lambda: expected <= {(x.payload, x.reason) for x in _filed(d.folder)}, 120, "every dead letter in the files"
        )
        assert job.poll() is None, "the job stopped"
        with open(f"{d.folder}/job-0.log", "rb") as log:
            assert b"not published" in log.read()  # the refusal was met, not avoided
        print(f"counted exactly {waited:.1f} s after phase 2 was published; {len(expected)} dead letters filed")
    finally:
        kill(job)
