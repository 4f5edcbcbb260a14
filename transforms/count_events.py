"""The counting core shared by the streaming job, the batch recompute and the scenario tests.

``CountEvents``: ``PCollection[(payload: bytes, arrival_us: int)]`` -> a dict of
* ``rows``: ``list[AggregateRow]``, the rows of one firing (at most one per (video, type,
  window) and pane), minute and hour;
* ``day_counts``: ``list[DayCount]``, the day counts of the (video, type)s of a firing's hour
  rows (``transforms.aggregate``);
* ``dead_letters``: ``DeadLetter`` for every refused input (before storage);
* ``archive``: ``(hour_s, [raw JSON bytes])``, the valid events of one message per event-time hour.

Stages (docs/decisions.md, "Counting"): validate -> dedup + lateness (stateful, keyed by shard and minute)
-> pre-aggregate per bundle -> minute and hour windows and their panes (``FirePanes``). Only the sources, the trigger
(``early_firing_s=None`` for batch) and the sinks differ between jobs.
"""

from __future__ import annotations

import typing

import apache_beam as beam

from transforms.aggregate import DAY_COUNTS, WindowedAggregates
from transforms.dedup import DedupAndJudgeLateness, probe_elements
from transforms.validate import ARCHIVE, DEAD_LETTER, AcceptancePolicy, ValidateEvents

ROWS = "rows"
DEAD_LETTERS = "dead_letters"
RAW_ARCHIVE = "archive"
_ChunkKey = tuple[int, int]


class CountEvents(beam.PTransform):
    """``stamped_watermark``: the input's timestamps are the watermark each message arrived
    at (``ReadFromPubSubPortable``, a scenario's ``TestStream``); else the dedup stage finds
    the watermark with timers (``transforms.dedup``)."""

    def __init__(self, policy: AcceptancePolicy, early_firing_s: int | None, stamped_watermark: bool = False) -> None:
        super().__init__()
        self._policy = policy
        self._early_s = early_firing_s
        self._stamped = stamped_watermark

    def expand(self, payloads):
        validated = payloads | "validate" >> beam.ParDo(ValidateEvents(self._policy)).with_outputs(
            DEAD_LETTER, ARCHIVE, main="chunks"
        )
        chunks = validated.chunks
        if not self._stamped:  # the watermark ladders start from one probe element per shard key
            probes = (
                payloads.pipeline
                | "start watermark probes" >> beam.Impulse()
                | "probe keys" >> beam.FlatMap(lambda _, n: probe_elements(n), self._policy.dedup_shards)
            )
            chunks = (chunks, probes) | "chunks and probes" >> beam.Flatten().with_output_types(
                tuple[_ChunkKey, typing.Any]
            )
        deduped = chunks | "dedup and lateness" >> beam.ParDo(
            DedupAndJudgeLateness(self._policy.allowed_lateness_s, self._stamped)
        ).with_outputs(DEAD_LETTER, main="accepted")
        windows = deduped.accepted | "windows" >> WindowedAggregates(
            self._policy.allowed_lateness_s, self._early_s, self._policy.dedup_shards
        )
        dead = (validated[DEAD_LETTER], deduped[DEAD_LETTER]) | "dead letters" >> beam.Flatten()
        return {
            ROWS: windows.rows,
            DAY_COUNTS: windows[DAY_COUNTS],
            DEAD_LETTERS: dead,
            RAW_ARCHIVE: validated[ARCHIVE],
        }
