"""Restart markers: files beside the raw archive that name what a batch recompute must put
right after a streaming job lost state (docs/contract.md, "Restart markers").

``<archive root>/_restarts/<started>-<run id>.json`` (``marker_path``; ``<started>`` in UTC to
the millisecond, as archive file names' ``<written>``), one compact JSON object:

* ``{"run_id", "started_ms", "allowed_lateness_s"}``: a job run that started without the state
  of the job before it (``pipelines.restarts.RecordStatelessStart``);
* the same plus ``"lacks_state": LACKS_DAY_COUNTS, "days": [day start (epoch s), ...]``: a pane
  shard restored from state that lacks its day counts of dropped hours
  (``transforms.aggregate.FirePanes``; ``run_id`` is ``<shard>-<random run id>``), so the day
  counts of those UTC days miss hours.

``write_marker`` writes one, ``read_markers`` reads them all (local paths or ``gs://``; Beam's
file systems, imported when called);
``pipelines.restarts.plan_recompute`` turns them into hours and days to recompute.
"""

from __future__ import annotations

import datetime as dt
import os

import orjson

RESTARTS_FOLDER = "_restarts"
# A marker's "lacks_state": the state cell ``transforms.aggregate.FirePanes`` keeps the day
# counts of dropped hour windows in (its id), absent from the state the shard was restored from.
LACKS_DAY_COUNTS = "dropped_hour_day_counts"


def marker_path(root: str, started_ms: int, run_id: str) -> str:
    """The path of the marker of ``run_id`` started at ``started_ms`` (epoch ms) under the archive ``root``."""
    t = dt.datetime.fromtimestamp(started_ms // 1000, dt.timezone.utc)
    return f"{root.rstrip('/')}/{RESTARTS_FOLDER}/{t:%Y%m%dT%H%M%S}.{started_ms % 1000:03d}Z-{run_id}.json"


def write_marker(archive_path: str, run_id: str, allowed_lateness_s: int, started_ms: int, **fields) -> str:
    """Write a marker (JSON ``{"run_id", "started_ms", "allowed_lateness_s", **fields}``) under
    ``archive_path`` (local or ``gs://``); returns its path."""
    from apache_beam.io.filesystems import FileSystems

    path = marker_path(archive_path, started_ms, run_id)
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileSystems.create(path) as f:
        f.write(
            orjson.dumps(
                {"run_id": run_id, "started_ms": started_ms, "allowed_lateness_s": allowed_lateness_s, **fields}
            )
        )
    return path


def read_markers(archive_path: str) -> list[dict]:
    """Every marker under ``archive_path`` (local or ``gs://``), decoded, in path order (by start)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = f"{archive_path.rstrip('/')}/{RESTARTS_FOLDER}/*.json"
    paths = sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)
    markers = []
    for path in paths:
        with FileSystems.open(path) as f:
            markers.append(orjson.loads(f.read()))
    return markers
