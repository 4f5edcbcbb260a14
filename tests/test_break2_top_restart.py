"""Day top lists after a streaming job restarted without state and the documented repair
(``pipelines.batch_recompute --after_restarts``, README "Restarts without state").

The new job's day stage (``transforms.top.DayCounts``) starts empty, so its day list sums only
the hours it saw itself, and its ``MergeTop`` base is the wall clock at the restart: that list
wins over the old job's. The repair recomputes the hours holding files of both runs (the hour
of the restart), and ``TopFromRows`` writes day lists only for days whose 24 hours are all
recomputed: the day's stored list stays the new job's partial one for good, naming the wrong
videos (here: a video with 50 views that morning is missing from the day's top list).

The streaming stages are driven directly (state in memory per key); the recompute's
``TopFromRows`` runs on Beam's DirectRunner; the stored cell of a window is the written list
with the highest cell timestamp (Bigtable's newest cell)."""
from __future__ import annotations

from collections import defaultdict

import apache_beam as beam
import pytest

from schemas.storage import Aggregate
from tests.test_parallel_state import Cell
from transforms import top
from transforms.aggregate import AggregateRow
from transforms.enrich import EnrichedRow

DAY_S = 1_764_633_600  # 2025-12-02T00:00:00Z
HOUR_S = 3600
LATENESS_S = 600


def _row(video_id: str, hour: int, count: int) -> AggregateRow:
    return AggregateRow(video_id, "view", "hour", DAY_S + hour * HOUR_S, Aggregate(count, 0, 0.0, None, None), 0, 0)


class StreamingJob:
    """``DayCounts`` -> ``ShardTop`` -> ``MergeTop`` of one job, each key's state in memory."""

    def __init__(self) -> None:
        self.day = top.DayCounts(LATENESS_S, shards=4)
        self.shard = top.ShardTop(LATENESS_S)
        self.merge = top.MergeTop(LATENESS_S)
        self.state: dict = defaultdict(Cell)

    def pane(self, rows) -> list:
        lists = []
        for day_key, hours in top.day_hours(rows):
            for shard_key, offers in self.day.process((day_key, hours), state=self.state[("d", day_key)], cleanup=Cell()):
                for window, changed in self.shard.process((shard_key, offers), state=self.state[("s", shard_key)],
                                                          cleanup=Cell()):
                    for out in self.merge.process((window, changed), state=self.state[("m", window)], cleanup=Cell()):
                        lists.extend(out)
        return lists


_COLLECTED: list = []  # the recompute's lists (the DirectRunner runs in this process)


def _collect(lists) -> None:
    _COLLECTED.extend(lists)


def _recompute_lists(rows, hours) -> list:
    _COLLECTED.clear()
    with beam.Pipeline(runner="DirectRunner") as p:
        _ = (p | beam.Create([[EnrichedRow(r, None, None) for r in rows]])
             | top.TopFromRows(hours)
             | beam.Map(_collect))
    return list(_COLLECTED)


def _stored(lists) -> dict:
    newest: dict = {}
    for t in lists:
        key = (t.event_type, t.granularity, t.window_start_s)
        if key not in newest or t.cell_timestamp_us >= newest[key].cell_timestamp_us:
            newest[key] = t
    return {k: t.items for k, t in newest.items()}


@pytest.mark.xfail(strict=True, reason="the repair after a stateless restart recomputes only the restart's hour and "
                                       "TopFromRows writes no day list for a partial day: the new job's day list, "
                                       "summing only the hours it saw, stays stored")
def test_after_a_stateless_restart_and_the_repair_the_day_list_is_the_reference(monkeypatch):
    written = []
    monkeypatch.setattr(top, "wall_clock_ms", lambda: (DAY_S + 10 * HOUR_S) * 1000)
    old = StreamingJob()  # saw the morning and the first half of 14:00
    written += old.pane([_row("A", 10, 50)])
    written += old.pane([_row("B", 14, 2)])
    monkeypatch.setattr(top, "wall_clock_ms", lambda: (DAY_S + 14 * HOUR_S + 1800) * 1000)
    new = StreamingJob()  # restarted at 14:30 without state: its panes hold only its own events
    written += new.pane([_row("B", 14, 3), _row("C", 14, 1)])
    # the repair: recompute of the hour holding files of both runs, from the archive
    written += _recompute_lists([_row("B", 14, 5), _row("C", 14, 1)], hours=[DAY_S + 14 * HOUR_S])
    stored = _stored(written)
    assert stored[("view", "hour", DAY_S + 14 * HOUR_S)] == (("B", 5), ("C", 1))
    assert stored[("view", "day", DAY_S)] == (("A", 50), ("B", 5), ("C", 1))
