"""The batch-shaped counting path of the recompute (docs/decisions.md, "Recompute"): linear in the events read.

The streaming core (``transforms.count_events.CountEvents``) decides dedup and panes with
state and timers; in batch the watermark stands still until the input ends, so its dedup
stage kept every minute's id set of the whole range and intersected each chunk with all of
them (cost events x minutes). Here the same result (docs/contract.md, "Acceptance" and "Aggregates", with no
processing-time checks and a watermark that never refuses: every valid event counts once per
``event_id``) comes from Beam's own ``GroupByKey`` and ``CombinePerKey`` over batches:

1. ``ParseArchiveFile``: one archive file (``fileio.ReadableFile``) -> per dedup shard
   (``validate.shard_of``: CRC-32 of the id) one batch ``(shard, EventBatch bytes)`` of the
   file's valid events, each with its place in the archive (``ARCHIVE ORDER`` below); invalid lines become dead letters
   (``DEAD_LETTER``) as in ``ValidateEvents`` (same parser, ``schemas.event.parse_payload``), and
   so do events of a file laid out by ``schemas.archive`` whose event time is not its folder's
   hour (``schemas.archive.outside_its_hour``): a recompute writes no window outside the hours it reads.
2. ``GroupByKey`` on the shard, then ``DedupShard``: per ``event_id`` the copy FIRST IN
   ARCHIVE ORDER is kept: the smallest ``(written_ms, file_name, line)``, the file's
   ``<written>`` time (``schemas.archive.parse_file_path``; a file not named by that layout:
   its modification time), its base name, the 1-based line number (for a line holding a
   batch, its first item with the id); a re-stamped copy (another
   time, another hour folder) is the same event. The kept events are folded into minute
   partials per ``(video_id, event_type)``: output ``((video_id, event_type), {minute_s: (...)})``,
   one element per shard and entity.
3. ``CombinePerKey(MergeMinutePartials)``: the shards' partials of an entity merged (each
   event is in exactly one shard, so the merge is exact); ``ToEnrichedRows`` makes the minute
   rows, folds them into hour rows and enriches them (``transforms.enrich.Enrich``, metadata
   side input): ``list[EnrichedRow]`` per entity, pane 0, cell timestamps
   ``storage.cell_timestamp_us(wall clock ms when the row is made, count)``, so a recompute's
   cells win over the streaming panes of windows closed before it (schemas/storage.py).

Work per stage is O(events) (elements: files x shards, shards x entities, entities), the ids
held by ``DedupShard`` are those of its shard (about events / shards), whatever the range of
event time. ``EventBatch`` is the columnar shape another reader (the Parquet archive) can
produce with the same archive-order fields, so both feed ``DedupShard`` (``count_batches``).
"""

from __future__ import annotations

import posixpath
import time
from collections import defaultdict
from typing import NamedTuple

import apache_beam as beam
import orjson

from schemas.archive import DeadLetter, outside_its_hour, parse_file_path
from schemas.event import US_PER_S, Event, parse_payload
from schemas.storage import EMPTY, GRANULARITY_SECONDS, Aggregate, cell_timestamp_us, merge, wall_clock_ms
from transforms import metrics
from transforms.aggregate import AggregateRow, aggregate_events
from transforms.enrich import Enrich, LatestSnapshot
from transforms.validate import shard_of

DEAD_LETTER = "dead_letter"
ROWS = "rows"
IDS_PER_SHARD = "recompute_ids_per_shard"  # distribution: distinct ids one DedupShard call held
BATCH_EVENTS = 50_000  # events per EventBatch at most: bounds one element's size whatever the file's
_MINUTE_S = 60
_MINUTE_US = _MINUTE_S * US_PER_S
_HOUR_S = GRANULARITY_SECONDS["hour"]


class EventBatch(NamedTuple):
    """Valid events of one file (or part of one) that share a dedup shard, as columns: the
    file's ``written_ms`` and ``file_name`` and each event's ``line`` are its archive order.
    ``times_us``: event times in epoch µs; ``values``: float or None. Encoded with orjson
    (``encode``/``decode``): one bytes element per batch on the shuffle."""

    written_ms: int
    file_name: str
    lines: list
    event_ids: list
    video_ids: list
    event_types: list
    times_us: list
    values: list

    def encode(self) -> bytes:
        return orjson.dumps(list(self))

    @classmethod
    def decode(cls, blob: bytes) -> EventBatch:
        return cls(*orjson.loads(blob))


def file_written_ms(path: str, modified_s: float | None) -> int:
    """The ``written_ms`` of an archive file's archive order: from its name, else its modification time."""
    name = parse_file_path(path)
    if name is not None:
        return name.written_ms
    return int((modified_s or 0) * 1000)


class ParseArchiveFile(beam.DoFn):
    """``fileio.ReadableFile`` -> ``(shard, EventBatch bytes)`` (main) and ``DeadLetter``
    (``DEAD_LETTER``, processing time: now) for lines that are no valid event. Counts
    ``events_in`` (as ``ValidateEvents`` does, per line) and the dead-letter counters.
    ``dead_letters=False``: such lines are skipped, neither emitted nor counted (files read
    only for other windows' sake: ``CountArchive``'s ``context_files``)."""

    def __init__(self, shards: int, dead_letters: bool = True) -> None:
        self._shards = shards
        self._dead_letters = dead_letters

    def setup(self) -> None:
        self._events_in = metrics.counter(metrics.EVENTS_IN)
        self._dead = metrics.DeadLetterCounters()

    def process(self, readable_file):
        path = readable_file.metadata.path
        written_ms = file_written_ms(path, readable_file.metadata.last_updated_in_seconds)
        laid_out = parse_file_path(path)
        folder_hour_s = laid_out.hour_s if laid_out else None
        name = posixpath.basename(path)
        batches: dict[int, EventBatch] = {}
        shards = self._shards
        events_in = 0
        with readable_file.open() as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                events, rejections, n_in = parse_payload(line)
                events_in += n_in
                if folder_hour_s is not None:
                    kept = []
                    for ev in events:
                        misplaced = outside_its_hour(ev, folder_hour_s)
                        if misplaced is None:
                            kept.append(ev)
                        else:
                            rejections.append(misplaced)
                    events = kept
                for r in rejections if self._dead_letters else ():
                    self._dead.inc(r.reason)
                    yield beam.pvalue.TaggedOutput(
                        DEAD_LETTER, DeadLetter(r.payload, r.reason, r.detail, time.time_ns() // 1000)
                    )
                for ev in events:
                    shard = shard_of(ev.event_id, shards)
                    b = batches.get(shard)
                    if b is None:
                        b = batches[shard] = EventBatch(written_ms, name, [], [], [], [], [], [])
                    b.lines.append(line_no)
                    b.event_ids.append(ev.event_id)
                    b.video_ids.append(ev.video_id)
                    b.event_types.append(ev.event_type)
                    b.times_us.append(ev.time_us)
                    b.values.append(ev.value)
                    if len(b.lines) >= BATCH_EVENTS:
                        yield shard, b.encode()
                        del batches[shard]
        self._events_in.inc(events_in)
        for shard, b in batches.items():
            yield shard, b.encode()


class ParseParquetHour(beam.DoFn):
    """An hour (epoch seconds of its start) of the Parquet archive under ``root``
    (``schemas.parquet_archive.hour_columns``: one row per distinct id, with its archive-order
    fields) -> ``(shard, EventBatch bytes)``, one batch per shard and source file. Counts
    ``events_in`` (a row is an archived line). An hour not compacted yields nothing."""

    def __init__(self, root: str, shards: int) -> None:
        self._root, self._shards = root, shards

    def setup(self) -> None:
        self._events_in = metrics.counter(metrics.EVENTS_IN)

    def process(self, hour_s: int):
        from schemas.parquet_archive import hour_columns

        c = hour_columns(self._root, hour_s)
        if c is None:
            return
        self._events_in.inc(len(c["event_id"]))
        batches: dict[tuple, EventBatch] = {}
        for row in zip(
            c["written_ms"],
            c["source_file"],
            c["line"],
            c["event_id"],
            c["video_id"],
            c["event_type"],
            c["time_us"],
            c["value"],
        ):
            key = (shard_of(row[3], self._shards), row[0], row[1])
            b = batches.get(key)
            if b is None:
                b = batches[key] = EventBatch(row[0], row[1], [], [], [], [], [], [])
            for column, v in zip(b[2:], row[2:]):
                column.append(v)
        for (shard, _, _), b in batches.items():
            yield shard, b.encode()


def first_copies(batches) -> tuple[dict, int]:
    """``({event_id: ((written_ms, file_name, line), video_id, event_type, time_us, value)},
    copies read)``: per id the copy first in archive order, over ``EventBatch``es in any order."""
    best: dict = {}
    n = 0
    for b in batches:
        w, name = b.written_ms, b.file_name
        n += len(b.lines)
        for line, eid, video, etype, t, v in zip(
            b.lines, b.event_ids, b.video_ids, b.event_types, b.times_us, b.values
        ):
            order = (w, name, line)
            old = best.get(eid)
            if old is None or order < old[0]:
                best[eid] = (order, video, etype, t, v)
    return best, n


def fold_minutes(best: dict) -> dict:
    """``{(video_id, event_type): {minute_s: (count, value_count, sum, min, max)}}`` of the
    events of ``first_copies`` (``transforms.aggregate.aggregate_events`` per minute)."""
    by_minute: dict = defaultdict(list)
    for eid, (_, video, etype, t, v) in best.items():
        by_minute[t // _MINUTE_US * _MINUTE_S].append(Event(eid, video, etype, t, v, b""))
    out: dict = defaultdict(dict)
    for m, events in by_minute.items():
        for key, agg in aggregate_events(events).items():
            out[key][m] = tuple(agg)
    return out


def merge_into(into: dict, partial: dict) -> dict:
    """Merge ``{window_s: (count, value_count, sum, min, max)}`` ``partial`` into ``into``
    (mutated; ``storage.merge``)."""
    for w, other in partial.items():
        old = into.get(w)
        into[w] = other if old is None else tuple(merge(Aggregate(*old), Aggregate(*other)))
    return into


class DedupShard(beam.DoFn):
    """``(shard, [EventBatch bytes, ...])`` -> ``((video_id, event_type), {minute_s: (count,
    value_count, sum, min, max)})``; counts ``events_accepted`` and ``duplicates_dropped``.
    Holds the shard's ids (one dict entry per distinct id) while it runs: their number goes to
    the ``IDS_PER_SHARD`` distribution."""

    def setup(self) -> None:
        from apache_beam.metrics import Metrics

        self._accepted = metrics.counter(metrics.EVENTS_ACCEPTED)
        self._duplicates = metrics.counter(metrics.DUPLICATES_DROPPED)
        self._ids = Metrics.distribution(metrics.NAMESPACE, IDS_PER_SHARD)

    def process(self, element):
        _, blobs = element
        best, n = first_copies(EventBatch.decode(b) for b in blobs)
        self._accepted.inc(len(best))
        self._duplicates.inc(n - len(best))
        self._ids.update(len(best))
        yield from fold_minutes(best).items()


class MergeMinutePartials(beam.CombineFn):
    """Minute partials ``{minute_s: (count, value_count, sum, min, max)}`` -> one merged partial."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, partial):
        return merge_into(acc, partial)

    def merge_accumulators(self, accs):
        accs = iter(accs)
        out = next(accs)
        for a in accs:
            merge_into(out, a)
        return out

    def extract_output(self, acc):
        return acc


def rows_of(video_id: str, event_type: str, minutes: dict, base_ms: int) -> list[AggregateRow]:
    """The minute rows of ``{minute_s: (count, value_count, sum, min, max)}`` and the hour
    rows merged from them, pane 0, cell timestamps from ``base_ms`` (``cell_timestamp_us``)."""
    hours: dict = {}
    rows = []
    for m, acc in minutes.items():
        agg = Aggregate(*acc)
        rows.append(AggregateRow(video_id, event_type, "minute", m, agg, 0, cell_timestamp_us(base_ms, agg.count)))
        h = m - m % _HOUR_S
        hours[h] = merge(hours.get(h, EMPTY), agg)
    for h, agg in hours.items():
        rows.append(AggregateRow(video_id, event_type, "hour", h, agg, 0, cell_timestamp_us(base_ms, agg.count)))
    return rows


class ToEnrichedRows(beam.DoFn):
    """``((video_id, event_type), {minute_s: (...)})`` -> ``list[EnrichedRow]``: ``rows_of``
    (base: the wall clock when the rows are made) enriched by ``transforms.enrich.Enrich``
    from the side input of ``LatestSnapshot``s, in one step: the rows go to the sink in the
    same fused stage, never encoded between stages (pickling a row costs more than making it)."""

    def setup(self) -> None:
        self._enrich = Enrich()

    def start_bundle(self) -> None:
        self._enrich.start_bundle()

    def process(self, element, snapshots):
        (video_id, event_type), minutes = element
        yield from self._enrich.process(rows_of(video_id, event_type, minutes, wall_clock_ms()), snapshots)


class CountArchive(beam.PTransform):
    """``PCollection[fileio.ReadableFile]`` (archive files) -> ``{ROWS: list[EnrichedRow]
    per entity, DEAD_LETTER: DeadLetter}`` (module docstring). ``shards``: dedup shards; more
    shards hold fewer ids each (memory), at a few more elements. ``snapshots``: the metadata
    snapshots ``(version, {video_id: (title, channel)})`` (``transforms.enrich``).
    ``parquet_hours``: with ``parquet_root``, a ``PCollection`` of hours (epoch seconds) read
    from the Parquet archive there (``ParseParquetHour``) besides the files. ``context_files``:
    more archive files, deduplicated and counted with ``files``, whose invalid lines are no
    dead letters (the recompute's hours read for day lists only)."""

    def __init__(
        self, shards: int, snapshots, parquet_root: str | None = None, parquet_hours=None, context_files=None
    ) -> None:
        super().__init__()
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self._shards, self._snapshots = shards, snapshots
        self._parquet_root, self._parquet_hours = parquet_root, parquet_hours
        self._context_files = context_files

    def expand(self, files):
        parsed = files | "parse files" >> beam.ParDo(ParseArchiveFile(self._shards)).with_outputs(
            DEAD_LETTER, main="batches"
        )
        more = []
        if self._context_files is not None:
            more.append(
                self._context_files
                | "parse context files" >> beam.ParDo(ParseArchiveFile(self._shards, dead_letters=False))
            )
        if self._parquet_root:
            more.append(
                self._parquet_hours
                | "read Parquet hours" >> beam.ParDo(ParseParquetHour(self._parquet_root, self._shards))
            )
        batches = (parsed.batches, *more) | "all batches" >> beam.Flatten() if more else parsed.batches
        return {ROWS: count_batches(batches, self._snapshots), DEAD_LETTER: parsed[DEAD_LETTER]}


def count_batches(batches, snapshots):
    """``PCollection[(shard, EventBatch bytes)]`` -> ``PCollection[list[EnrichedRow]]``: dedup
    per shard, merge per entity, enriched rows. Any reader of the archive that yields
    ``EventBatch``es keyed by ``shard_of(event_id, shards)`` feeds it."""
    latest = snapshots | "latest metadata" >> LatestSnapshot(triggered=False)
    return (
        batches
        | "group by shard" >> beam.GroupByKey()
        | "dedup per shard" >> beam.ParDo(DedupShard())
        | "merge per entity" >> beam.CombinePerKey(MergeMinutePartials())
        | "rows" >> beam.ParDo(ToEnrichedRows(), beam.pvalue.AsList(latest))
    )
