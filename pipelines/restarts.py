"""Streaming jobs that start without the state of the job before them, and what to recompute.

A streaming job keeps each open window's partial aggregates and its dedup ids in state.
A job that starts without that state (the local runner: every start; Flink: a start with
``--fresh_start`` or with no retained checkpoint to resume, ``pipelines.runners``;
Dataflow: a new job rather than an update) fires panes that hold only its own events for
windows the job before it had already stored, and a later pane wins (docs/contract.md,
"Bigtable rows": readers take the newest cell):
those stored aggregates go below the truth. They are put right by a batch recompute of the
affected hours from the raw archive, once their windows have closed:

* ``RecordStatelessStart(archive_path, run_id, allowed_lateness_s)``: an ``Impulse`` in the
  streaming job. A runner emits an impulse once per job, and not again when the job is
  restored from a checkpoint or a savepoint (tested on Flink; a Dataflow update keeps its
  state likewise), so a marker (``schemas.restart_markers``) is written
  exactly when a job starts without state; the job also logs a warning that says what to
  run. A job's first start writes one too: with no older files it selects no hour.
* ``plan_recompute(archive_path, now_s)``: the hours whose folder holds files of a run that
  started without state *and* files of any other run, written before or after that start
  (the archive's file names carry the run, ``schemas.archive``; an old job still writing
  after the new one started -- start the new job, then drain the old -- counted part of
  the hour too; a superfluous recompute is harmless), split into ``closed`` ones
  (``schemas.closed_windows.closes_at_s``: the hour's end plus the job's allowed lateness
  plus ``CLOSE_MARGIN_S`` is past ``now_s``: no pane of them can change any more) and ``open`` ones (run the recompute
  again after their ``closes_at_s``). ``python -m pipelines.batch_recompute --after_restarts``
  recomputes the closed hours, and rebuilds the day top lists of their days from the archive
  of the whole day once those days are closed too (the new job's day stage started empty: its
  day lists summed only the hours it saw, and won); running it again is harmless (it
  overwrites with the same values), and is how the lists of days still open then get rebuilt.
  Cost: one listing of the archive's files (of the ``--start``/``--end`` hours when those
  are given).
* A job restored *with* state, but from a checkpoint or savepoint of a version whose state
  lacks a cell added later, finds that cell empty. ``transforms.aggregate.FirePanes`` tells
  such a key (its ``dropped_hour_day_counts`` cell is written whenever the key holds state,
  so an empty cell beside other state is an older version's), marks the day counts it emits
  of days begun by then incomplete, and names those days in markers with ``"lacks_state":
  LACKS_DAY_COUNTS, "days": [day start, ...]`` (``schemas.restart_markers``): their counts miss the hours
  the older job had dropped. ``plan_recompute`` turns them into ``days``;
  ``--after_restarts`` rebuilds their day lists once they close, reading their hours
  without rewriting them. A cell added by a later version follows the
  same pattern: written whenever the key has state, its absence is the marker.

``CLOSE_MARGIN_S`` assumes a job that keeps up (``schemas.closed_windows``): let a job
with a backlog catch up before recomputing, and recompute a replay of old data once the
replay's windows have closed in the job.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.archive import ARCHIVE_WINDOW_S, hour_folder, parse_file_path
from schemas.closed_windows import closes_at_s
from schemas.restart_markers import LACKS_DAY_COUNTS, read_markers, write_marker
from schemas.storage import TOP_GRANULARITY_SECONDS

_LOG = logging.getLogger(__name__)
_DAY_S = TOP_GRANULARITY_SECONDS["day"]


class _WriteMarker(beam.DoFn):
    def __init__(self, archive_path: str, run_id: str, allowed_lateness_s: int) -> None:
        self._archive_path, self._run_id, self._allowed_lateness_s = archive_path, run_id, allowed_lateness_s

    def process(self, _impulse) -> None:
        path = write_marker(self._archive_path, self._run_id, self._allowed_lateness_s, time.time_ns() // 1_000_000)
        _LOG.warning(
            "run %s started without the state of any job before it (%s): aggregates of windows "
            "that job stored and this one writes may stay low until recomputed; once they have "
            "closed, run: python -m pipelines.batch_recompute --archive_path %s --after_restarts "
            "(plus the Bigtable flags), and again once their UTC days have closed (day top lists)",
            self._run_id,
            path,
            self._archive_path,
        )


class RecordStatelessStart(beam.PTransform):
    """``PBegin -> None``: write a restart marker when the job starts without state (module docstring)."""

    def __init__(self, archive_path: str, run_id: str, allowed_lateness_s: int) -> None:
        super().__init__()
        self._fn = _WriteMarker(archive_path, run_id, allowed_lateness_s)

    def expand(self, pbegin):
        return pbegin | "impulse" >> beam.Impulse() | "write marker" >> beam.ParDo(self._fn)


@dataclass(frozen=True)
class RecomputePlan:
    """Hours (epoch seconds of their start, sorted) affected by starts without state, and
    ``lateness_s``: each one's allowed lateness (the largest of the runs' markers that select
    it; ``closes_at_s``); ``days``: ``{day start: allowed lateness}`` of the days whose day top
    lists a job restored without the day counts of dropped hours (``LACKS_DAY_COUNTS``) kept
    low: their lists are rebuilt once they close, their hours are not rewritten."""

    closed: list[int]
    open: list[int]
    lateness_s: dict[int, int] = field(default_factory=dict)
    days: dict[int, int] = field(default_factory=dict)


def _match(patterns: list[str]) -> list[str]:
    return [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]


def plan_recompute(archive_path: str, now_s: float, hours: range | None = None) -> RecomputePlan:
    """See the module docstring. Reads the markers and lists the archive (``gs://`` or local):
    every hour folder, or only those of ``hours`` (epoch seconds of hour starts)."""
    root = archive_path.rstrip("/")
    markers = read_markers(root)
    folders = [f"{root}/*/*/*/*"] if hours is None else [hour_folder(root, h) for h in hours]
    runs_of_hour: dict[int, set[str]] = defaultdict(set)
    hours_of_run: dict[str, set[int]] = defaultdict(set)
    for path in _match([f"{folder}/*.jsonl" for folder in folders]) if folders else []:
        name = parse_file_path(path)
        if name is not None:
            runs_of_hour[name.hour_s].add(name.run_id)
            hours_of_run[name.run_id].add(name.hour_s)
    lateness_by_hour: dict[int, int] = {}
    lateness_by_day: dict[int, int] = {}
    for marker in markers:
        run_id = marker["run_id"]
        if marker.get("lacks_state") == LACKS_DAY_COUNTS:
            for d in marker["days"]:
                if hours is None or any(d <= h < d + _DAY_S for h in hours):
                    lateness_by_day[d] = max(lateness_by_day.get(d, 0), marker["allowed_lateness_s"])
        for hour_s in hours_of_run.get(run_id, ()):
            if runs_of_hour[hour_s] - {run_id}:  # another run wrote there, whenever
                lateness_by_hour[hour_s] = max(lateness_by_hour.get(hour_s, 0), marker["allowed_lateness_s"])
    closed = sorted(
        h for h, lateness in lateness_by_hour.items() if closes_at_s(h, ARCHIVE_WINDOW_S, lateness) <= now_s
    )
    return RecomputePlan(
        closed, sorted(set(lateness_by_hour) - set(closed)), lateness_by_hour, dict(sorted(lateness_by_day.items()))
    )
