"""Three fixes for Beam's BundleBasedDirectRunner (the local runner), applied by ``apply()``.

1. Lost metrics (seen on apache-beam 2.73.0).

The runner makes a new ``MetricsContainer`` for every bundle and passes it to
``StateSampler.scoped_state``, but the sampler caches scoped states by step and state
name, so every bundle after a thread's first one increments the first bundle's container,
which was already committed: counters stop at the first bundle's value. This patch makes
the cached state follow the container it is given. It changes nothing on other runners
(they pass no container, or the same one).

2. Per-bundle signature inspection. The runner unpickles every DoFn for every bundle and
asks ``userstate.get_dofn_specs`` which state and timers it declares, which inspects the
signature of every method (measured by ``viewcounts bench``: about a fifth of the core
job's time, a few ms per bundle). The answer depends only on the DoFn's class when the
class defines its methods, so it is kept per class, for this project's DoFns only (Beam's
own wrappers, such as ``beam.Map``'s, set ``process`` per instance and are not cached).

3. Pub/Sub messages over 4 MiB. The runner's Pub/Sub read evaluator builds a
``google.cloud.pubsub.SubscriberClient()`` for every pull; on the emulator that client's
channel keeps gRPC's 4 MiB receive limit, so a pull holding a bigger message (Pub/Sub
allows 10 MB) fails with ``RESOURCE_EXHAUSTED`` and stops the job. The patch makes that
name build clients on ``transforms.pubsub_io.subscriber_transport()`` (64 MiB).

Call ``apply()`` before running a pipeline on the local runner; it is idempotent.
"""
from __future__ import annotations

from apache_beam.runners.direct import transform_evaluator
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import userstate

_ORIGINAL = statesampler.StateSampler.scoped_state


def _scoped_state(self, name_context, state_name, io_target=None, metrics_container=None):
    state = _ORIGINAL(self, name_context, state_name, io_target, metrics_container)
    if metrics_container is None or state.metrics_container is metrics_container:
        return state
    for counter_name, cached in list(self._states_by_name.items()):
        if cached is state:
            fresh = statesampler.statesampler_impl.StateSampler._scoped_state(
                self, counter_name, state.name_context, state.counter, metrics_container)
            self._states_by_name[counter_name] = fresh
            return fresh
    return state


_ORIGINAL_SPECS = userstate.get_dofn_specs
_SPECS_BY_CLASS: dict[type, tuple] = {}
_OWN_PACKAGES = ("transforms.", "pipelines.", "viewcounts.")


def _dofn_specs(dofn):
    cls = type(dofn)
    if not cls.__module__.startswith(_OWN_PACKAGES):
        return _ORIGINAL_SPECS(dofn)
    specs = _SPECS_BY_CLASS.get(cls)
    if specs is None:
        specs = _SPECS_BY_CLASS[cls] = _ORIGINAL_SPECS(dofn)
    return specs


def _large_message_subscriber() -> type:
    """``google.cloud.pubsub.SubscriberClient`` with ``subscriber_transport()`` by default."""
    from google.cloud import pubsub

    from transforms.pubsub_io import subscriber_transport

    class SubscriberClient(pubsub.SubscriberClient):
        def __init__(self, subscriber_options=(), **kwargs):
            kwargs.setdefault("transport", subscriber_transport())
            super().__init__(subscriber_options, **kwargs)

    return SubscriberClient


def apply() -> None:
    from google.cloud import pubsub

    if pubsub.SubscriberClient.__module__ != __name__:
        pubsub.SubscriberClient = _large_message_subscriber()  # the name the runner's reader calls
    statesampler.StateSampler.scoped_state = _scoped_state
    userstate.get_dofn_specs = _dofn_specs  # is_stateful_dofn and the DoFn runner call it through the module
    transform_evaluator.get_dofn_specs = _dofn_specs
