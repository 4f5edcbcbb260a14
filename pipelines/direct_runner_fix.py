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

3. Pub/Sub reads that stop the job. The runner's Pub/Sub read evaluator builds a
``google.cloud.pubsub.SubscriberClient()`` for every pull of at most 10 messages, and any
exception it raises fails the whole pipeline (the runner never retries). On the emulator
that client's channel keeps gRPC's 4 MiB receive limit, so a pull holding a bigger message
(Pub/Sub allows 10 MB) failed with ``RESOURCE_EXHAUSTED``; an unreachable or restarted
Pub/Sub failed it too. The patch makes that name build clients on
``transforms.pubsub_io.subscriber_transport()`` sized for 10 messages of 10 MB
(``LOCAL_MAX_RESPONSE_BYTES``) whose failed pulls (no client-side retry) are logged and
answered, ``FAILED_PULL_PAUSE_S`` later, as empty: the runner pulls again, and nothing is
lost (the evaluator acknowledges only what a pull returned).

Call ``apply()`` before running a pipeline on the local runner; it is idempotent.
"""

from __future__ import annotations

import logging
import time

from apache_beam.runners.direct import transform_evaluator
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import userstate

_LOG = logging.getLogger(__name__)
_ORIGINAL = statesampler.StateSampler.scoped_state
LOCAL_MAX_RESPONSE_BYTES = 128 * 1024 * 1024
FAILED_PULL_PAUSE_S = 1.0


def _scoped_state(self, name_context, state_name, io_target=None, metrics_container=None):
    state = _ORIGINAL(self, name_context, state_name, io_target, metrics_container)
    if metrics_container is None or state.metrics_container is metrics_container:
        return state
    for counter_name, cached in list(self._states_by_name.items()):
        if cached is state:
            fresh = statesampler.statesampler_impl.StateSampler._scoped_state(
                self, counter_name, state.name_context, state.counter, metrics_container
            )
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


def _local_subscriber() -> type:
    """``google.cloud.pubsub.SubscriberClient`` as fix 3 says."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.cloud import pubsub

    from transforms.pubsub_io import subscriber_transport

    class SubscriberClient(pubsub.SubscriberClient):
        def __init__(self, subscriber_options=(), **kwargs):
            kwargs.setdefault("transport", subscriber_transport(LOCAL_MAX_RESPONSE_BYTES))
            super().__init__(subscriber_options, **kwargs)

        def pull(self, *args, **kwargs):
            kwargs.setdefault("retry", None)
            try:
                return super().pull(*args, **kwargs)
            except GoogleAPICallError as e:
                _LOG.warning("Pub/Sub pull failed (pulling again in %.0f s): %s", FAILED_PULL_PAUSE_S, e)
                time.sleep(FAILED_PULL_PAUSE_S)
                return pubsub.types.PullResponse()

    return SubscriberClient


def apply() -> None:
    from google.cloud import pubsub

    if pubsub.SubscriberClient.__module__ != __name__:
        pubsub.SubscriberClient = _local_subscriber()  # the name the runner's reader calls
    statesampler.StateSampler.scoped_state = _scoped_state
    userstate.get_dofn_specs = _dofn_specs  # is_stateful_dofn and the DoFn runner call it through the module
    transform_evaluator.get_dofn_specs = _dofn_specs
