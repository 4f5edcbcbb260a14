"""The benchmark's storage stand-in: counts mutations and keeps each window's newest pane.

``CountingSink(token)``: a DoFn over ``list[AggregateRow]`` (one firing); every row is one
would-be mutation. Results live in this process (the local runner runs in-process) under
``token`` in ``RESULTS``: ``{"mutations": int, "panes": {(video, type, granularity,
window_start_s): (cell_timestamp_us, Aggregate)}}``. A module of its own, so the DoFn
pickles by reference (the local runner pickles every DoFn for every bundle).

``FileRows(folder)``: the same rows written to files, for Python workers in other processes
(``core_flink``).
"""

from __future__ import annotations

import os
import threading
import uuid

import apache_beam as beam
import orjson

RESULTS: dict[str, dict] = {}
_LOCK = threading.Lock()


def open_results(token: str) -> None:
    RESULTS[token] = {"mutations": 0, "panes": {}}


class CountingSink(beam.DoFn):
    def __init__(self, token: str) -> None:
        self._token = token

    def process(self, rows):
        with _LOCK:
            res = RESULTS[self._token]
            res["mutations"] += len(rows)
            panes = res["panes"]
            for row in rows:
                key = row[:4]  # (video_id, event_type, granularity, window_start_s)
                newest = panes.get(key)
                if newest is None or row[6] > newest[0]:  # cell_timestamp_us
                    panes[key] = (row[6], row[4])


class FileRows(beam.DoFn):
    """Appends each firing's rows to ``<folder>/rows-<uuid>.jsonl`` (one file per DoFn
    instance): ``[video_id, event_type, granularity, window_start_s, cell_timestamp_us,
    [count, value_count, sum, min, max]]`` per line."""

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def setup(self) -> None:
        self._file = open(os.path.join(self._folder, f"rows-{uuid.uuid4().hex}.jsonl"), "ab")

    def process(self, rows):
        self._file.write(b"".join(orjson.dumps([*row[:4], row[6], list(row[4])]) + b"\n" for row in rows))

    def finish_bundle(self) -> None:
        self._file.flush()

    def teardown(self) -> None:
        self._file.close()
