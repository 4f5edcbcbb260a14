"""Write enriched aggregates to Bigtable as idempotent overwrites (layout: schemas/storage.py).

Input: ``list[EnrichedRow]`` (the rows of one firing). Each pane becomes one ``SetCell`` with an explicit millisecond
timestamp (the pane's ``cell_timestamp_us``) in the row of its window's period. Cells for
the same row are grouped into one row mutation; one ``MutateRows`` request carries at most
``max_mutations_per_request`` cells (Bigtable's limit is 100,000). Rows a request could
not write are retried with backoff; after ``max_attempts`` they leave the sink as
``write_failed`` dead letters (the row as JSON, redrivable) instead of failing the bundle,
so one bad write never stalls the job (SPEC.md section 4).

Output: ``DeadLetter`` for rows that could not be written, timestamped with the
processing time of the failure.
"""
from __future__ import annotations

import logging
import time

import apache_beam as beam
import orjson
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from schemas import storage
from schemas.archive import DeadLetter
from schemas.event import WRITE_FAILED
from transforms import metrics
from transforms.enrich import EnrichedRow

_LOG = logging.getLogger(__name__)


def row_to_json(e: EnrichedRow) -> bytes:
    r = e.row
    a = r.aggregate
    return orjson.dumps({
        "video_id": r.video_id, "event_type": r.event_type, "granularity": r.granularity,
        "window_start_s": r.window_start_s, "pane_index": r.pane_index,
        "cell_timestamp_us": r.cell_timestamp_us, "count": a.count, "value_count": a.value_count,
        "sum": a.sum, "min": a.min, "max": a.max, "title": e.title, "channel": e.channel})


def row_from_json(payload: bytes) -> EnrichedRow:
    """The inverse of ``row_to_json``: a ``write_failed`` dead letter back into a row to write
    (with its original cell timestamp, so a redrive never overwrites a newer pane)."""
    from transforms.aggregate import AggregateRow

    d = orjson.loads(payload)
    agg = storage.Aggregate(d["count"], d["value_count"], d["sum"], d["min"], d["max"])
    return EnrichedRow(AggregateRow(d["video_id"], d["event_type"], d["granularity"], d["window_start_s"], agg,
                                    d["pane_index"], d["cell_timestamp_us"]), d["title"], d["channel"])


class WriteAggregates(beam.DoFn):
    def __init__(self, project: str, instance: str, table: str,
                 max_mutations_per_request: int = 10_000, max_attempts: int = 5) -> None:
        if not 1 <= max_mutations_per_request <= storage.MAX_MUTATIONS_PER_REQUEST:
            raise ValueError(f"max_mutations_per_request must be 1..{storage.MAX_MUTATIONS_PER_REQUEST}")
        self._project, self._instance, self._table = project, instance, table
        self._max_mutations = max_mutations_per_request
        self._max_attempts = max_attempts

    def setup(self) -> None:
        from google.cloud import bigtable

        self._client = bigtable.Client(project=self._project, admin=False)
        self._bt_table = self._client.instance(self._instance).table(self._table)
        self._written = metrics.counter(metrics.AGGREGATES_WRITTEN)
        self._failures = metrics.counter(metrics.WRITE_FAILURES)
        self._dead = metrics.DeadLetterCounters()

    def start_bundle(self) -> None:
        self._pending: dict[tuple[bytes, bytes], EnrichedRow] = {}

    def process(self, batch: list[EnrichedRow]):
        pending = self._pending
        for e in batch:
            r = e.row
            cell = (storage.row_key(r.video_id, r.event_type, r.granularity, r.window_start_s),
                    storage.qualifier(r.window_start_s))
            old = pending.get(cell)
            if old is None or old.row.cell_timestamp_us < r.cell_timestamp_us:
                pending[cell] = e
        if len(pending) >= self._max_mutations:
            for dead in self._flush():
                yield beam.window.TimestampedValue(dead, Timestamp(micros=dead.processing_time_us))

    def finish_bundle(self):
        for dead in self._flush():
            yield WindowedValue(dead, Timestamp(micros=dead.processing_time_us), [GlobalWindow()])

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    def _flush(self):
        """Write every pending cell, ``max_mutations_per_request`` cells per request."""
        pending, self._pending = list(self._pending.items()), {}
        for i in range(0, len(pending), self._max_mutations):
            for e in self._write(dict(pending[i:i + self._max_mutations])):
                self._failures.inc()
                self._dead.inc(WRITE_FAILED)
                yield DeadLetter(row_to_json(e), WRITE_FAILED,
                                 f"Bigtable write failed after {self._max_attempts} attempts", time.time_ns() // 1000)

    def _write(self, cells: dict[tuple[bytes, bytes], EnrichedRow]) -> list[EnrichedRow]:
        """Write cells; return the rows still failing after ``max_attempts``."""
        todo = cells
        for attempt in range(self._max_attempts):
            by_key: dict[bytes, list[tuple[bytes, EnrichedRow]]] = {}
            for (key, q), e in todo.items():
                by_key.setdefault(key, []).append((q, e))
            keys = list(by_key)
            rows = []
            for key in keys:
                row = self._bt_table.direct_row(key)
                for q, e in by_key[key]:
                    r = e.row
                    row.set_cell(storage.FAMILY, q, storage.encode_cell(r.aggregate, e.title, e.channel),
                                 timestamp=_datetime_of_us(r.cell_timestamp_us))
                rows.append(row)
            try:
                statuses = self._bt_table.mutate_rows(rows)
                bad = {keys[i] for i, s in enumerate(statuses) if s.code != 0}
            except Exception as exc:  # the whole request failed: retry every row
                _LOG.warning("Bigtable MutateRows failed (attempt %d): %s", attempt + 1, exc)
                bad = set(keys)
            self._written.inc(sum(1 for (k, _q) in todo if k not in bad))
            todo = {c: e for c, e in todo.items() if c[0] in bad}
            if not todo:
                return []
            time.sleep(min(0.1 * 2 ** attempt, 5.0))
        return list(todo.values())


def _datetime_of_us(us: int):
    import datetime as dt

    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)
