"""Work around lost metrics on Beam's BundleBasedDirectRunner (seen on apache-beam 2.73.0).

The runner makes a new ``MetricsContainer`` for every bundle and passes it to
``StateSampler.scoped_state``, but the sampler caches scoped states by step and state
name, so every bundle after a thread's first one increments the first bundle's container,
which was already committed: counters stop at the first bundle's value. This patch makes
the cached state follow the container it is given. It changes nothing on other runners
(they pass no container, or the same one). Call ``apply()`` before running a pipeline on
the local runner; it is idempotent.
"""
from __future__ import annotations

from apache_beam.runners.worker import statesampler

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


def apply() -> None:
    statesampler.StateSampler.scoped_state = _scoped_state
