"""Windowed JSONL files for the raw archive and for dead letters (layout: schemas/archive.py).

``WriteWindowedJsonl``: ``PCollection[bytes]`` (one JSON line each, element timestamps
decide the hour folder) -> files, one per (hour window, pane, shard). Panes fire every
``flush_s`` of processing time (and at the watermark), discarding what they wrote, so each
file holds what arrived since the previous pane; windows stay open for
``allowed_lateness_s`` so late input still lands in its own hour's folder instead of
being dropped. Beam's ``fileio.WriteToFiles`` leaves the pane out of its default names
(a second firing overwrites the first; DESIGN.md), which this naming avoids.
"""
from __future__ import annotations

import random
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import trigger, window

from schemas.archive import ARCHIVE_WINDOW_S, file_name, hour_folder


class _WriteFile(beam.DoFn):
    def __init__(self, root: str, prefix: str) -> None:
        self._root, self._prefix = root, prefix

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        shard, lines = element
        start_s = int(win.start.micros // 1_000_000)
        folder = hour_folder(self._root, start_s)
        path = FileSystems.join(folder, file_name(self._prefix, start_s, pane.index, shard, uuid.uuid4().hex[:12]))
        if not folder.startswith("gs://"):
            import os

            os.makedirs(folder, exist_ok=True)
        with FileSystems.create(path) as f:
            for line in lines:
                f.write(line)
                f.write(b"\n")
        yield path


class WriteWindowedJsonl(beam.PTransform):
    def __init__(self, root: str, prefix: str, allowed_lateness_s: int, flush_s: int | None,
                 shards: int = 1) -> None:
        super().__init__()
        self._root, self._prefix = root, prefix
        self._lateness_s, self._flush_s, self._shards = allowed_lateness_s, flush_s, shards

    def expand(self, lines):
        if self._flush_s is None:
            windowing = beam.WindowInto(window.FixedWindows(ARCHIVE_WINDOW_S))
        else:
            windowing = beam.WindowInto(
                window.FixedWindows(ARCHIVE_WINDOW_S),
                trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(self._flush_s),
                                               late=trigger.AfterProcessingTime(self._flush_s)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=self._lateness_s)
        shards = self._shards
        return (lines
                | "hour windows" >> windowing
                | "shard" >> beam.Map(lambda line: (random.randrange(shards), line))
                | "group" >> beam.GroupByKey()
                | "write" >> beam.ParDo(_WriteFile(self._root, self._prefix)))
