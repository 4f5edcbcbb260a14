"""``viewcounts serve``: the stats HTTP API over the stored aggregates (FastAPI + uvicorn).

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``GET /v1/stats?video_id=V&event_type=T&function=F&start=S&end=E&granularity=G[&tz=Z]``:
  ``get_stats`` (docs/contract.md, Queries; ``query.stats``) for every (``video_id``, ``event_type``)
  pair of the repeated parameters, one *series* each, in request order (video-major). Same
  checks and messages as ``viewcounts stats``. Answer::

      {"function", "granularity", "start", "end", "tz", "allowed_lateness_s", "final_margin_s",
       "series": [{"video_id", "event_type", "value", "combined": {count, value_count, sum, avg,
                   min, max}, "final", "read_at", "newest_window", "newest_window_opened_at",
                   "buckets": {"start": [...], "count": [...], "value_count": [...], "sum": [...],
                               "avg": [...], "min": [...], "max": [...], "final": [...]}}]}

  ``buckets`` is columnar (one list per field, one position per bucket, empty buckets
  included with count 0 and null avg/min/max; none for ``total``); ``start`` labels are the
  RFC 3339 bucket starts in ``tz`` (UTC instants, as ``viewcounts stats --json`` labels them).
  A bucket is ``final`` when ``bucket end + allowed_lateness_s + final_margin_s <= now``
  (``query.cached_reader``); a series is ``final`` when all of its range is. Freshness:
  ``read_at`` is when the non-final part was read from Bigtable (at most ``--tail-ttl-s``
  before the answer; null when the whole answer came from the final-window cache); ``newest_window`` is the start of the newest stored
  window with data in range and ``newest_window_opened_at`` the wall clock at which the
  pipeline created that window's state, decoded from its cell timestamp
  (``schemas.storage.cell_timestamp_us``): its panes, the newest included, were written at
  or after it. Bigtable keeps no record of when a pane was written, so no answer can say more.
* ``GET /v1/top?type=T&granularity=G&at=A[&n=N]``: ``get_top`` (``query.top``): the top ``n``
  (default 10, 1..``TOP_K``) videos by count of type ``T`` in the ``minute``/``hour``/``day``
  window holding the instant ``A``. Answer::

      {"type", "granularity", "window_start", "window_end", "n",
       "items": [{"video_id", "count"}, ...], "newest_pane", "final", "read_at"}

  ``items`` ranked by count, then video_id; empty without data. ``newest_pane``: the wall clock
  at which the pipeline opened this window's top list (decoded from its cell timestamp: every
  list of the window, the newest included, was written at or after it; null without a list);
  ``final`` as for a bucket; ``read_at``: when the list was read from Bigtable (final lists are
  cached, open ones at most ``--tail-ttl-s`` old).
* ``POST /v1/cache/invalidate``: drops every cached window, final or open tail (run it after
  ``viewcounts recompute``); answers ``{"dropped_rows", "generation"}``.
* ``GET /healthz``: ``{"ok": true, "cache": {...}}`` (liveness; no Bigtable read).

Errors are JSON ``{"error": message}``: 400 for a query the CLI refuses (the same message),
a missing parameter, a repeated one that takes one value, or a request over the bounds; 500 for a stored
cell the pipeline cannot write; 503 when Bigtable cannot be read.

Bounds: at most ``MAX_SERIES`` (20) series a request, and at most ``MAX_WINDOWS`` (50,000)
stored windows spanned by all of them (series x range / window size: 20 one-day minute series
are 28,800; one 30-day hour series is 720; a year of hours by day or total is 8,784).
"""

from __future__ import annotations

import pipelines  # noqa: F401  (first: importing it hides the unfixable grpcio warning)

# isort: split

import contextlib
import datetime as dt
import functools
import gc
import logging
import os

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from google.api_core import exceptions as google_exceptions
from starlette.exceptions import HTTPException as StarletteHTTPException

from query import dashboard
from query.cached_reader import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_TAIL_TTL_S,
    Answer,
    CachedStatsReader,
)
from query.stats import FUNCTIONS, QueryError, StatsQuery, aggregate_json, parse_query, value_of, zone_of
from query.top import GRANULARITIES as TOP_GRANULARITIES
from query.top import parse_top
from query.windows import COUNT, MAX, MIN, OPENED_MS, SUM, VALUE_COUNT, bucket_columns
from schemas import storage
from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
from schemas.closed_windows import CLOSE_MARGIN_S, closes_at_s

_LOG = logging.getLogger(__name__)
MAX_SERIES = 20
MAX_WINDOWS = 50_000
_JSON = "application/json"


_REQUIRED = ("video_id", "event_type", "function", "start", "end", "granularity")
STATS_PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": name in _REQUIRED,
        "description": text,
        "schema": {"type": "array", "items": {"type": "string"}}
        if name in ("video_id", "event_type")
        else {"type": "string"},
        **({"explode": True} if name in ("video_id", "event_type") else {}),
    }
    for name, text in (
        ("video_id", f"repeatable; series = video_id x event_type, at most {MAX_SERIES}"),
        ("event_type", "repeatable"),
        ("function", " | ".join(FUNCTIONS)),
        ("start", "RFC 3339 instant, aligned to the granularity"),
        ("end", "RFC 3339 instant (exclusive)"),
        ("granularity", "minute | hour | day | total"),
        ("tz", "IANA time zone for bucket labels (buckets stay UTC)"),
    )
]


TOP_PARAMETERS = [
    {"name": name, "in": "query", "required": name != "n", "description": text, "schema": {"type": "string"}}
    for name, text in (
        ("type", "event type, [a-z0-9_]+"),
        ("granularity", " | ".join(TOP_GRANULARITIES)),
        ("at", "RFC 3339 instant inside the window (or its start)"),
        ("n", f"how many videos, 1..{storage.TOP_K} (default 10)"),
    )
]


def top_params(params) -> tuple:
    """``(type, granularity, at, n)`` from a query-string multi-dict (``n`` default 10); raises
    ``QueryError`` naming missing or repeated parameters."""
    missing = [name for name in ("type", "granularity", "at") if name not in params]
    if missing:
        raise QueryError(f"missing query parameter(s): {', '.join(missing)}")
    repeated = [name for name in ("type", "granularity", "at", "n") if len(params.getlist(name)) > 1]
    if repeated:
        raise QueryError(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return params["type"], params["granularity"], params["at"], params.get("n", "10")


def stats_params(params) -> tuple:
    """``(video_ids, event_types, function, start, end, granularity, tz)`` from a query-string
    multi-dict; raises ``QueryError`` naming missing or repeated parameters."""
    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise QueryError(f"missing query parameter(s): {', '.join(missing)}")
    repeated = [name for name in ("function", "start", "end", "granularity", "tz") if len(params.getlist(name)) > 1]
    if repeated:
        raise QueryError(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return (
        params.getlist("video_id"),
        params.getlist("event_type"),
        params["function"],
        params["start"],
        params["end"],
        params["granularity"],
        params.get("tz") or None,
    )


def check_bounds(queries: list[StatsQuery]) -> None:
    """Raise ``QueryError`` for a request over ``MAX_SERIES`` or ``MAX_WINDOWS`` (module docstring)."""
    if not queries:
        raise QueryError("give at least one video_id and one event_type")
    if len(queries) > MAX_SERIES:
        raise QueryError(f"{len(queries)} series (video_id x event_type) in one request; at most {MAX_SERIES}")
    q = queries[0]
    windows = len(queries) * ((q.end_s - q.start_s) // storage.GRANULARITY_SECONDS[q.source])
    if windows > MAX_WINDOWS:
        raise QueryError(
            f"the request spans {windows} stored windows ({len(queries)} series x range / "
            f"{q.source}); at most {MAX_WINDOWS}: ask for a shorter range or a coarser granularity"
        )


def _instant(s: float | None) -> str | None:
    return None if s is None else dt.datetime.fromtimestamp(s, dt.timezone.utc).isoformat(timespec="milliseconds")


@functools.lru_cache(maxsize=512)
def _labels(first_s: int, n: int, size: int, tz: str | None) -> orjson.Fragment:
    """The encoded JSON list of ``n`` bucket start labels (``StatsQuery.label``), kept: the
    same ranges come again and again, and formatting 1,440 labels costs ~2 ms."""
    zone = zone_of(tz)
    return orjson.Fragment(
        orjson.dumps([dt.datetime.fromtimestamp(first_s + i * size, zone).isoformat() for i in range(n)])
    )


def series_json(answer: Answer, tz: str | None, allowed_lateness_s: int, final_margin_s: int) -> dict:
    """One series of the ``/v1/stats`` answer (module docstring) from a reader's ``Answer``."""
    q, w = answer.query, answer.windows
    cols = bucket_columns(w, q.bucket_size)
    with_data = np.flatnonzero(w.ints[COUNT])
    newest = int(with_data[-1]) if with_data.size else None
    series = {
        "video_id": q.video_id,
        "event_type": q.event_type,
        "value": value_of(cols.combined, q.function),
        "combined": aggregate_json(cols.combined),
        "final": closes_at_s(q.start_s, q.end_s - q.start_s, allowed_lateness_s, final_margin_s) <= answer.now_s,
        "read_at": _instant(answer.read_at),
        "newest_window": None if newest is None else _instant(w.first_s + newest * w.size),
        "newest_window_opened_at": None if newest is None else _instant(w.ints[OPENED_MS, newest] / 1000),
    }
    if q.bucket_size is not None:
        n = cols.ints.shape[1]
        counts, value_counts = cols.ints[COUNT], cols.ints[VALUE_COUNT]
        sums = cols.floats[SUM]
        avg = np.divide(sums, value_counts, out=np.full(n, np.nan), where=value_counts > 0)
        starts = cols.first_s + np.arange(n, dtype=np.int64) * cols.bucket_size
        series["buckets"] = {
            "start": _labels(cols.first_s, n, cols.bucket_size, tz),
            "count": counts,
            "value_count": value_counts,
            "sum": sums,
            "avg": avg,
            "min": cols.floats[MIN],
            "max": cols.floats[MAX],
            "final": closes_at_s(starts, cols.bucket_size, allowed_lateness_s, final_margin_s) <= answer.now_s,
        }
    return series


def create_app(reader: CachedStatsReader):
    """The FastAPI app serving ``reader`` (module docstring). The app opens the reader's client
    when it starts and closes it when it stops (its lifespan)."""

    def error(status: int, message: str) -> Response:
        return Response(orjson.dumps({"error": message}), status_code=status, media_type=_JSON)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await reader.open()
        try:
            yield
        finally:
            await reader.close()

    app = FastAPI(
        title="viewcounts stats",
        lifespan=lifespan,
        description="Stored per-minute and per-hour aggregates (docs/contract.md, Queries) over HTTP.",
    )
    app.include_router(dashboard.router)  # the dashboard page at / and /dashboard (query.dashboard)

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError):
        return error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # 404, 405 (with its Allow header)
        return Response(
            orjson.dumps({"error": str(exc.detail)}), status_code=exc.status_code, media_type=_JSON, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error(400, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()))

    @app.exception_handler(storage.CellError)
    async def _cell_error(request: Request, exc: storage.CellError):
        return error(500, str(exc))

    @app.exception_handler(google_exceptions.GoogleAPIError)
    async def _bigtable_error(request: Request, exc: google_exceptions.GoogleAPIError):
        return error(503, f"Bigtable could not be read: {type(exc).__name__}: {str(exc)[:300]}")

    @app.get(
        "/v1/stats",
        summary="get_stats for one or more (video_id, event_type) series",
        openapi_extra={"parameters": STATS_PARAMETERS},
        responses={
            200: {"description": "the series (see the module docstring of query.service)"},
            400: {"description": "{\"error\": message}: a refused query or a request over the bounds"},
        },
    )
    async def stats(request: Request) -> Response:
        # parameters read here, not declared to FastAPI: its per-parameter validation was ~30 %
        # of a cached answer's CPU; STATS_PARAMETERS documents them in the OpenAPI schema
        video_id, event_type, function, start, end, granularity, tz = stats_params(request.query_params)
        queries = [parse_query(v, t, function, start, end, granularity, tz) for v in video_id for t in event_type]
        check_bounds(queries)
        answers = await reader.read_many(queries)
        q = queries[0]
        body = {
            "function": function,
            "granularity": granularity,
            "start": q.label(q.start_s).isoformat(),
            "end": q.label(q.end_s).isoformat(),
            "tz": tz,
            "allowed_lateness_s": reader.allowed_lateness_s,
            "final_margin_s": reader.final_margin_s,
            "series": [series_json(a, tz, reader.allowed_lateness_s, reader.final_margin_s) for a in answers],
        }
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type=_JSON)

    @app.get(
        "/v1/top",
        summary="the top n videos by count of one event type in one minute, hour or day",
        openapi_extra={"parameters": TOP_PARAMETERS},
        responses={
            200: {"description": "the top list (see the module docstring of query.service)"},
            400: {"description": "{\"error\": message}: a refused query"},
        },
    )
    async def top(request: Request) -> Response:
        answer = await reader.read_top(parse_top(*top_params(request.query_params)))
        body = answer.top.to_json(answer.final)
        body["read_at"] = _instant(answer.read_at)
        return Response(orjson.dumps(body), media_type=_JSON)

    @app.post("/v1/cache/invalidate", summary="drop every cached final window (after a recompute)")
    async def invalidate() -> Response:
        dropped = reader.invalidate()
        return Response(
            orjson.dumps({"dropped_rows": dropped, "generation": reader.cache.generation}), media_type=_JSON
        )

    @app.get("/healthz", summary="liveness and cache figures")
    async def healthz() -> Response:
        return Response(orjson.dumps({"ok": True, "cache": reader.cache.info()}), media_type=_JSON)

    return app


def add_serve_args(parser) -> None:
    """The flags of ``viewcounts serve``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--project", default=storage.DEFAULT_PROJECT, help="Bigtable project")
    parser.add_argument("--instance", default=storage.DEFAULT_INSTANCE, help="Bigtable instance")
    parser.add_argument("--table", default=storage.DEFAULT_TABLE, help="Bigtable table")
    parser.add_argument(
        "--allowed-lateness-s",
        type=int,
        default=DEFAULT_ALLOWED_LATENESS_S,
        help="the streaming job's --allowed_lateness_s: a bucket is final once its end plus this "
        "plus --final-margin-s is past",
    )
    parser.add_argument(
        "--final-margin-s",
        type=int,
        default=CLOSE_MARGIN_S,
        help="how far the streaming job's watermark may trail the wall clock",
    )
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=DEFAULT_CACHE_BYTES // 2**20,
        help="memory for cached final windows (least recently used rows dropped past it)",
    )
    parser.add_argument(
        "--tail-ttl-s",
        type=float,
        default=DEFAULT_TAIL_TTL_S,
        help="how long a read of a row's open (not final) windows serves other requests; 0: every request reads them",
    )


def serve_main(args) -> int:
    """Run the service until SIGINT/SIGTERM (uvicorn, one process, uvloop + httptools, no access
    log; the start-up objects frozen out of the garbage collector, ``gc.freeze``). Returns 2 without a Bigtable to read (no emulator variable and no credentials)."""
    import uvicorn

    if not os.environ.get("BIGTABLE_EMULATOR_HOST"):
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            google.auth.default()
        except DefaultCredentialsError:
            _LOG.error(
                "no Bigtable to read: set BIGTABLE_EMULATOR_HOST=host:port for an emulator (for example the "
                "one `viewcounts demo --keep-running` prints) or configure Google Cloud credentials"
            )
            return 2
    reader = CachedStatsReader(
        args.project,
        args.instance,
        args.table,
        args.allowed_lateness_s,
        args.final_margin_s,
        args.cache_mb * 2**20,
        args.tail_ttl_s,
    )
    app = create_app(reader)
    gc.collect()
    gc.freeze()  # the start-up objects out of the collector's reach: no full-collection pauses over them
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", access_log=False, log_level="info"
    )
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_serve_args(ap)
    sys.exit(serve_main(ap.parse_args()))
