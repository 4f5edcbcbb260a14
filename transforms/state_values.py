"""Values kept in Beam state, and the per-process caches built from them.

``cached_view``/``bump_version``: a stateful DoFn keeps a decoded view of a key's state in
process memory, tagged with the state version it was built from; a key that moved between
workers, or a restored job, finds a different version and the view is rebuilt from state,
so it is never trusted stale (``transforms.dedup``, ``transforms.aggregate``).
"""
from __future__ import annotations

from typing import Callable, TypeVar

import orjson

V = TypeVar("V")


def dumps_exact(obj) -> bytes:
    """``orjson.dumps(obj)`` copied to its exact size: orjson's result keeps its whole output
    buffer (about 6x a small array's JSON, measured by ``viewcounts.bench.dedup_memory``),
    which matters for values held in memory by the thousand."""
    return bytes(memoryview(orjson.dumps(obj)))


def cached_view(cache: dict, cache_key, version_state, build: Callable[[int], V]) -> V:
    """The view in ``cache[cache_key]`` if built at the state's version, else ``build(version)``
    (stored). Views carry a ``version`` attribute."""
    version = version_state.read() or 0
    view = cache.get(cache_key)
    if view is None or view.version != version:
        view = cache[cache_key] = build(version)
    return view


def bump_version(view, version_state) -> None:
    """After a write to the key's state: the view and the state move to the next version."""
    view.version += 1
    version_state.write(view.version)
