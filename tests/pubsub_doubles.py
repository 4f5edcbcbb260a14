"""Stand-ins for what surrounds ``transforms.pubsub_io._PullFn`` on a worker, to drive its
``process`` without a runner: a subscriber that answers pulls from a script, the runner's
bundle finalizer and restriction tracker, and a metrics scope like a worker's per step.
(The Pub/Sub emulator serves the source's end-to-end tests; these model one worker's
bundle sequence exactly, which no runner lets a test choose.)"""

from __future__ import annotations

import contextlib
import datetime as dt
from types import SimpleNamespace

from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory

from transforms import metrics
from transforms.pubsub_io import PullWatermark


class ScriptedSubscriber:
    """Answers each pull with the next scripted batch of ``(ack id, publish time s)`` (an
    empty batch when the script is used up); records acknowledged ids in ``acked``."""

    def __init__(self, batches=()):
        self.batches, self.acked = list(batches), []

    def pull(self, request, retry, timeout):
        batch = self.batches.pop(0) if self.batches else []
        return SimpleNamespace(
            received_messages=[
                SimpleNamespace(
                    ack_id=a,
                    message=SimpleNamespace(
                        data=a.encode(), attributes={}, publish_time=dt.datetime.fromtimestamp(p, dt.timezone.utc)
                    ),
                )
                for a, p in batch
            ]
        )

    def acknowledge(self, request, retry, timeout):
        self.acked.extend(request["ack_ids"])

    def close(self):
        pass


class Finalizer:
    """The runner's bundle finalizer: keeps the callbacks a bundle registers; a test runs them
    as the runner would at a checkpoint's completion notice."""

    def __init__(self):
        self.callbacks = []

    def register(self, callback):
        self.callbacks.append(callback)


class Tracker(OffsetRestrictionTracker):
    def defer_remainder(self, after):  # the runner's wrapper provides it
        pass


def run_bundle(fn, reader, finalizer: Finalizer, start: int = 0) -> list:
    """One bundle of ``reader`` resuming at restriction position ``start`` (one position per pull)."""
    return list(
        fn.process(
            reader,
            bundle_finalizer=finalizer,
            restriction_tracker=Tracker(OffsetRange(start, 10**9)),
            watermark=PullWatermark(None),
        )
    )


@contextlib.contextmanager
def metrics_scope(container: MetricsContainer):
    """Metrics reported inside go to ``container``, as a worker scopes a step's metrics."""
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)
    sampler.start()
    try:
        with sampler.scoped_state("pull", "process", metrics_container=container):
            yield
    finally:
        sampler.stop()
        statesampler.set_current_tracker(None)


def metric_value(container: MetricsContainer, name: str):
    """The value of this project's counter or gauge ``name`` in ``container`` (None if unset)."""
    cumulative = container.get_cumulative()
    for key, v in {**cumulative.counters, **cumulative.gauges}.items():
        if key.metric.namespace == metrics.NAMESPACE and key.metric.name == name:
            return getattr(v, "value", v)
    return None
