"""Dedup state per live event id, measured: ``measure(workload) -> dict``.

Drives the product's own ``DedupAndJudgeLateness.process`` over a workload's messages with
in-memory state cells standing in for the runner's (a list for the bag, as the local runner
keeps it), under ``tracemalloc``: the ids are parsed inside the traced span, the events
and outputs are dropped afterwards, and what stays allocated is the dedup state of the
process: the per-process id cache plus the bag's encoded entries. The watermark never
moves, so no id expires: every accepted id is live.

Returns ``dedup_bytes_per_id`` (all of it), ``dedup_state_bytes_per_id`` (the bag's
encoded bytes alone: what a runner's state backend or checkpoint holds) and
``dedup_live_ids``.
"""

from __future__ import annotations

import gc
import tracemalloc

from apache_beam.utils.timestamp import Timestamp

from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
from schemas.event import parse_payload
from transforms import dedup
from transforms.validate import shard_of


class _Cell:
    """A ReadModifyWrite state cell or a timer."""

    def __init__(self) -> None:
        self.value = None

    def read(self):
        return self.value

    def write(self, value) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None

    def set(self, *args, **kwargs) -> None:
        pass


class _Bag:
    def __init__(self) -> None:
        self.items: list = []

    def add(self, value) -> None:
        self.items.append(value)

    def read(self):
        return iter(self.items)

    def clear(self) -> None:
        self.items = []


def measure(messages_path, shards: int = 16) -> dict:
    fn = dedup.DedupAndJudgeLateness(allowed_lateness_s=DEFAULT_ALLOWED_LATENESS_S, stamped_watermark=False)
    fn.setup()
    state = {s: (_Bag(), _Cell(), _Cell(), _Cell(), _Cell()) for s in range(shards)}
    with open(messages_path, "rb") as f:
        payloads = f.read().splitlines()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    live = 0
    for payload in payloads:
        events, _, _ = parse_payload(payload)
        by_shard: dict[int, list] = {}
        for ev in events:
            by_shard.setdefault(shard_of(ev.event_id, shards), []).append(ev)
        for s, chunk in by_shard.items():
            bag, version, view, base, searches = state[s]
            stamp = Timestamp(micros=min(ev.time_us for ev in chunk))  # the watermark guess the element carries
            for out in fn.process(
                ((0, s), (0, chunk)),
                timestamp=stamp,
                ids=bag,
                version=version,
                view=view,
                base=base,
                searches=searches,
                expiry=_Cell(),
                rung=_Cell(),
            ):
                live += len(out.value[1])
        del events, by_shard, chunk
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    encoded = sum(len(blob) for bag, *_ in state.values() for _minute, blob in bag.items)
    return {
        "dedup_bytes_per_id": (after - before) / live,
        "dedup_state_bytes_per_id": encoded / live,
        "dedup_live_ids": live,
    }
