"""Source readers and source metrics of ``transforms.pubsub_io`` without a runner (issue 13):
how many readers a job gets, and what one worker's readers report as
``messages_pulled``, ``messages_acked`` and ``oldest_unacked_age_ms``."""

from __future__ import annotations

import time

import pytest
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.streaming import source_readers
from tests.pubsub_doubles import Finalizer, ScriptedSubscriber, metric_value, metrics_scope, run_bundle
from transforms import metrics, pubsub_io
from transforms.pubsub_io import _PullFn, reader_elements


def test_readers_default_to_the_parallelism_and_refuse_stamps_of_several():
    assert source_readers(PipelineOptions([]), "flink") == 1
    assert source_readers(PipelineOptions(["--parallelism=4"]), "flink") == 4
    assert source_readers(PipelineOptions(["--parallelism=4", "--source_readers=2"]), "flink") == 2
    assert source_readers(PipelineOptions([]), "prism") == 1
    with pytest.raises(ValueError):
        source_readers(PipelineOptions(["--source_readers=2"]), "prism")


def test_source_metrics_count_pulls_acks_and_the_oldest_unacked_age(monkeypatch):
    container = MetricsContainer("pull")
    with metrics_scope(container):
        fn = _PullFn(None, 1000, max_pull_s=60, poll_s=0.1, idle_s=5, pause_s=0, sample_s=60, max_future_skew_s=300)
        now = time.time()
        client = ScriptedSubscriber([[("a", now - 30), ("b", now - 10)], [], [("c", now - 5)], []])
        monkeypatch.setattr(pubsub_io, "subscriber_client", lambda: client)
        fn.setup()
        reader = reader_elements("projects/p/subscriptions/s", 1)[0]

        def value(name):
            return metric_value(container, name)

        first = Finalizer()
        assert len(run_bundle(fn, reader, first)) == 2
        assert value(metrics.MESSAGES_PULLED) == 2 and value(metrics.MESSAGES_ACKED) is None
        assert 30_000 <= value(metrics.OLDEST_UNACKED_AGE_MS) < 40_000  # a, pulled, awaits its checkpoint
        second = Finalizer()
        assert len(run_bundle(fn, reader, second, start=1)) == 1
        assert value(metrics.MESSAGES_PULLED) == 3
        assert 30_000 <= value(metrics.OLDEST_UNACKED_AGE_MS) < 40_000
        first.callbacks[0]()  # a completion notice finalizes both bundles: their ids are filed,
        second.callbacks[0]()  # not acknowledged (that checkpoint may not hold them: AckLedger)
        assert client.acked == []
        assert 30_000 <= value(metrics.OLDEST_UNACKED_AGE_MS) < 40_000
        for _ in range(pubsub_io.ACK_ROUNDS):  # later rounds: a bundle started after the last notice
            later = Finalizer()
            run_bundle(fn, reader, later, start=2)  # empty pulls claim nothing
            later.callbacks[0]()
        assert sorted(client.acked) == ["a", "b", "c"]
        run_bundle(fn, reader, Finalizer(), start=2)  # callbacks run outside bundles: reported with the next one
        assert value(metrics.MESSAGES_ACKED) == 3 and value(metrics.OLDEST_UNACKED_AGE_MS) == 0
