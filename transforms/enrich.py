"""Enrichment of aggregates with entity metadata (docs/contract.md, "Aggregates"), two ways, both
``PCollection[list[AggregateRow]] -> PCollection[list[EnrichedRow]]`` (one list per firing):

* ``EnrichFromSnapshots(snapshots, triggered)``: through a side input of snapshots (read
  once, refreshed by ``PeriodicImpulse``, or fed by a ``TestStream`` in the scenario tests).
* ``EnrichFromFile(path, refresh_s)``: each worker reads the metadata file itself and
  re-reads it every ``refresh_s`` seconds of processing time (the "slowly changing lookup
  cache in a DoFn" pattern), for jobs where a side input cannot be used (the pipeline
  builder chooses; related: apache/beam#31438).

A metadata *snapshot* is ``(version, {video_id: (title, channel)})``; a newer version
replaces the previous snapshot whole. ``LatestSnapshot`` gives the newest snapshot of a
PCollection of snapshots (loaded once at start, refreshed periodically, or fed by a test)
in the global window; used as ``AsList`` side input, ``Enrich`` takes the highest version
it sees (a global-window side input may hold only the latest pane or every pane so far;
this works with both) and stamps each ``AggregateRow`` with the
title and channel of that snapshot when the pane passes (nulls for unknown entities,
which are still written).
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.transforms import trigger, window

from transforms.aggregate import AggregateRow

_LOG = logging.getLogger(__name__)


class EnrichedRow(NamedTuple):
    row: AggregateRow
    title: str | None
    channel: str | None


def read_snapshot_file(path: str) -> dict[str, tuple[str | None, str | None]]:
    """Read a JSONL metadata file: one ``{"video_id", "title", "channel"}`` per line.

    Uses Beam's ``FileSystems``, so ``gs://`` paths work. Raises ``OSError`` or
    ``ValueError`` for an unreadable file or a bad line (not an object, no string
    ``video_id``, a ``title``/``channel`` that is neither a string nor null, or JSON that
    orjson refuses, such as a lone surrogate: so every stored cell encodes).
    """
    from apache_beam.io.filesystems import FileSystems

    out = {}
    with FileSystems.open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                d = orjson.loads(line)
                if not isinstance(d, dict) or not isinstance(d.get("video_id"), str):
                    raise ValueError(f"{path}:{n}: expected an object with a string video_id")
                title, channel = d.get("title"), d.get("channel")
                if not all(v is None or isinstance(v, str) for v in (title, channel)):
                    raise ValueError(f"{path}:{n}: title and channel must be strings or null")
                out[d["video_id"]] = (title, channel)
    return out


class _Newest(beam.CombineFn):
    def create_accumulator(self):
        return (-1, {})

    def add_input(self, acc, snapshot):
        return snapshot if snapshot[0] > acc[0] else acc

    def merge_accumulators(self, accs):
        return max(accs, key=lambda a: a[0])

    def extract_output(self, acc):
        return acc


class LatestSnapshot(beam.PTransform):
    """``PCollection[(version, dict)]`` -> the newest ``(version, dict)`` in the global
    window; pass it to ``Enrich`` as ``beam.pvalue.AsList``.

    ``triggered=True`` re-fires the newest snapshot on every new one, Beam's slowly-updating
    side input pattern (needed when snapshots keep coming: ``PeriodicImpulse``, a test
    stream). ``triggered=False`` fires once, when its bounded input ends, for where triggered
    global-window side inputs are refused on unbounded pipelines (apache/beam#31438).
    """

    def __init__(self, triggered: bool) -> None:
        super().__init__()
        self._triggered = triggered

    def expand(self, snapshots):
        if self._triggered:
            snapshots = snapshots | beam.WindowInto(
                window.GlobalWindows(),
                trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            )
        return snapshots | beam.CombineGlobally(_Newest()).without_defaults()


class EnrichFromSnapshots(beam.PTransform):
    """Enrich through the newest of ``snapshots`` (``PCollection[(version, dict)]``) as a side input."""

    def __init__(self, snapshots, triggered: bool) -> None:
        super().__init__()
        self._snapshots, self._triggered = snapshots, triggered

    def expand(self, rows):
        latest = self._snapshots | "latest metadata" >> LatestSnapshot(self._triggered)
        return rows | "stamp" >> beam.ParDo(Enrich(), beam.pvalue.AsList(latest))


class EnrichFromFile(beam.PTransform):
    """Enrich from the metadata file at ``path`` (``read_snapshot_file``; ``None``: no
    metadata, nulls), re-read every ``refresh_s`` seconds (``None``: read once per worker).
    A failed read never fails the worker (a restarted one would fail again: a restart
    loop): it is logged, a failed re-read keeps the previous snapshot, and a failed first read
    starts with an empty one (unknown entities: null title and channel),
    tried again at the next refresh (every ``RETRY_S`` seconds when not refreshing)."""

    def __init__(self, path: str | None, refresh_s: float | None) -> None:
        super().__init__()
        self._fn = _EnrichFromFileFn(path, refresh_s)

    def expand(self, rows):
        return rows | "stamp" >> beam.ParDo(self._fn)


class _EnrichFromFileFn(beam.DoFn):
    RETRY_S = 60  # seconds between tries of a failed first read without ``refresh_s``

    def __init__(self, path: str | None, refresh_s: float | None) -> None:
        self._path, self._refresh_s = path, refresh_s

    def setup(self) -> None:
        self._entries, self._read = {}, False
        self._read_at = time.monotonic()
        if self._path:
            self._reread()

    def _reread(self) -> None:
        self._read_at = time.monotonic()
        try:
            self._entries, self._read = read_snapshot_file(self._path), True
        except Exception as e:  # noqa: BLE001 -- any failure (bad line, missing file, storage error)
            _LOG.warning(
                "metadata read of %s failed, keeping the %s snapshot: %s",
                self._path,
                "previous" if self._read else "empty",
                e,
            )

    def process(self, rows: list[AggregateRow]):
        interval = self._refresh_s or (None if self._read else self.RETRY_S)
        if self._path and interval and time.monotonic() - self._read_at >= interval:
            self._reread()
        yield _stamped(rows, self._entries)


class Enrich(beam.DoFn):
    """``list[AggregateRow]`` -> ``list[EnrichedRow]``; side input: the ``LatestSnapshot`` output as a list."""

    def start_bundle(self) -> None:
        self._seen: tuple | None = None
        self._entries: dict = {}

    def process(self, rows: list[AggregateRow], snapshots: list):
        # the list object may be new at a reused address with the same length (the side input
        # may keep only the latest pane), so the newest entry's version is part of the marker
        marker = (id(snapshots), len(snapshots), snapshots[-1][0] if snapshots else None)
        if marker != self._seen:
            self._seen = marker
            self._entries = max(snapshots, key=lambda s: s[0])[1] if snapshots else {}
        yield _stamped(rows, self._entries)


def _stamped(rows: list[AggregateRow], entries: dict) -> list[EnrichedRow]:
    """Each row with its entity's title and channel from a snapshot's entries (nulls if unknown)."""
    unknown = (None, None)
    return [EnrichedRow(row, *entries.get(row.video_id, unknown)) for row in rows]
