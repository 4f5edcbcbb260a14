"""Hostile tests of ``viewcounts recompute`` found by breaking it, on the Bigtable emulator:
the dry run's audit must count every stored aggregate of its hours (entities with no event in
the archive included) and compare every row the job would write with what it would overwrite;
the job must write no window outside the hours it was asked for (nor into an open hour without
``--force``); and its sums must not depend on how the work was split."""

from __future__ import annotations

import math
import os
import random
import time
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.archive import file_name, hour_folder
from schemas.event import US_PER_S, Event, format_time_us
from schemas.storage import Aggregate
from tests.test_recompute_runs import _args, _stored
from transforms.batch_count import MergeMinutePartials, fold_minutes, rows_of
from transforms.validate import shard_of
from viewcounts.bench.queries import store_cells
from viewcounts.cli import main

H0 = 1_715_680_800  # 2024-05-14T10:00:00Z
_ENTITY = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6)


def _archive(root: str, hour_s: int, events: list[dict]) -> None:
    """One archive file in ``hour_s``'s folder holding ``events`` (whatever their times)."""
    folder = hour_folder(root, hour_s)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, file_name("events", 1_800_000_000_000, "0123456789", "a1")), "ab") as f:
        f.write(b"".join(orjson.dumps(e) + b"\n" for e in events))


def _event(event_id: str, video_id: str, time_us: int) -> dict:
    return {"event_id": event_id, "video_id": video_id, "event_type": "view", "event_time": format_time_us(time_us)}


def _fresh_table(bigtable_host) -> tuple:
    """A new table per hypothesis example (the ``table`` fixture is one per test)."""
    from viewcounts.local.provision import create_table

    name = f"brk-{uuid.uuid4().hex[:10]}"
    create_table("test-project", "test-instance", name)
    return "test-project", "test-instance", name


@pytest.mark.emulator
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(stored_only=st.lists(_ENTITY, min_size=1, max_size=3, unique=True), minute=st.integers(0, 59))
def test_the_dry_run_counts_stored_aggregates_of_entities_the_archive_has_no_event_of(
    bigtable_host, tmp_path_factory, stored_only, minute
):
    table = _fresh_table(bigtable_host)
    tmp = tmp_path_factory.mktemp("a")
    archive = str(tmp / "archive")
    _archive(archive, H0, [_event("e1", "in-archive", (H0 + 60 * minute) * US_PER_S)])
    stored_only = [v for v in stored_only if v != "in-archive"]
    cells = {}
    for v in stored_only:  # streaming stored them; the recompute has no row for them and leaves them
        cells[(v, "view", "minute", H0 + 60 * minute)] = Aggregate(3, 0, 0.0, None, None)
        cells[(v, "view", "hour", H0)] = Aggregate(3, 0, 0.0, None, None)
    store_cells(cells, *table)
    report = tmp / "audit.json"
    assert main(_args(table, archive, H0, H0 + 3600, "--dry-run", "--json", str(report))) == 0
    (hour,) = orjson.loads(report.read_bytes())["audit"]
    assert hour["stored_only"] == 2 * len(stored_only)


@pytest.mark.emulator
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(offset_s=st.one_of(st.integers(3600, 30 * 86400), st.integers(-30 * 86400, -1), st.just(None)))
def test_the_job_writes_no_window_outside_the_hours_asked_for(bigtable_host, tmp_path_factory, offset_s):
    table = _fresh_table(bigtable_host)
    tmp = tmp_path_factory.mktemp("a")
    archive = str(tmp / "archive")
    # a misplaced line (a file copied into the wrong folder): its event time is another hour,
    # later in the archive's past, or now (an hour the streaming job may still fire)
    stray_s = int(time.time()) if offset_s is None else H0 + offset_s
    _archive(archive, H0, [_event("e1", "V", (H0 + 5) * US_PER_S), _event("stray", "W", stray_s * US_PER_S)])
    assert main(_args(table, archive, H0, H0 + 3600)) == 0
    stored = _stored(table)
    assert sorted(k for k in stored if not H0 <= k[3] < H0 + 3600) == []
    assert stored[("V", "view", "hour", H0)][0] == 1  # the hour's own event counts


def _folded(events: list[Event], shards: int) -> dict[tuple, tuple]:
    """The recompute's rows of ``events`` (distinct ids) split over ``shards`` dedup shards:
    ``DedupShard``'s fold per shard, then ``MergeMinutePartials`` per entity (transforms.batch_count)."""
    combine = MergeMinutePartials()
    per_entity: dict[tuple, dict] = {}
    for shard in range(shards):
        best = {
            e.event_id: ((0, "f", i), e.video_id, e.event_type, e.time_us, e.value)
            for i, e in enumerate(events)
            if shard_of(e.event_id, shards) == shard
        }
        for key, partial in fold_minutes(best).items():
            per_entity[key] = combine.add_input(per_entity.get(key, combine.create_accumulator()), partial)
    return {
        (r.video_id, r.event_type, r.granularity, r.window_start_s): tuple(r.aggregate)
        for (v, t), acc in per_entity.items()
        for r in rows_of(v, t, acc, 0)
    }


@pytest.mark.xfail(
    strict=True,
    reason="sums are plain float additions in whatever order shards, minutes and "
    "partials meet (schemas.storage.merge, transforms.aggregate): with values near the 1e15 bound "
    "that cancel, the same archive gives sums that differ far beyond the 1e-9 of docs/contract.md, Aggregates, between dedup-shard "
    "counts (and between streaming and batch, so the dry-run audit reports equal windows as changed)",
)
@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.sampled_from([1e15, -1e15, 999_999_999_999_999.9]), st.floats(-1e3, 1e3, allow_nan=False)),
        min_size=2,
        max_size=12,
    ),
    shards=st.integers(2, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_hour_sum_is_the_exact_sum_whatever_the_shards(values, shards, seed):
    rnd = random.Random(seed)
    events = [Event(f"e{i}", "V", "watch", (H0 + rnd.randrange(3600)) * US_PER_S, v, b"") for i, v in enumerate(values)]
    exact = math.fsum(values)
    for got in (_folded(events, 1), _folded(events, shards)):
        hour_sum = got[("V", "watch", "hour", H0)][2]
        assert math.isclose(hour_sum, exact, rel_tol=1e-9, abs_tol=1e-6), (hour_sum, exact)
