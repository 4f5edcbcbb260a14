"""Per-minute and per-hour aggregates over event-time windows (SPEC.md section 3).

``PreAggregate``: accepted events of one chunk (one event-time minute) -> partial
aggregates ``((video_id, event_type), Aggregate)`` timestamped at the minute start, so
Beam's windows see one element per key per chunk instead of one per event.

``WindowedAggregates``: partials -> ``AggregateRow`` per window and pane, for each
granularity, in ``FixedWindows`` (UTC-aligned, half-open) with an accumulating trigger:
early panes every ``early_firing_s`` of processing time, the on-time pane at the
watermark, late panes for late data. Every pane carries the *absolute* running
aggregate, which the sink writes as an overwrite.

Beam's own allowed lateness is per window; the product decides lateness per event
before windowing (``DedupAndJudgeLateness``), so windows keep state for
``allowed_lateness + window + WINDOW_LATENESS_MARGIN_S`` and never drop an event the
product accepted (DESIGN.md "The product decides lateness per event").
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.transforms import trigger, window

from schemas.storage import EMPTY, GRANULARITY_SECONDS, Aggregate, PaneClock, merge

WINDOW_LATENESS_MARGIN_S = 60


class AggregateRow(NamedTuple):
    """One pane of one window: what the sink writes as one cell.

    ``cell_timestamp_us``: whole milliseconds, later panes larger (``PaneClock``).
    """

    video_id: str
    event_type: str
    granularity: str
    window_start_s: int
    aggregate: Aggregate
    pane_index: int
    cell_timestamp_us: int


def aggregate_events(events) -> dict[tuple[str, str], Aggregate]:
    """Fold events into one ``Aggregate`` per ``(video_id, event_type)``."""
    out: dict[tuple[str, str], list] = {}
    for ev in events:
        key = (ev.video_id, ev.event_type)
        acc = out.get(key)
        if acc is None:
            acc = out[key] = [0, 0, 0.0, None, None]
        acc[0] += 1
        v = ev.value
        if v is not None:
            acc[1] += 1
            acc[2] += v
            if acc[3] is None or v < acc[3]:
                acc[3] = v
            if acc[4] is None or v > acc[4]:
                acc[4] = v
    return {k: Aggregate(*v) for k, v in out.items()}


class PreAggregate(beam.DoFn):
    def process(self, chunk, timestamp=beam.DoFn.TimestampParam):
        for key, agg in aggregate_events(chunk).items():
            yield beam.window.TimestampedValue((key, agg), timestamp)


class AggregateFn(beam.CombineFn):
    """Combines ``Aggregate`` values; accumulators are immutable tuples, so no firing can
    reset or mutate what an earlier firing returned."""

    def create_accumulator(self) -> Aggregate:
        return EMPTY

    def add_input(self, acc: Aggregate, value: Aggregate) -> Aggregate:
        return merge(acc, value)

    def merge_accumulators(self, accs) -> Aggregate:
        out = EMPTY
        for a in accs:
            out = merge(out, a)
        return out

    def extract_output(self, acc: Aggregate) -> Aggregate:
        return acc


class _ToRow(beam.DoFn):
    def __init__(self, granularity: str) -> None:
        self._granularity = granularity

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        (video_id, event_type), agg = element
        if agg.count == 0:
            # A pane of no events: a window only exists because events came, so this is a
            # runner firing over an empty buffer (seen on Flink when the watermark passes a
            # window's end + allowed lateness). Written, it would overwrite the real totals.
            return
        yield AggregateRow(video_id, event_type, self._granularity, int(win.start.micros // 1_000_000),
                           agg, pane.index, PaneClock.now_us())


class WindowedAggregates(beam.PTransform):
    """``PCollection[((video_id, event_type), Aggregate)]`` -> ``PCollection[AggregateRow]``
    for minute and hour windows. ``early_firing_s=None``: no early or late panes (batch)."""

    def __init__(self, allowed_lateness_s: int, early_firing_s: int | None) -> None:
        super().__init__()
        self._lateness_s = allowed_lateness_s
        self._early_s = early_firing_s

    def expand(self, partials):
        rows = []
        for granularity, size_s in GRANULARITY_SECONDS.items():
            if self._early_s is None:
                windowed = partials | f"{granularity} windows" >> beam.WindowInto(window.FixedWindows(size_s))
            else:
                windowed = partials | f"{granularity} windows" >> beam.WindowInto(
                    window.FixedWindows(size_s),
                    trigger=trigger.AfterWatermark(
                        early=trigger.AfterProcessingTime(self._early_s),
                        late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=self._lateness_s + size_s + WINDOW_LATENESS_MARGIN_S)
            rows.append(windowed
                        | f"{granularity} combine" >> beam.CombinePerKey(AggregateFn())
                        | f"{granularity} rows" >> beam.ParDo(_ToRow(granularity))
                        | f"{granularity} rows to global window" >> beam.WindowInto(window.GlobalWindows()))
        return rows | beam.Flatten()
