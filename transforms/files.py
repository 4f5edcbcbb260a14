"""JSONL files for the raw archive and for dead letters (layout: schemas/archive.py).

``WriteJsonlByHour``: ``PCollection[(hour_start_s, [line: bytes, ...])]`` -> files, one per
(hour folder, flush window, pane, shard). Elements are windowed by *their own timestamps*
(the source's: never behind the watermark, ``transforms.validate``) into
``FixedWindows(flush_s)`` with the default watermark trigger, so a file closes about every
``flush_s`` and no processing-time trigger is involved; the hour folder comes from the
data (the event-time hour for the archive), so an event arriving days late still lands
in its own hour's folder as one more file. Names carry the flush window, the pane index,
the shard and a unique part: no firing ever overwrites another one's file (Beam's
``fileio.WriteToFiles`` leaves the pane out of its default names; DESIGN.md).
``flush_s=None`` (batch): one pane per folder and shard.

Output: the paths written.
"""
from __future__ import annotations

import os
import random
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window

from schemas.archive import file_name, hour_folder

# Input elements are on time by construction; this only keeps a straggler from being dropped.
FLUSH_WINDOW_LATENESS_S = 3600


class _WriteFile(beam.DoFn):
    def __init__(self, root: str, prefix: str) -> None:
        self._root, self._prefix = root, prefix

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        (hour_s, shard), batches = element
        folder = hour_folder(self._root, hour_s)
        window_s = int(win.start.micros // 1_000_000) if isinstance(win, window.IntervalWindow) else hour_s
        path = FileSystems.join(folder, file_name(self._prefix, window_s, pane.index, shard, uuid.uuid4().hex[:12]))
        if "://" not in folder:
            os.makedirs(folder, exist_ok=True)
        with FileSystems.create(path) as f:
            for lines in batches:
                for line in lines:
                    f.write(line)
                    f.write(b"\n")
        yield path


class WriteJsonlByHour(beam.PTransform):
    def __init__(self, root: str, prefix: str, flush_s: int | None, shards: int = 1) -> None:
        super().__init__()
        if flush_s is not None and flush_s < 1:
            raise ValueError("flush_s must be >= 1")
        self._root, self._prefix, self._flush_s, self._shards = root, prefix, flush_s, shards

    def expand(self, lines):
        shards = self._shards
        if self._flush_s is not None:
            lines = lines | "flush windows" >> beam.WindowInto(window.FixedWindows(self._flush_s),
                                                               allowed_lateness=FLUSH_WINDOW_LATENESS_S)
        return (lines
                | "shard" >> beam.Map(lambda kv: ((kv[0], random.randrange(shards)), kv[1]))
                | "group" >> beam.GroupByKey()
                | "write" >> beam.ParDo(_WriteFile(self._root, self._prefix)))
