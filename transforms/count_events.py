"""The counting core shared by the streaming job, the batch recompute and the scenario runner.

``CountEvents``: ``PCollection[(payload: bytes, arrival_us: int)]`` -> a dict of
* ``rows``: ``list[AggregateRow]``, the rows of one firing (at most one per (video, type,
  window) and pane), minute and hour;
* ``dead_letters``: ``DeadLetter`` for every refused input (before storage);
* ``archive``: raw JSON bytes of every valid event, timestamped with its event time.

Stages (DESIGN.md): validate -> dedup + lateness (stateful, keyed by shard and minute)
-> pre-aggregate per bundle -> minute and hour windows and their panes (``FirePanes``). Only the sources, the trigger
(``early_firing_s=None`` for batch) and the sinks differ between jobs.
"""
from __future__ import annotations

import typing

import apache_beam as beam

from transforms.aggregate import WindowedAggregates
from transforms.dedup import DedupAndJudgeLateness, probe_elements
from transforms.validate import ARCHIVE, DEAD_LETTER, AcceptancePolicy, ValidateEvents

ROWS = "rows"
DEAD_LETTERS = "dead_letters"
RAW_ARCHIVE = "archive"
_ChunkKey = typing.Tuple[int, int]


class CountEvents(beam.PTransform):
    def __init__(self, policy: AcceptancePolicy, early_firing_s: int | None) -> None:
        super().__init__()
        self._policy = policy
        self._early_s = early_firing_s

    def expand(self, payloads):
        validated = payloads | "validate" >> beam.ParDo(ValidateEvents(self._policy)).with_outputs(
            DEAD_LETTER, ARCHIVE, main="chunks")
        probes = (payloads.pipeline
                  | "start watermark probes" >> beam.Impulse()
                  | "probe keys" >> beam.FlatMap(lambda _, n: probe_elements(n), self._policy.dedup_shards))
        deduped = ((validated.chunks, probes)
                   | "chunks and probes" >> beam.Flatten().with_output_types(typing.Tuple[_ChunkKey, typing.Any])
                   | "dedup and lateness" >> beam.ParDo(
                       DedupAndJudgeLateness(self._policy.allowed_lateness_s)).with_outputs(DEAD_LETTER, main="accepted"))
        rows = deduped.accepted | "windows" >> WindowedAggregates(
            self._policy.allowed_lateness_s, self._early_s, self._policy.dedup_shards)
        dead = ((validated[DEAD_LETTER], deduped[DEAD_LETTER])
                | "dead letters" >> beam.Flatten())
        return {ROWS: rows, DEAD_LETTERS: dead, RAW_ARCHIVE: validated[ARCHIVE]}
