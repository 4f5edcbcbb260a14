"""The naive Beam peer: one element per event, Beam's own ``DeduplicatePerKey``,
``WindowInto`` and ``CombinePerKey``, as a first Beam version of this job would be written.

``NaiveCount()``: ``PCollection[(payload, arrival_us)]`` -> ``PCollection[list[AggregateRow]]``
(one row per window, the on-time pane), the same shape as ``CountEvents``'s rows, so the
benchmark's counting sink and cross-check take both. No validation beyond parsing, no dead
letters, no lateness rule: the peer is given the easy version of the job.
"""

from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam.transforms import window
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas.event import parse_event_time
from schemas.storage import EMPTY, GRANULARITY_SECONDS, Aggregate, cell_timestamp_us, merge, wall_clock_ms
from transforms.aggregate import AggregateRow

DEDUP_HORIZON_S = 600


def _events(element):
    payload, _arrival_us = element
    doc = orjson.loads(payload)
    for ev in doc if isinstance(doc, list) else (doc,):
        yield ev["event_id"], ev


def _timestamped(kv):
    _id, ev = kv
    value = ev.get("value")
    one = Aggregate(1, 0, 0.0, None, None) if value is None else Aggregate(1, 1, float(value), value, value)
    return window.TimestampedValue(
        ((ev["video_id"], ev["event_type"]), one), Timestamp(micros=parse_event_time(ev["event_time"]))
    )


class _MergeAggregates(beam.CombineFn):
    def create_accumulator(self):
        return EMPTY

    def add_input(self, acc, value):
        return merge(acc, value)

    def merge_accumulators(self, accs):
        out = EMPTY
        for a in accs:
            out = merge(out, a)
        return out

    def extract_output(self, acc):
        return acc


class _Row(beam.DoFn):
    def __init__(self, granularity: str) -> None:
        self._granularity = granularity

    def process(self, kv, win=beam.DoFn.WindowParam):
        (video_id, event_type), agg = kv
        yield [
            AggregateRow(
                video_id,
                event_type,
                self._granularity,
                int(win.start.micros // 1_000_000),
                agg,
                0,
                cell_timestamp_us(wall_clock_ms(), agg.count),
            )
        ]


class NaiveCount(beam.PTransform):
    def expand(self, payloads):
        deduped = (
            payloads
            | "one element per event" >> beam.FlatMap(_events)
            | "dedup" >> DeduplicatePerKey(event_time_duration=Duration(DEDUP_HORIZON_S))
            | "event time" >> beam.Map(_timestamped)
        )
        return [
            deduped
            | f"{g} windows" >> beam.WindowInto(window.FixedWindows(size_s))
            | f"{g} combine" >> beam.CombinePerKey(_MergeAggregates())
            | f"{g} rows" >> beam.ParDo(_Row(g))
            for g, size_s in GRANULARITY_SECONDS.items()
        ] | beam.Flatten()
