"""The stats HTTP service (query.service) on the real Bigtable emulator: same answers as the
sync ``get_stats`` for generated queries and clocks, the final-window cache (final windows
from the cache until invalidated, the open tail read fresh), error JSON, request bounds, and
``serve_main`` as a real uvicorn process."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.cached_reader import CachedStatsReader, final_before
from query.service import MAX_SERIES, MAX_WINDOWS, create_app
from query.stats import QueryError, StatsReader, parse_query
from schemas import storage
from schemas.storage import Aggregate
from viewcounts.bench.http import serving
from viewcounts.bench.queries import store_cells
from viewcounts.local import provision

pytestmark = pytest.mark.emulator
PROJECT, INSTANCE = "test-project", "test-instance"
BASE = int(dt.datetime(2024, 1, 30, tzinfo=dt.timezone.utc).timestamp())  # 3 stored days, across a month end
DAYS = 3
VIDEOS, TYPES = ("V1", "V#2%"), ("view", "watch")
ZONES = (None, "Europe/Paris", "America/New_York")


def _iso(s: int) -> str:
    return dt.datetime.fromtimestamp(s, dt.timezone.utc).isoformat()


def _cells(seed: int) -> dict:
    """Sparse minute windows (about a third present) and every hour window of ``DAYS`` days
    from ``BASE`` for ``VIDEOS`` x ``TYPES``; ``watch`` carries values (sum/min/max)."""
    rng = np.random.default_rng(seed)
    cells = {}
    for v in VIDEOS:
        for t in TYPES:
            for gran, size in (("minute", 60), ("hour", 3600)):
                for w in range(BASE, BASE + DAYS * 86400, size):
                    if gran == "minute" and rng.random() > 0.35:
                        continue
                    n = int(rng.integers(1, 50))
                    if t == "watch":
                        vals = rng.normal(100, 40, n).round(3)
                        cells[(v, t, gran, w)] = Aggregate(
                            n, n, float(vals.sum()), float(vals.min()), float(vals.max())
                        )
                    else:
                        cells[(v, t, gran, w)] = Aggregate(n, 0, 0.0, None, None)
    return cells


def _new_table() -> str:
    name = f"svc-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, name)
    return name


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def served(bigtable_host):
    """``(client, reader, clock, sync_reader)`` over one table of ``_cells(7)``."""
    from fastapi.testclient import TestClient

    table = _new_table()
    store_cells(_cells(7), PROJECT, INSTANCE, table)
    clock = _Clock(BASE)
    reader = CachedStatsReader(PROJECT, INSTANCE, table, allowed_lateness_s=600, final_margin_s=300, clock=clock)
    with TestClient(create_app(reader)) as client, StatsReader(PROJECT, INSTANCE, table) as sync:
        yield client, reader, clock, sync


def _get(client, videos, types, function, start, end, granularity, tz=None):
    params = {
        "video_id": list(videos),
        "event_type": list(types),
        "function": function,
        "start": start,
        "end": end,
        "granularity": granularity,
    }
    if tz is not None:
        params["tz"] = tz
    return client.get("/v1/stats", params=params)


@st.composite
def _queries(draw):
    """A query over (and around) the stored days, with a clock anywhere from before the data to
    after it is all final: the cached part and the fresh tail split the range anywhere."""
    granularity = draw(st.sampled_from(("minute", "hour", "day", "total")))
    size = {"minute": 60, "hour": 3600, "day": 86400, "total": 3600}[granularity]
    lo, hi = (BASE - 86400) // size, (BASE + (DAYS + 1) * 86400) // size
    a = draw(st.integers(lo, hi))
    b = draw(st.integers(a, hi))  # 6 days of minutes x 4 series: inside MAX_WINDOWS
    now = BASE + draw(st.integers(-86400, (DAYS + 1) * 86400 + 1200))
    videos = draw(st.lists(st.sampled_from(VIDEOS + ("nobody",)), min_size=1, max_size=2, unique=True))
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=2, unique=True))
    return (
        videos,
        types,
        draw(st.sampled_from(("count", "sum", "avg", "min", "max"))),
        _iso(a * size),
        _iso(b * size),
        granularity,
        draw(st.sampled_from(ZONES)),
        now,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_queries())
def test_answers_equal_get_stats_whatever_the_cache_holds(served, q):
    client, reader, clock, sync = served
    videos, types, function, start, end, granularity, tz, now = q
    clock.now = now
    resp = _get(client, videos, types, function, start, end, granularity, tz)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["series"]) == len(videos) * len(types)
    closes = reader.allowed_lateness_s + reader.final_margin_s
    for series, (v, t) in zip(body["series"], [(v, t) for v in videos for t in types]):
        want = sync.get_stats(v, t, function, start, end, granularity, tz).to_json()
        assert (series["video_id"], series["event_type"]) == (v, t)
        assert series["value"] == want["value"] and series["combined"] == want["combined"]
        assert series["final"] == (parse_query(v, t, function, start, end, granularity).end_s + closes <= now)
        if granularity == "total":
            assert "buckets" not in series and want["buckets"] == []
            continue
        cols = series["buckets"]
        assert cols["start"] == [b["start"] for b in want["buckets"]]
        for field in ("count", "value_count", "sum", "avg", "min", "max"):
            assert cols[field] == [b[field] for b in want["buckets"]], field
        size = {"minute": 60, "hour": 3600, "day": 86400}[granularity]
        starts = [int(dt.datetime.fromisoformat(b["start"]).timestamp()) for b in want["buckets"]]
        assert cols["final"] == [s + size + closes <= now for s in starts]


def _write(table: str, video: str, w: int, count: int, gran: str = "minute") -> None:
    store_cells({(video, "view", gran, w): Aggregate(count, 0, 0.0, None, None)}, PROJECT, INSTANCE, table)


@pytest.fixture
def fresh_service(bigtable_host):
    """A service on an empty table: ``(client, reader, clock, table)``."""
    from fastapi.testclient import TestClient

    table = _new_table()
    clock = _Clock(BASE)
    reader = CachedStatsReader(
        PROJECT, INSTANCE, table, allowed_lateness_s=120, final_margin_s=60, tail_ttl_s=0, clock=clock
    )
    with TestClient(create_app(reader)) as client:
        yield client, reader, clock, table


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(age_s=st.integers(-60, 600), lateness=st.integers(0, 300), margin=st.integers(0, 300))
def test_a_final_window_comes_from_the_cache_until_invalidated_an_open_one_is_read_fresh(
    fresh_service, age_s, lateness, margin
):
    """A window whose end is ``age_s`` before the clock: read once, then overwritten in
    Bigtable (as a recompute or a later pane would). A final window answers the cached value
    until ``POST /v1/cache/invalidate``; an open one answers the new value at once."""
    client, reader, clock, table = fresh_service
    reader.allowed_lateness_s, reader.final_margin_s = lateness, margin
    video = f"v-{uuid.uuid4().hex[:8]}"
    w = BASE + 3600
    clock.now = w + 60 + age_s
    final = w + 60 + lateness + margin <= clock.now
    assert final == (w < final_before(60, clock.now, lateness, margin))
    day = (_iso(w - w % 86400), _iso(w - w % 86400 + 86400))

    def count() -> int:
        series = _get(client, [video], ["view"], "count", *day, "minute").json()["series"][0]
        assert series["buckets"]["final"][(w % 86400) // 60] == final
        return series["value"]

    _write(table, video, w, 3)
    assert count() == 3
    _write(table, video, w, 5)
    assert count() == (3 if final else 5)
    dropped = client.post("/v1/cache/invalidate").json()["dropped_rows"]
    assert dropped >= (1 if final else 0)
    assert count() == 5


def test_an_open_tail_read_serves_for_tail_ttl_s_then_is_read_again(fresh_service):
    client, reader, clock, table = fresh_service
    reader.tail_ttl_s = 5.0
    w = BASE + 3600
    clock.now = w + 30  # the window is open
    _write(table, "T", w, 3)

    def series() -> dict:
        return _get(client, ["T"], ["view"], "count", _iso(w), _iso(w + 60), "minute").json()["series"][0]

    first = series()
    _write(table, "T", w, 5)
    clock.now += 2.0  # kept for tail_ttl_s / 2 at least
    again = series()
    assert (first["value"], again["value"]) == (3, 3) and again["read_at"] == first["read_at"]
    clock.now += 3.0  # and tail_ttl_s at most
    later = series()
    assert later["value"] == 5 and later["read_at"] > first["read_at"]


def test_freshness_says_when_the_newest_window_was_opened_and_when_the_tail_was_read(fresh_service):
    client, reader, clock, table = fresh_service
    w = BASE + 7200
    before_ms = storage.wall_clock_ms()
    _write(table, "F", w, 4)
    _write(table, "F", w - 600, 2)
    clock.now = w + 30
    series = _get(client, ["F"], ["view"], "count", _iso(BASE), _iso(BASE + 86400), "minute").json()["series"][0]
    assert series["newest_window"] == dt.datetime.fromtimestamp(w, dt.timezone.utc).isoformat(timespec="milliseconds")
    opened = dt.datetime.fromisoformat(series["newest_window_opened_at"]).timestamp() * 1000
    assert before_ms <= opened <= storage.wall_clock_ms()
    assert series["read_at"] is not None and not series["final"]
    clock.now = BASE + 86400 + 10_000  # the whole day final: the second answer is all from the cache
    _get(client, ["F"], ["view"], "count", _iso(BASE), _iso(BASE + 86400), "minute")
    series = _get(client, ["F"], ["view"], "count", _iso(BASE), _iso(BASE + 86400), "minute").json()["series"][0]
    assert series["read_at"] is None and series["final"] and series["value"] == 6


_BAD = st.one_of(
    st.tuples(
        st.just("function"),
        st.text(min_size=1, max_size=8).filter(lambda f: f not in ("count", "sum", "avg", "min", "max")),
    ),
    st.tuples(st.just("granularity"), st.sampled_from(("second", "week", "Minute", ""))),
    st.tuples(
        st.just("start"),
        st.sampled_from(("2024-01-30T00:00:30Z", "yesterday", "2024-01-30T00:00:00", "2024-01-30T00:00:00.5Z")),
    ),
    st.tuples(st.just("end"), st.sampled_from(("2024-01-29T00:00:00Z", "2024-01-30T00:00:01Z"))),
    st.tuples(st.just("tz"), st.sampled_from(("Mars/Olympus", "../etc", "UTC+3"))),
    st.tuples(st.just("video_id"), st.just("v" * 257)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_BAD)
def test_refused_queries_answer_json_with_the_cli_message(served, bad):
    client = served[0]
    args = {
        "video_id": "V1",
        "event_type": "view",
        "function": "count",
        "start": _iso(BASE),
        "end": _iso(BASE + 3600),
        "granularity": "minute",
        "tz": None,
    }
    args[bad[0]] = bad[1]
    with pytest.raises(QueryError) as refused:
        parse_query(
            args["video_id"],
            args["event_type"],
            args["function"],
            args["start"],
            args["end"],
            args["granularity"],
            args["tz"],
        )
    resp = _get(
        client,
        [args["video_id"]],
        [args["event_type"]],
        args["function"],
        args["start"],
        args["end"],
        args["granularity"],
        args["tz"],
    )
    assert resp.status_code == 400 and resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": str(refused.value)}


def test_the_cli_prints_the_same_message(served, capsys):
    from viewcounts.cli import main

    client, reader, _, _ = served
    argv = [
        "--video-id",
        "V1",
        "--event-type",
        "view",
        "--function",
        "count",
        "--start",
        "2024-01-30T00:00:30Z",
        "--end",
        _iso(BASE + 3600),
        "--granularity",
        "minute",
        "--project",
        PROJECT,
        "--instance",
        INSTANCE,
        "--table",
        reader.table_id,
    ]
    assert main(["stats", *argv]) == 2
    printed = capsys.readouterr().err.strip()
    resp = _get(client, ["V1"], ["view"], "count", "2024-01-30T00:00:30Z", _iso(BASE + 3600), "minute")
    assert printed == f"error: {resp.json()['error']}"


def test_missing_parameters_are_json_errors(served):
    resp = served[0].get("/v1/stats", params={"video_id": "V1", "function": "count"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    for name in ("event_type", "start", "end", "granularity"):
        assert name in error
    resp = _get(served[0], ["V1"], ["view"], ["count", "sum"], _iso(BASE), _iso(BASE + 60), "minute")
    assert resp.status_code == 400 and "function" in resp.json()["error"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    videos=st.integers(1, 25),
    types=st.integers(1, 3),
    days=st.integers(1, 40),
    granularity=st.sampled_from(("minute", "hour")),
)
def test_request_bounds(served, videos, types, days, granularity):
    client = served[0]
    size = 60 if granularity == "minute" else 3600
    windows = videos * types * days * 86400 // size
    resp = _get(
        client,
        [f"v{i}" for i in range(videos)],
        [f"t{i}" for i in range(types)],
        "count",
        _iso(BASE),
        _iso(BASE + days * 86400),
        granularity,
    )
    allowed = videos * types <= MAX_SERIES and windows <= MAX_WINDOWS
    assert resp.status_code == (200 if allowed else 400), resp.text
    if not allowed:
        assert "at most" in resp.json()["error"]


def test_serve_main_runs_uvicorn_with_docs_and_health(bigtable_host):
    table = _new_table()
    store_cells({("V1", "view", "hour", BASE): Aggregate(9, 0, 0.0, None, None)}, PROJECT, INSTANCE, table)
    with serving(PROJECT, INSTANCE, table) as (url, _):
        documented = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/stats"]["get"]["parameters"]
        assert {p["name"] for p in documented} == {
            "video_id",
            "event_type",
            "function",
            "start",
            "end",
            "granularity",
            "tz",
        }
        assert httpx.get(f"{url}/docs").status_code == 200
        resp = httpx.get(
            f"{url}/v1/stats",
            params={
                "video_id": "V1",
                "event_type": "view",
                "function": "count",
                "start": _iso(BASE),
                "end": _iso(BASE + 86400),
                "granularity": "day",
            },
        )
        assert resp.json()["series"][0]["value"] == 9


_CELL = st.tuples(
    st.sampled_from(("a", "b")), st.sampled_from((b"q1", b"q2")), st.integers(0, 2**40), st.binary(max_size=40)
)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.dictionaries(st.binary(min_size=1, max_size=6), st.lists(_CELL, min_size=1, max_size=5), max_size=4),
    data=st.data(),
)
def test_chunk_merger_rebuilds_rows_from_split_values_resets_and_any_response_boundaries(rows, data):
    """Rows encoded as the Bigtable API's cell chunks (family and qualifier only when they
    change, values split over chunks with value_size, rows restarted with reset_row, chunks
    spread over responses) merge back into the cells of the asked family."""
    from google.cloud.bigtable_v2.types import bigtable

    from query.bigtable_rows import ChunkMerger

    chunk_cls = bigtable.ReadRowsResponse.pb().CellChunk

    def encode(key, cells):
        out, fam, q = [], None, None
        for i, (f, qual, ts, value) in enumerate(cells):
            cut = sorted(data.draw(st.lists(st.integers(0, len(value)), max_size=3))) if value else []
            parts = [value[a:b] for a, b in zip([0] + cut, cut + [len(value)])]
            for j, part in enumerate(parts):
                c = chunk_cls(value=part)
                if i == 0 and j == 0:
                    c.row_key = key
                if j == 0:
                    c.timestamp_micros = ts
                    if f != fam or i == 0:
                        c.family_name.value = f
                    if qual != q or f != fam or i == 0:
                        c.qualifier.value = qual
                    fam, q = f, qual
                if j < len(parts) - 1:
                    c.value_size = len(value)
                out.append(c)
        return out

    chunks = []
    for key, cells in rows.items():
        if data.draw(st.booleans()):  # a partial attempt at the row, then a reset
            chunks += encode(key, cells[: data.draw(st.integers(1, len(cells)))])
            chunks.append(chunk_cls(reset_row=True))
        encoded = encode(key, cells)
        encoded[-1].commit_row = True
        chunks += encoded
    merger = ChunkMerger("a")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(chunks)), max_size=4)))
    for a, b in zip([0] + cuts, cuts + [len(chunks)]):
        merger.feed(chunks[a:b])
    assert merger.rows == {k: [(q, v, ts) for f, q, ts, v in cells if f == "a"] for k, cells in rows.items()}
