"""Decode and validate payloads; judge processing-time rules; split by dedup shard.

Input elements: ``(payload: bytes, arrival_us: int)``: the message bytes and the
processing time (epoch microseconds) at which the pipeline received them. The arrival
time is data, not the wall clock read inside the DoFn, so the acceptance policy is the
same in a live job, a replay and a TestStream scenario.

Outputs of ``ValidateEvents``:
* main: ``((DEDUP_KEY, shard), (arrival_us, [Event, ...]))``: the valid events of one
  message that share a dedup shard (the key of ``DedupAndJudgeLateness``), with the
  message's arrival time.
* ``DEAD_LETTER``: ``DeadLetter``.
* ``ARCHIVE``: ``(event_hour_s, [raw JSON bytes, ...])``: the valid events of one message
  (they passed the field, future and age checks) per event-time hour, whatever dedup and
  lateness decide.

Every output keeps the input element's timestamp (the source's: the watermark at pull for
``ReadFromPubSubPortable``, the publish time for the native source; never behind the
watermark); event times travel as data.

No payload can make ``ValidateEvents`` raise, stall or retry (docs/contract.md, "Input events"): decoding
is ``schemas.event.parse_payload``, which never raises and bounds every cost by the
payload's size (its module docstring lists the bounds, and the ``too_large`` extension
code); every input ends as a chunk for dedup or a dead letter, with ``events_in`` counted
as docs/contract.md, "Metrics", says, and dead-letter details are short ASCII. ``tests/test_hostile.py``
drives arbitrary bytes and documents through it.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

import apache_beam as beam

from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S, DEFAULT_MAX_EVENT_AGE_S, DEFAULT_MAX_FUTURE_SKEW_S
from schemas.archive import DeadLetter, hour_of_us
from schemas.event import FUTURE_TIMESTAMP, TOO_OLD, US_PER_S, format_time_us, parse_payload
from transforms import metrics

DEAD_LETTER = "dead_letter"
ARCHIVE = "archive"


@dataclass(frozen=True)
class AcceptancePolicy:
    """The knobs of docs/contract.md, "Acceptance", in seconds. ``check_age=False`` turns off the
    ``future_timestamp`` and ``too_old`` checks (batch recompute, historical replays)."""

    allowed_lateness_s: int = DEFAULT_ALLOWED_LATENESS_S
    max_future_skew_s: int = DEFAULT_MAX_FUTURE_SKEW_S
    max_event_age_s: int = DEFAULT_MAX_EVENT_AGE_S
    check_age: bool = True
    dedup_shards: int = 16

    def __post_init__(self) -> None:
        for name in ("allowed_lateness_s", "max_future_skew_s", "max_event_age_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dedup_shards < 1:
            raise ValueError(f"dedup_shards must be >= 1, got {self.dedup_shards}")


DEDUP_KEY = 0  # first part of the keys of dedup shards (transforms/dedup.py has the others)


def shard_of(event_id: str, shards: int) -> int:
    """Stable across processes (unlike ``hash``): CRC-32 of the UTF-8 id."""
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % shards


class ValidateEvents(beam.DoFn):
    def __init__(self, policy: AcceptancePolicy) -> None:
        self._policy = policy

    def setup(self) -> None:
        self._events_in = metrics.counter(metrics.EVENTS_IN)
        self._dead = metrics.DeadLetterCounters()

    def process(self, element: tuple[bytes, int]):
        payload, arrival_us = element
        events, rejections, n_in = parse_payload(payload)
        self._events_in.inc(n_in)
        for r in rejections:
            yield self._dead_letter(r.payload, r.reason, r.detail, arrival_us)
        policy = self._policy
        future_limit = arrival_us + policy.max_future_skew_s * US_PER_S
        age_limit = arrival_us - policy.max_event_age_s * US_PER_S
        chunks: dict[int, list] = defaultdict(list)
        archive: dict[int, list] = defaultdict(list)
        for ev in events:
            if policy.check_age and ev.time_us > future_limit:
                yield self._dead_letter(
                    ev.raw,
                    FUTURE_TIMESTAMP,
                    f"event_time {format_time_us(ev.time_us)} is more than "
                    f"{policy.max_future_skew_s} s after processing time",
                    arrival_us,
                )
                continue
            if policy.check_age and ev.time_us < age_limit:
                yield self._dead_letter(
                    ev.raw,
                    TOO_OLD,
                    f"event_time {format_time_us(ev.time_us)} is more than "
                    f"{policy.max_event_age_s} s before processing time",
                    arrival_us,
                )
                continue
            archive[hour_of_us(ev.time_us)].append(ev.raw)
            chunks[shard_of(ev.event_id, policy.dedup_shards)].append(ev)
        for hour_s, lines in archive.items():
            yield beam.pvalue.TaggedOutput(ARCHIVE, (hour_s, lines))
        for shard, chunk in chunks.items():
            yield (DEDUP_KEY, shard), (arrival_us, chunk)

    def _dead_letter(self, payload: bytes, reason: str, detail: str, arrival_us: int):
        self._dead.inc(reason)
        return beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(payload, reason, detail, arrival_us))
