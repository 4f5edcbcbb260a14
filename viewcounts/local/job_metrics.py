"""The streaming job's metrics while it runs on Flink, read from Flink's REST API.

Portable Flink does not hand Beam's counters to ``PipelineResult.metrics()`` (the demo and
the bench saw zeros there); Beam's Flink runner does register every Beam metric of a stage
as a Flink metric of that stage's operator, updated after each bundle, so they are readable
from the job manager's REST API while the job runs
(https://nightlies.apache.org/flink/flink-docs-release-1.19/docs/ops/rest_api/).

``flink_job_metrics(rest_url, job_id, published_messages=None) -> dict`` is the one call::

    {"counters": {"events_in": 123, "events_accepted": 120, ...},   # namespace "viewcounts"
     "watermark_lag_s": 4.2 | None,
     "oldest_unacked_age_s": 1.3 | None,
     "backlog_messages": 17 | None,
     "vertices": [{"name": ..., "parallelism": 2, "input_watermark_ms": ... | None}, ...]}

* ``counters``: every Beam counter of namespace ``viewcounts`` (``transforms.metrics``:
  the counters of docs/contract.md, Metrics, ``dead_letters_<code>``, and the source's
  ``messages_pulled`` / ``messages_acked``), summed over subtasks and over the steps that
  report it. A counter no bundle has reported yet is absent (read it with ``.get(name, 0)``).
* ``watermark_lag_s``: wall clock minus the lowest input watermark over every subtask of
  every vertex the stream flows through (``GET /jobs/<id>/vertices/<v>/watermarks``: each
  subtask's ``currentInputWatermark``, epoch ms). Left out: subtasks whose input watermark
  is at the end of time, those of the finished branches (the impulses, the reader
  elements, the source's own vertex, whose input is such a branch, the metadata read).
  What remains is the dedup, windows and sink stages, however Beam fused them; watermarks
  only fall downstream, so the lowest is the stage that fires the windows and writes them:
  the lag is how far the event time the job has completed trails the wall clock. ``None``
  while any subtask of those vertices has no watermark yet (Long.MIN_VALUE: on this
  source, until every reader has pulled a message, ``transforms.pubsub_io``) or while
  there is no such vertex. Each vertex's ``input_watermark_ms`` is the lowest of its
  subtasks not at the end of time (``None`` without one, or while it is Long.MIN_VALUE).
* ``oldest_unacked_age_s``: the largest ``oldest_unacked_age_ms`` gauge over the source's
  subtasks, in seconds (``None`` until the source reports it).
* ``backlog_messages``: ``published_messages`` (what the caller published to the
  subscription, counted in Pub/Sub messages) minus ``messages_pulled``; ``None`` without
  ``published_messages``. An estimate: redelivered messages are pulled and counted again
  (it reads low), and Flink keeps metrics per execution attempt, so after a job restart
  every counter starts again from 0 (it reads high until the backlog is pulled again).

Counters count since the job's last restart (Flink's ``numRestarts`` of ``/jobs/<id>``).

Raises ``urllib.error.URLError`` / ``OSError`` when the REST API does not answer and
``urllib.error.HTTPError`` for an unknown job id.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

NAMESPACE = "viewcounts"  # transforms.metrics.NAMESPACE (not imported: no Beam import needed here)
OLDEST_UNACKED_AGE_MS = "oldest_unacked_age_ms"
# Beam's Flink runner (FlinkMetricContainerBase) registers a Beam metric on the operator of
# its stage as "<namespace>_<name>"; the REST API lists it as "<operator name>.<that>".
_BEAM_METRIC = re.compile(rf"(?:^|\.){NAMESPACE}_(\w+)$")
# an input watermark below 2000-01-01 is "none yet" (Long.MIN_VALUE), one more than a day
# ahead of the wall clock "end of time" (Long.MAX_VALUE, or Beam's end of the global window)
_EARLIEST_MS = 946_684_800_000
_DAY_MS = 86_400_000
_GET_BATCH = 40  # metric names per REST request (the names are long; URLs stay short)


def _get(rest_url: str, path: str, timeout_s: float):
    base = rest_url if rest_url.startswith("http") else f"http://{rest_url}"
    with urllib.request.urlopen(f"{base.rstrip('/')}{path}", timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


def _subtask_metrics(
    rest_url: str, job_id: str, vertex_id: str, names: list[str], agg: str, timeout_s: float
) -> dict[str, float]:
    """``{name: aggregate over the vertex's subtasks}`` (``agg``: sum, min or max)."""
    out: dict[str, float] = {}
    path = f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics"
    for i in range(0, len(names), _GET_BATCH):
        query = urllib.parse.urlencode({"get": ",".join(names[i : i + _GET_BATCH]), "agg": agg})
        for m in _get(rest_url, f"{path}?{query}", timeout_s) or []:
            if agg in m:
                out[m["id"]] = float(m[agg])
    return out


def _input_watermarks_ms(rest_url: str, job_id: str, vertex_id: str, timeout_s: float) -> list[int]:
    """Each subtask's input watermark of a vertex, epoch ms (Long.MIN_VALUE / MAX_VALUE as is)."""
    return [
        int(w["value"])
        for w in _get(rest_url, f"/jobs/{job_id}/vertices/{vertex_id}/watermarks", timeout_s)
        if w["id"].endswith(".currentInputWatermark")
    ]


def flink_job_metrics(
    rest_url: str, job_id: str, published_messages: int | None = None, timeout_s: float = 10.0
) -> dict:
    """The job's counters, watermark lag, oldest unacked message age and source backlog
    (see the module docstring). ``rest_url``: the job manager's REST address
    (``host:port`` as in ``--flink_master``, or ``http://host:port``)."""
    now_ms = time.time() * 1000
    counters: dict[str, int] = {}
    oldest_ms: float | None = None
    vertices, stream_ms = [], []  # stream_ms: the input watermarks of the vertices the stream flows through
    for v in _get(rest_url, f"/jobs/{job_id}", timeout_s)["vertices"]:
        listed = [m["id"] for m in _get(rest_url, f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics", timeout_s)]
        beam = [n for n in listed if _BEAM_METRIC.search(n)]
        gauges = [n for n in beam if _BEAM_METRIC.search(n).group(1) == OLDEST_UNACKED_AGE_MS]
        sums = _subtask_metrics(rest_url, job_id, v["id"], [n for n in beam if n not in gauges], "sum", timeout_s)
        for name, value in sums.items():
            short = _BEAM_METRIC.search(name).group(1)
            counters[short] = counters.get(short, 0) + int(value)
        for value in _subtask_metrics(rest_url, job_id, v["id"], gauges, "max", timeout_s).values():
            oldest_ms = value if oldest_ms is None else max(oldest_ms, value)
        marks = _input_watermarks_ms(rest_url, job_id, v["id"], timeout_s)
        live = [w for w in marks if w <= now_ms + _DAY_MS]  # not at the end of time
        stream_ms += live
        low = min(live, default=None)
        vertices.append(
            {
                "name": v["name"],
                "parallelism": v["parallelism"],
                "input_watermark_ms": low if low is not None and low >= _EARLIEST_MS else None,
            }
        )
    lowest = min(stream_ms, default=None)
    pulled = counters.get("messages_pulled")
    return {
        "counters": counters,
        "watermark_lag_s": (
            round((now_ms - lowest) / 1000, 3) if lowest is not None and lowest >= _EARLIEST_MS else None
        ),
        "oldest_unacked_age_s": round(oldest_ms / 1000, 3) if oldest_ms is not None else None,
        "backlog_messages": (published_messages - (pulled or 0)) if published_messages is not None else None,
        "vertices": vertices,
    }
