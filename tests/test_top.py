"""Top entities (issue 15), fast: the bounded-state argument of ``transforms.top`` against a full
sort (random monotone update sequences, sharded and merged), the storage layout of top rows
(round trips, no collision with entity rows), and ``get_top`` / ``viewcounts top`` /
``GET /v1/top`` on the Bigtable emulator (answers, errors, the final-window cache)."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.cached_reader import CachedStatsReader
from query.service import create_app
from query.stats import QueryError
from query.top import TopReader, parse_top
from schemas import storage
from transforms.bigtable_sink import WriteAggregates, cell_of
from transforms.top import BoundedTop, TopRow, top_of
from viewcounts import cli
from viewcounts.local import provision

PROJECT, INSTANCE = "test-project", "test-instance"
VIDEO_IDS = st.text(min_size=1, max_size=40).filter(lambda v: len(v.encode("utf-8", "surrogatepass")) <= 256)


def reference(latest: dict, k: int) -> tuple:
    return tuple(sorted(latest.items(), key=lambda vc: (-vc[1], vc[0]))[:k])


@st.composite
def monotone_updates(draw):
    """``[(video_id, count), ...]``: each video's counts never decrease, with repeats (re-fired
    panes), equal counts across videos (ties) and videos that stop early."""
    videos = draw(
        st.lists(
            st.sampled_from([f"v{i}" for i in range(30)] + ["#", "%", "é", "a b"]), min_size=1, max_size=25, unique=True
        )
    )
    counts = {v: 0 for v in videos}
    out = []
    for _ in range(draw(st.integers(1, 150))):
        v = draw(st.sampled_from(videos))
        counts[v] += draw(st.sampled_from([0, 0, 1, 1, 2, 5]))
        if counts[v]:
            out.append((v, counts[v]))
    return out


@settings(max_examples=300, deadline=None)
@given(monotone_updates(), st.integers(1, 8), st.integers(1, 5), st.randoms(use_true_random=False))
def test_bounded_top_per_shard_merged_equals_the_full_sort(updates, k, shards, rnd):
    """The two stages of ``transforms.top`` as plain objects: each shard's ``BoundedTop`` of
    ``k`` forwards the offers that changed it; a merging ``BoundedTop`` of ``k`` takes those
    forwarded offers, in any order within what has been forwarded (stale ones among them). After
    every delivery the shards' lists and the merged list equal a full sort of the latest counts."""
    tops = [BoundedTop(k) for _ in range(shards)]
    merged = BoundedTop(k)
    latest: dict[str, int] = {}
    in_flight: list[tuple[str, int]] = []
    for v, c in updates:
        shard = hash(v) % shards
        before = tops[shard].items()
        changed = tops[shard].offer(v, c)
        latest[v] = c
        assert changed == (tops[shard].items() != before)
        assert tops[shard].items() == reference({x: n for x, n in latest.items() if hash(x) % shards == shard}, k)
        assert len(tops[shard].counts) <= k
        if changed:
            in_flight.append((v, c))
        # deliver a random part of what is in flight, in a random order
        rnd.shuffle(in_flight)
        cut = rnd.randrange(len(in_flight) + 1)
        for offer in in_flight[:cut]:
            merged.offer(*offer)
        del in_flight[:cut]
    for offer in in_flight:
        merged.offer(*offer)
    assert merged.items() == reference(latest, k) == top_of((i for t in tops for i in t.items()), k)


@given(
    VIDEO_IDS,
    st.sampled_from(["view", "like", "top", "a_1"]),
    st.sampled_from(["minute", "hour"]),
    st.integers(0, 4_000_000_000),
)
def test_top_rows_never_collide_with_entity_rows(video_id, event_type, granularity, window_s):
    key = storage.row_key(video_id, event_type, granularity, window_s)
    assert not storage.is_top_row_key(key)
    for g in ("minute", "hour", "day"):
        top_key = storage.top_row_key(event_type, g, window_s)
        assert storage.is_top_row_key(top_key) and top_key != key and not key.startswith(top_key)


@given(st.integers(0, 253402300799))
def test_top_row_periods(s):
    day = dt.datetime.fromtimestamp(s, dt.timezone.utc)
    assert storage.top_row_key("view", "minute", s) == f"#top#view#m#{day:%Y%m%d}".encode()
    assert storage.top_row_key("view", "hour", s) == f"#top#view#h#{day:%Y%m}".encode()
    assert storage.top_row_key("view", "day", s) == f"#top#view#d#{day:%Y}".encode()


@given(st.dictionaries(VIDEO_IDS, st.integers(1, 2**62), max_size=storage.TOP_K))
def test_top_cells_round_trip(counts):
    items = reference(counts, storage.TOP_K)
    assert storage.decode_top(storage.encode_top(items)) == list(items)


@given(
    st.one_of(
        st.binary(max_size=60),
        st.builds(
            lambda x: orjson.dumps(x),
            st.recursive(
                st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3)), lambda c: st.lists(c, max_size=3)
            ),
        ),
    )
)
def test_decode_top_refuses_anything_else_with_a_cell_error(value):
    try:
        items = storage.decode_top(value)
    except storage.CellError:
        return
    assert storage.encode_top(items) == value


@pytest.mark.parametrize(
    "items",
    [
        [("a", 1), ("b", 2)],
        [("a", 0)],
        [("a", 2), ("a", 1)],
        [("b", 1), ("a", 1)],
        [(f"v{i:03d}", 1) for i in range(storage.TOP_K + 1)],
        [("a", 1.5)],
    ],
)
def test_encode_top_refuses_lists_the_pipeline_does_not_make(items):
    with pytest.raises(storage.CellError):
        storage.encode_top(items)


@pytest.mark.parametrize(
    "args, message",
    [
        (("view", "week", "2024-05-14T10:00:00Z", 3), "granularity must be one of minute, hour, day"),
        (("view", "hour", "2024-05-14T10:00:00Z", 0), "n must be an integer from 1 to 100"),
        (("view", "hour", "2024-05-14T10:00:00Z", 101), "n must be an integer from 1 to 100"),
        (("view", "hour", "2024-05-14T10:00:00Z", "ten"), "n must be an integer"),
        (("View", "hour", "2024-05-14T10:00:00Z", 3), "event_type must be 1..64 characters of [a-z0-9_]"),
        (("", "hour", "2024-05-14T10:00:00Z", 3), "event_type must be"),
        (("view", "hour", "2024-05-14 10:00:00", 3), "at:"),
        (("view", "hour", dt.datetime(2024, 5, 14), 3), "at must carry a time zone"),
    ],
)
def test_parse_top_errors(args, message):
    with pytest.raises(QueryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_top(*args)


# --- on the emulator -------------------------------------------------------------------------

BASE = int(dt.datetime(2024, 5, 14, tzinfo=dt.timezone.utc).timestamp())


def _lists(seed: int) -> dict:
    """Top lists of a few windows of each granularity: ``{(type, granularity, start): items}``."""
    import random

    rng = random.Random(seed)
    out = {}
    for g, size in storage.TOP_GRANULARITY_SECONDS.items():
        for i in range(3):
            w = BASE + i * size
            for t in ("view", "like"):
                counts = {f"V{j}#{rng.randrange(5)}": rng.randrange(1, 40) for j in range(rng.randrange(1, 130))}
                out[(t, g, w)] = list(reference(counts, storage.TOP_K))
    return out


def store_tops(lists: dict, table: str, base_ms: int | None = None) -> None:
    """Write top lists as the pipeline does (``WriteAggregates``), cell timestamps from ``base_ms``."""
    sink = WriteAggregates(PROJECT, INSTANCE, table)
    sink.setup()
    try:
        rows = [
            TopRow(
                t,
                g,
                w,
                tuple(items),
                storage.cell_timestamp_us(base_ms or storage.wall_clock_ms(), sum(c for _, c in items)),
            )
            for (t, g, w), items in lists.items()
        ]
        assert sink._write({cell_of(r): r for r in rows}) == []
    finally:
        sink.teardown()


@pytest.fixture(scope="module")
def stored(bigtable_host):
    table = f"top-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, table)
    lists = _lists(3)
    store_tops(lists, table, base_ms=1_700_000_000_000)
    return table, lists


@pytest.mark.emulator
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(("view", "like", "share")),
    st.sampled_from(("minute", "hour", "day")),
    st.integers(0, 3),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, storage.TOP_K),
    st.sampled_from((-100, 0, 899, 900, 5000)),
)
def test_get_top_and_endpoint_answer_the_stored_list(stored, event_type, granularity, i, frac, n, after_end_s):
    """Any instant in a window, any n: the first n of its stored list; final once the window's end
    plus the allowed lateness (600 s) and the final margin (300 s) is past."""
    table, lists = stored
    size = storage.TOP_GRANULARITY_SECONDS[granularity]
    start = BASE + i * size
    at = dt.datetime.fromtimestamp(start + int(frac * size), dt.timezone.utc).isoformat()
    want = lists.get((event_type, granularity, start), [])[:n]
    with TopReader(PROJECT, INSTANCE, table) as reader:
        top = reader.get_top(event_type, granularity, at, n)
    assert top.items == want and top.query.window_start_s == start
    assert top.opened_at_ms == (1_700_000_000_000 if want else None)
    from fastapi.testclient import TestClient

    reader = CachedStatsReader(PROJECT, INSTANCE, table, clock=lambda: start + size + after_end_s)
    with TestClient(create_app(reader)) as client:
        body = client.get(
            "/v1/top", params={"type": event_type, "granularity": granularity, "at": at, "n": str(n)}
        ).json()
    assert body["items"] == [{"video_id": v, "count": c} for v, c in want]
    assert (body["window_start"], body["n"], body["final"]) == (
        dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        n,
        after_end_s >= 900,
    )
    assert body["newest_pane"] == (None if not want else "2023-11-14T22:13:20Z")


@pytest.mark.emulator
def test_cli_top_json_and_errors(stored, capsys, monkeypatch):
    table, lists = stored
    argv = [
        "top",
        "--type",
        "view",
        "--granularity",
        "hour",
        "--at",
        "2024-05-14T01:30:00Z",
        "-n",
        "3",
        "--project",
        PROJECT,
        "--instance",
        INSTANCE,
        "--table",
        table,
    ]
    assert cli.main([*argv, "--json"]) == 0
    body = orjson.loads(capsys.readouterr().out)
    assert [(i["video_id"], i["count"]) for i in body["items"]] == lists[("view", "hour", BASE + 3600)][:3]
    assert body["final"] is True and body["window_end"] == "2024-05-14T02:00:00Z"
    assert cli.main(argv) == 0
    assert lists[("view", "hour", BASE + 3600)][0][0] in capsys.readouterr().out
    assert cli.main([*argv[:-6], "-n", "0", *argv[-6:]]) == 2
    assert "n must be an integer from 1 to 100" in capsys.readouterr().err


@pytest.mark.emulator
def test_endpoint_errors_and_final_cache(bigtable_host):
    from fastapi.testclient import TestClient

    table = f"top-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, table)
    clock = [BASE + 60]
    reader = CachedStatsReader(PROJECT, INSTANCE, table, tail_ttl_s=0, clock=lambda: clock[0])
    params = {"type": "view", "granularity": "minute", "at": "2024-05-14T00:00:30Z"}
    with TestClient(create_app(reader)) as client:
        for bad, message in (
            (dict(params, n="0"), "n must be"),
            (dict(params, granularity="week"), "granularity"),
            ({"type": "view", "granularity": "hour"}, "missing query parameter(s): at"),
            (dict(params, type="VIEW"), "event_type must be"),
        ):
            resp = client.get("/v1/top", params=bad)
            assert resp.status_code == 400 and message in resp.json()["error"]
        assert client.get("/v1/top", params=params).json()["items"] == []
        store_tops({("view", "minute", BASE): [("a", 2)]}, table)
        open_answer = client.get("/v1/top", params=params).json()  # open: read afresh
        assert open_answer["items"] == [{"video_id": "a", "count": 2}] and open_answer["final"] is False
        clock[0] = BASE + 60 + 900  # final: read once, then cached
        assert client.get("/v1/top", params=params).json()["final"] is True
        store_tops({("view", "minute", BASE): [("a", 3)]}, table)
        assert client.get("/v1/top", params=params).json()["items"] == [{"video_id": "a", "count": 2}]
        client.post("/v1/cache/invalidate")
        assert client.get("/v1/top", params=params).json()["items"] == [{"video_id": "a", "count": 3}]
        assert "/v1/top" in client.get("/openapi.json").json()["paths"]
