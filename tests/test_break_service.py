"""Hostile tests of the stats service (query.service) found by breaking it, on the Bigtable
emulator: every answer that is not a 200 must be the documented error JSON ``{"error": ...}``
with a 4xx for the caller's mistakes, whatever the query (ranges at the ends of the calendar,
any time zone) and whatever the path or method."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.cached_reader import CachedStatsReader
from query.service import create_app
from viewcounts.local import provision

pytestmark = pytest.mark.emulator
PROJECT, INSTANCE = "test-project", "test-instance"
_FIRST_S = int(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc).timestamp())
_END_S = int(dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone.utc).timestamp())  # the last hour start SPEC allows
_SIZE = {"minute": 60, "hour": 3600, "day": 86400, "total": 3600}


@pytest.fixture(scope="module")
def client(bigtable_host):
    from fastapi.testclient import TestClient

    table = f"brk-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, table)
    with TestClient(create_app(CachedStatsReader(PROJECT, INSTANCE, table)), raise_server_exceptions=False) as c:
        yield c


def _iso(s: int) -> str:
    return dt.datetime.fromtimestamp(s, dt.timezone.utc).isoformat()


@st.composite
def _edge_queries(draw):
    """An aligned range of a few buckets near year 1 or year 9999 (instants SPEC section 1
    allows), any granularity, with or without a far-east or far-west time zone."""
    granularity = draw(st.sampled_from(sorted(_SIZE)))
    size = _SIZE[granularity]
    near_end = draw(st.booleans())
    n = draw(st.integers(0, 3))
    if near_end:
        end = _END_S // size * size - draw(st.integers(0, 3)) * size
        start = end - n * size
    else:
        start = -(-_FIRST_S // size) * size + draw(st.integers(0, 3)) * size
        end = start + n * size
    tz = draw(st.sampled_from([None, "Pacific/Kiritimati", "America/New_York", "Etc/GMT+12"]))
    return {
        "video_id": "V",
        "event_type": "view",
        "function": draw(st.sampled_from(["count", "avg"])),
        "start": _iso(start),
        "end": _iso(end),
        "granularity": granularity,
        **({"tz": tz} if tz else {}),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_edge_queries())
def test_queries_at_the_ends_of_the_calendar_answer_or_are_refused_as_json(client, params):
    r = client.get("/v1/stats", params=params)
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    assert r.status_code == 200 or (r.status_code == 400 and set(r.json()) == {"error"}), (r.status_code, r.text)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.sampled_from(["/v1/stats", "/v1/cache/invalidate", "/healthz", "/v1/nothing", "/v2/stats"]),
)
def test_every_error_answer_is_the_documented_error_json(client, method, path):
    r = client.request(method, path)
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}, (method, path, r.status_code, r.text)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=st.integers(1, 1000), new=st.integers(1001, 2000), ttl=st.floats(0.5, 60))
def test_after_an_invalidation_no_answer_holds_windows_read_before_it(bigtable_host, monkeypatch, old, new, ttl):
    """A read under way while a recompute writes and the cache is invalidated (its ReadRows
    answered before the write, its answer handled after the invalidation); the next request
    must see the recomputed value. The read is only held back, Bigtable is real."""
    import asyncio

    from query import cached_reader
    from query.stats import parse_query, stats_of
    from schemas.storage import Aggregate
    from viewcounts.bench.queries import store_cells

    table = f"brk-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, table)
    hour = int(dt.datetime(2024, 5, 14, 10, tzinfo=dt.timezone.utc).timestamp())
    store_cells({("V", "view", "hour", hour): Aggregate(old, 0, 0.0, None, None)}, PROJECT, INSTANCE, table)
    query = parse_query("V", "view", "count", _iso(hour), _iso(hour + 3600), "hour")
    now = hour + 1800  # the hour is open: its windows come from tail reads
    real_read, held, release = cached_reader.read_columns, asyncio.Event(), asyncio.Event()

    async def held_back(*args, **kwargs):
        rows = await real_read(*args, **kwargs)
        held.set()
        await release.wait()
        return rows

    async def scenario() -> int:
        reader = CachedStatsReader(PROJECT, INSTANCE, table, tail_ttl_s=ttl, clock=lambda: now)
        await reader.open()
        try:
            monkeypatch.setattr(cached_reader, "read_columns", held_back)
            first = asyncio.ensure_future(reader.read(query))
            await held.wait()
            monkeypatch.setattr(cached_reader, "read_columns", real_read)
            store_cells({("V", "view", "hour", hour): Aggregate(new, 0, 0.0, None, None)}, PROJECT, INSTANCE, table)
            reader.invalidate()  # POST /v1/cache/invalidate after the recompute
            release.set()
            await first
            return stats_of(query, (await reader.read(query)).windows).value
        finally:
            await reader.close()

    assert asyncio.run(scenario()) == new


@pytest.mark.parametrize("granularity", ["minute", "hour", "day"])
def test_top_at_the_end_of_the_calendar_answers_or_is_refused_as_json(client, granularity):
    at = {"minute": "9999-12-31T23:59:00Z", "hour": "9999-12-31T23:00:00Z", "day": "9999-12-31T00:00:00Z"}[granularity]
    r = client.get("/v1/top", params={"type": "view", "granularity": granularity, "at": at, "n": 3})
    assert r.status_code in (200, 400) and r.headers["content-type"].startswith("application/json"), r.text[:200]
