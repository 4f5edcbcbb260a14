"""JSONL files for the raw archive and for dead letters (layout: schemas/archive.py).

``WriteJsonlByHour(root, prefix, run_id)``: ``PCollection[(hour_start_s, [line: bytes, ...])]``
-> files; outputs nothing. Each bundle's lines are written to files of their hour folder
before the bundle ends (``finish_bundle``): one file per (bundle, hour) in the common case,
more when a bundle buffers over ``max_buffer_bytes`` (64 MiB by default), which is written
out early. There is no window and no ``GroupByKey``: a line is in a file before the bundle
that carried it is committed, so before the source acknowledges its message (where the
source acknowledges at checkpoints, the job finishes bundles at each checkpoint). A job killed at any point has every acknowledged message's lines in files;
lines of a bundle that failed or was not committed are written again when the message is
redelivered, into another file (readers deduplicate by ``event_id``).

How many files: one per bundle that carried lines of that hour (measured: README, Raw
archive).

Local folders are created as needed and each file is written under a ``.tmp`` name and
renamed, so a reader never sees half a file; object stores (``gs://``) publish an object
only when it is closed. A write that fails raises: the bundle is retried, its messages are
not acknowledged (the files are the durable record; nothing else holds these lines).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.archive import file_name, hour_folder

MAX_BUFFER_BYTES = 64 << 20


class _WriteBundleFiles(beam.DoFn):
    def __init__(self, root: str, prefix: str, run_id: str, max_buffer_bytes: int) -> None:
        self._root, self._prefix, self._run_id, self._max_buffer_bytes = root, prefix, run_id, max_buffer_bytes

    def start_bundle(self) -> None:
        self._lines: dict[int, list[bytes]] = defaultdict(list)
        self._bytes = 0

    def process(self, element: tuple[int, list[bytes]]) -> None:
        hour_s, lines = element
        self._lines[hour_s].extend(lines)
        self._bytes += sum(len(line) + 1 for line in lines)
        if self._bytes >= self._max_buffer_bytes:
            self._write_all()

    def finish_bundle(self) -> None:
        self._write_all()

    def _write_all(self) -> None:
        for hour_s, lines in self._lines.items():
            self._write(hour_folder(self._root, hour_s), lines)
        self._lines.clear()
        self._bytes = 0

    def _write(self, folder: str, lines: list[bytes]) -> None:
        name = file_name(self._prefix, time.time_ns() // 1_000_000, self._run_id, uuid.uuid4().hex[:12])
        path = FileSystems.join(folder, name)
        local = "://" not in folder
        if local:
            os.makedirs(folder, exist_ok=True)
        with FileSystems.create(path + ".tmp" if local else path) as f:
            for line in lines:
                f.write(line)
                f.write(b"\n")
        if local:
            os.replace(path + ".tmp", path)


class WriteJsonlByHour(beam.PTransform):
    """See the module docstring. ``run_id``: ``schemas.archive.new_run_id`` of the job run."""

    def __init__(self, root: str, prefix: str, run_id: str, max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        super().__init__()
        if max_buffer_bytes < 1:
            raise ValueError("max_buffer_bytes must be >= 1")
        self._fn = _WriteBundleFiles(root, prefix, run_id, max_buffer_bytes)

    def expand(self, lines):
        return lines | "write bundle files" >> beam.ParDo(self._fn)
