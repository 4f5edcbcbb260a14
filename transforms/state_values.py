"""Values kept in Beam state, and the per-process caches built from them.

``cached_view``/``new_version``: a stateful DoFn keeps a decoded view of a key's state in
process memory, tagged with the state version it was built from. A version is a random
63-bit token drawn for each write (``new_version``), never a counter: two workers that
served a key in turn, or a job restored from a checkpoint that replays what a failed
attempt had already written, each draw their own token, so a cached view matches the
state's version only when it was built from (or written as) that very state. A key that
moved between workers, or a restored job, finds a different version and the view is
rebuilt from state, so it is never trusted stale (``transforms.dedup``,
``transforms.aggregate``). With a counter both could reach the same number with different
contents (``tests/test_parallel_state.py`` shows the case).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import orjson

V = TypeVar("V")
NO_STATE = 0  # the version of a key whose state was never written (its version cell is empty)


def dumps_exact(obj) -> bytes:
    """``orjson.dumps(obj)`` copied to its exact size: orjson's result keeps its whole output
    buffer (about 6x a small array's JSON, measured by ``viewcounts.bench.dedup_memory``),
    which matters for values held in memory by the thousand."""
    return bytes(memoryview(orjson.dumps(obj)))


def version_token() -> int:
    """A fresh version: 63 random bits from ``os.urandom`` (forked workers do not share it),
    never ``NO_STATE``; fits Beam's ``VarIntCoder``."""
    return int.from_bytes(os.urandom(8), "big") >> 1 or 1


def cached_view(cache: dict, cache_key, version_state, build: Callable[[int], V]) -> V:
    """The view in ``cache[cache_key]`` if built at the state's version, else ``build(version)``
    (stored). Views carry a ``version`` attribute; an unwritten state has ``NO_STATE``."""
    version = version_state.read() or NO_STATE
    view = cache.get(cache_key)
    if view is None or view.version != version:
        view = cache[cache_key] = build(version)
    return view


def new_version(view, version_state) -> None:
    """Call BEFORE changing a view and its key's state: the view and the state move to a fresh
    ``version_token``. Drawn first, so a handler that raises halfway leaves a view whose
    version no committed state carries (Beam discards the failed bundle's writes,
    the version among them): the retry rebuilds it from state instead of trusting a view
    that already holds the failed attempt's changes."""
    view.version = version_token()
    version_state.write(view.version)


def rewrite_bag(bag, entries) -> None:
    """Replace what a bag state holds with ``entries`` (values of its coder, already encoded):
    a bag cannot remove single entries, so a DoFn that drops part of its view (expired
    minutes, dropped windows) writes back the rest, re-adding the encoded values it kept."""
    bag.clear()
    for entry in entries:
        bag.add(entry)
