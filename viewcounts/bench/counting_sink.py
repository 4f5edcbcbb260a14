"""The benchmark's storage stand-in: counts mutations and keeps each window's newest pane.

``CountingSink(token)``: a DoFn over ``list[AggregateRow]`` (one firing); every row is one
would-be mutation. Results live in this process (the local runner runs in-process) under
``token`` in ``RESULTS``: ``{"mutations": int, "panes": {(video, type, granularity,
window_start_s): (cell_timestamp_us, Aggregate)}}``. A module of its own, so the DoFn
pickles by reference (the local runner pickles every DoFn for every bundle).
"""
from __future__ import annotations

import threading

import apache_beam as beam

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
