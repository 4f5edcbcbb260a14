"""Storage on the real Bigtable emulator: overwrite semantics, layout limits, get_stats (SPEC 3, 6)."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.stats import QueryError, StatsReader
from schemas import storage
from schemas.storage import Aggregate, cell_timestamp_us, wall_clock_ms
from transforms.aggregate import AggregateRow
from transforms.bigtable_sink import WriteAggregates, row_from_json
from transforms.enrich import EnrichedRow

pytestmark = pytest.mark.emulator
H = 1715680800  # 2024-05-14T10:00:00Z


def _row(agg, window_start_s=H, granularity="minute", video_id="V1", ts_us=None, title=None):
    return EnrichedRow(
        AggregateRow(
            video_id,
            "view",
            granularity,
            window_start_s,
            agg,
            0,
            ts_us if ts_us is not None else cell_timestamp_us(wall_clock_ms(), agg.count),
        ),
        title,
        None,
    )


def _write(table, rows):
    sink = WriteAggregates(*table)
    sink.setup()
    sink.start_bundle()
    out = [d for r in rows for d in sink.process([r])]
    out += [wv.value for wv in sink.finish_bundle()]
    sink.teardown()
    return out


def _cells(table):
    with StatsReader(*table) as r:
        return {(c.video_id, c.granularity, c.window_start_s): c for c in r.all_cells()}


def test_refired_pane_landing_late_does_not_win(table):
    base = wall_clock_ms()
    early, later = cell_timestamp_us(base, 3), cell_timestamp_us(base, 5)
    assert later > early and early % 1000 == 0
    _write(table, [_row(Aggregate(5, 0, 0.0, None, None), ts_us=later)])
    _write(table, [_row(Aggregate(3, 0, 0.0, None, None), ts_us=early)])  # the older pane arrives last
    assert _cells(table)[("V1", "minute", H)].aggregate.count == 5


def test_retried_write_leaves_the_same_value(table):
    row = _row(Aggregate(7, 2, 30.0, 10.0, 20.0))
    for _ in range(3):
        assert _write(table, [row]) == []
    cell = _cells(table)[("V1", "minute", H)]
    assert cell.aggregate == Aggregate(7, 2, 30.0, 10.0, 20.0)


def test_two_panes_in_one_bundle_write_only_the_newest(table):
    old, new = _row(Aggregate(1, 0, 0.0, None, None)), _row(Aggregate(2, 0, 0.0, None, None))
    _write(table, [new, old])
    assert _cells(table)[("V1", "minute", H)].aggregate.count == 2


def test_entities_that_differ_by_delimiters_never_share_rows(table):
    ids = ["A#B", "A", "A%23B", "A#B#m", "A%", "%", "#"]
    _write(table, [_row(Aggregate(i + 1, 0, 0.0, None, None), video_id=v) for i, v in enumerate(ids)])
    cells = _cells(table)
    assert {v: cells[(v, "minute", H)].aggregate.count for v in ids} == {v: i + 1 for i, v in enumerate(ids)}


def test_longest_keys_fit_bigtable_limits(table):
    vid = "#" * 256  # escapes to 768 bytes
    assert len(storage.row_key(vid, "v" * 64, "minute", H)) <= storage.MAX_KEY_BYTES
    _write(table, [_row(Aggregate(1, 0, 0.0, None, None), video_id=vid)])
    assert _cells(table)[(vid, "minute", H)].aggregate.count == 1


def test_many_cells_split_into_requests_under_the_mutation_limit(table):
    sink = WriteAggregates(*table, max_mutations_per_request=500)
    rows = [_row(Aggregate(1, 0, 0.0, None, None), window_start_s=H + 60 * i) for i in range(1440)]
    sink.setup()
    per_request = []
    real_mutate_rows = sink._mutate_rows

    def counting_mutate_rows(table, request, timeout_s):
        per_request.append(sum(len(e.mutations) for e in request.entries))
        return real_mutate_rows(table, request, timeout_s)

    sink._mutate_rows = counting_mutate_rows
    sink.start_bundle()
    dead = [d for r in rows for d in sink.process([r])] + [wv.value for wv in sink.finish_bundle()]
    sink.teardown()
    assert dead == [] and len(_cells(table)) == 1440
    assert per_request == [500, 500, 440]  # one row (a UTC day) split over requests, none over the cap
    with pytest.raises(ValueError):
        WriteAggregates(*table, max_mutations_per_request=100_001)


# a row of the request is refused by the server when its cell timestamp is not whole
# milliseconds (the emulator answers that entry alone with a non-OK status, INTERNAL); a
# timestamp that is not an integer cannot go in the request at all
_ROW_KINDS = ("ok", "refused by the server", "not encodable", "not buildable")


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    panes=st.lists(
        st.tuples(
            st.sampled_from(["V1", "A#B", "%", "w" * 300]),
            st.sampled_from(["minute", "hour"]),
            st.integers(0, 3),
            st.sampled_from(_ROW_KINDS),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_each_bigtable_row_is_written_or_dead_lettered_on_its_own_status(bigtable_host, panes):
    """One bundle of generated panes (several per cell, several cells per Bigtable row, one
    request): the newest pane of each cell is what the sink sends, one entry per row; a row
    whose entry the server refuses, or whose cell cannot be encoded or put in the request
    (a float timestamp, after other cells of its row went in), becomes ``write_failed``
    dead letters (every newest pane of that row, once) and holds up no other row of the
    request: every other cell stores its newest pane. (A later request of the same bundle
    after the budget is spent on a refused row is dead-lettered at once: the budget rule.)"""
    from viewcounts.local.provision import create_table

    table = ("test-project", "test-instance", f"t-{uuid.uuid4().hex[:10]}")
    create_table(*table)
    base, rows, newest = wall_clock_ms(), [], {}
    for i, (video, gran, w, kind) in enumerate(panes):  # pane i is newer than every pane before it
        start = H + w * (60 if gran == "minute" else 3600)
        agg = Aggregate(i + 1, 1, float("inf") if kind == "not encodable" else 1.0, 1.0, 1.0)
        ts = cell_timestamp_us(base, i + 1) + {"refused by the server": 1, "not buildable": 0.5}.get(kind, 0)
        rows.append(_row(agg, start, gran, video, ts_us=ts))
        newest[(video, gran, start)] = (i + 1, kind)
    bad_rows = {(v, g) for (v, g, _), (_, kind) in newest.items() if kind != "ok"}  # one Bigtable row each
    sink = WriteAggregates(*table, write_budget_s=0.5, attempt_timeout_s=0.5)
    sink.setup()
    sink.start_bundle()
    dead = [tv.value for tv in sink.process(rows)] + [wv.value for wv in sink.finish_bundle()]
    sink.teardown()
    lettered = [row_from_json(d.payload).row for d in dead]
    assert {d.reason for d in dead} <= {"write_failed"}
    assert sorted((r.video_id, r.granularity, r.window_start_s, r.aggregate.count) for r in lettered) == sorted(
        (*cell, count) for cell, (count, _) in newest.items() if cell[:2] in bad_rows
    )
    stored = {cell: c.aggregate.count for cell, c in _cells(table).items()}
    assert {cell: n for cell, n in stored.items() if cell[:2] not in bad_rows} == {
        cell: count for cell, (count, _) in newest.items() if cell[:2] not in bad_rows
    }
    # the emulator applies a refused entry's cells up to the refused one (Bigtable: none of them)
    assert all(newest[cell][0] == n for cell, n in stored.items() if cell[:2] in bad_rows)


def test_failed_writes_become_write_failed_dead_letters(bigtable_host):
    # a table that does not exist: every attempt fails, nothing is raised
    dead = _write(("test-project", "test-instance", "no-such-table"), [_row(Aggregate(1, 0, 0.0, None, None))])
    assert [d.reason for d in dead] == ["write_failed"]
    assert b'"count":1' in dead[0].payload


@pytest.fixture
def filled(table):
    rows = [
        _row(Aggregate(2, 2, 30.0, 10.0, 20.0), H),
        _row(Aggregate(1, 1, 90.0, 90.0, 90.0), H + 60),
        _row(Aggregate(1, 0, 0.0, None, None), H + 180),
        _row(Aggregate(4, 3, 120.0, 10.0, 90.0), H, "hour"),
        _row(Aggregate(2, 2, 4.0, 1.0, 3.0), H + 3600, "hour"),
        _row(Aggregate(5, 5, 5.0, 1.0, 1.0), H - 86400 * 20, "hour"),  # previous month row? same month
    ]
    _write(table, rows)
    with StatsReader(*table) as reader:
        yield reader


def test_minute_series_includes_empty_buckets(filled):
    s = filled.get_stats("V1", "view", "count", "2024-05-14T10:00:00Z", "2024-05-14T10:05:00Z", "minute")
    assert [b.aggregate.count for b in s.buckets] == [2, 1, 0, 1, 0]
    assert s.value == 4
    assert s.buckets[2].aggregate.avg is None and s.buckets[2].aggregate.min is None


def test_avg_is_recombined_from_sums(filled):
    s = filled.get_stats("V1", "view", "avg", "2024-05-14T10:00:00Z", "2024-05-14T12:00:00Z", "hour")
    assert s.value == pytest.approx(124.0 / 5)


def test_day_and_total_from_hours(filled):
    day = filled.get_stats("V1", "view", "sum", "2024-05-14T00:00:00Z", "2024-05-15T00:00:00Z", "day")
    assert len(day.buckets) == 1 and day.value == 124.0
    total = filled.get_stats("V1", "view", "count", "2024-04-01T00:00:00Z", "2024-06-01T00:00:00Z", "total")
    assert total.buckets == [] and total.value == 11


def test_empty_range_and_unknown_entity(filled):
    s = filled.get_stats("V1", "view", "avg", "2024-05-14T10:00:00Z", "2024-05-14T10:00:00Z", "minute")
    assert s.buckets == [] and s.combined.count == 0 and s.value is None
    s = filled.get_stats("nobody", "view", "count", "2024-05-14T10:00:00Z", "2024-05-14T11:00:00Z", "minute")
    assert s.value == 0 and len(s.buckets) == 60


def test_local_day_across_dst_has_23_or_25_hourly_buckets(filled):
    spring = filled.get_stats(
        "V1", "view", "count", "2024-03-10T00:00:00-05:00", "2024-03-11T00:00:00-04:00", "hour", tz="America/New_York"
    )
    autumn = filled.get_stats(
        "V1", "view", "count", "2024-11-03T00:00:00-04:00", "2024-11-04T00:00:00-05:00", "hour", tz="America/New_York"
    )
    assert len(spring.buckets) == 23 and len(autumn.buckets) == 25
    assert spring.buckets[0].start.utcoffset().total_seconds() == -5 * 3600


@pytest.mark.parametrize(
    "args",
    [
        ("count", "2024-05-14T10:00:30Z", "2024-05-14T10:01:00Z", "minute"),
        ("count", "2024-05-14T10:30:00Z", "2024-05-14T11:00:00Z", "hour"),
        ("count", "2024-05-14T01:00:00Z", "2024-05-15T00:00:00Z", "day"),
        ("count", "2024-05-14T10:30:00Z", "2024-05-14T12:00:00Z", "total"),
        ("median", "2024-05-14T10:00:00Z", "2024-05-14T11:00:00Z", "hour"),
        ("count", "2024-05-14T10:00:00Z", "2024-05-14T11:00:00Z", "week"),
        ("count", "2024-05-14T11:00:00Z", "2024-05-14T10:00:00Z", "hour"),
        ("count", "2024-05-14T10:00:00", "2024-05-14T11:00:00Z", "hour"),
    ],
)
def test_misaligned_or_bad_queries_are_refused(filled, args):
    with pytest.raises(QueryError):
        filled.get_stats("V1", "view", *args)


def test_redrive_rewrites_failed_panes_with_their_own_timestamps(table, tmp_path):
    from pipelines import redrive
    from schemas.archive import DeadLetter
    from transforms.bigtable_sink import row_to_json

    older, newer = cell_timestamp_us(wall_clock_ms(), 1), cell_timestamp_us(wall_clock_ms(), 2)
    failed_old = _row(Aggregate(1, 0, 0.0, None, None), H, ts_us=older)  # lost pane of window H
    failed_other = _row(Aggregate(9, 0, 0.0, None, None), H + 60, ts_us=older)  # lost pane of window H+60
    _write(table, [_row(Aggregate(2, 0, 0.0, None, None), H, ts_us=newer)])  # a newer pane of H landed
    letters = [DeadLetter(row_to_json(r), "write_failed", "x", 1) for r in (failed_old, failed_other)]
    letters.append(DeadLetter(b"{}", "json_error", "not redriven", 1))
    path = tmp_path / "dead.jsonl"
    path.write_bytes(b"".join(d.to_json() + b"\n" for d in letters))
    args = [
        f"--dead_letter_glob={path}",
        f"--bigtable_project={table[0]}",
        f"--bigtable_instance={table[1]}",
        f"--bigtable_table={table[2]}",
        "--runner=DirectRunner",
    ]
    for _ in range(2):  # a second redrive changes nothing
        redrive.build_pipeline(args).run().wait_until_finish()
        cells = _cells(table)
        assert cells[("V1", "minute", H)].aggregate.count == 2  # the newer pane still wins
        assert cells[("V1", "minute", H + 60)].aggregate.count == 9


def test_redrive_keeps_rows_that_fail_again_in_a_folder_beside_the_glob_by_default(tmp_path, monkeypatch):
    """Without --dead_letter_path, a row the redrive cannot write (Bigtable still down) becomes
    a write_failed dead letter in ``<folder>-redrive``, not nothing; no such folder: refused."""
    from pipelines import redrive
    from schemas.archive import DeadLetter, local_lines
    from transforms.bigtable_sink import row_from_json, row_to_json

    assert redrive.default_redrive_path("gs://b/dead-letters/**") == "gs://b/dead-letters-redrive"
    assert redrive.default_redrive_path("/d/dl/2024/*/x.jsonl") == "/d/dl/2024-redrive"
    for glob_without_folder in ("gs://b/*.jsonl", "gs://b/x.jsonl", "*.jsonl"):
        assert redrive.default_redrive_path(glob_without_folder) is None
        with pytest.raises(ValueError, match="--dead_letter_path"):
            redrive.build_pipeline([f"--dead_letter_glob={glob_without_folder}"])
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", "127.0.0.1:9")  # nothing listens: every write fails
    failed = _row(Aggregate(7, 0, 0.0, None, None), H, ts_us=cell_timestamp_us(wall_clock_ms(), 7))
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "x.jsonl").write_bytes(DeadLetter(row_to_json(failed), "write_failed", "x", 1).to_json() + b"\n")
    redrive.build_pipeline(
        [
            f"--dead_letter_glob={tmp_path}/dl/*.jsonl",
            "--runner=DirectRunner",
            "--bigtable_project=p",
            "--bigtable_instance=i",
            "--bigtable_table=t",
            "--bigtable_write_budget_s=1",
            "--bigtable_attempt_timeout_s=0.5",
        ]
    ).run().wait_until_finish()
    again = [DeadLetter.from_json(line) for line in local_lines(str(tmp_path / "dl-redrive"))]
    assert [(d.reason, row_from_json(d.payload)) for d in again] == [("write_failed", failed)]


def test_job_modules_leave_other_pipelines_options_alone():
    """Beam parses every registered options class on every view: no job may make a flag
    argparse-required, or merely importing it breaks every other pipeline in the process."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    import pipelines.batch_recompute  # noqa: F401
    import pipelines.redrive  # noqa: F401
    import pipelines.streaming  # noqa: F401

    assert PipelineOptions(["--runner=DirectRunner"]).view_as(StandardOptions).runner == "DirectRunner"
    with pytest.raises(ValueError):
        pipelines.redrive.build_pipeline([])
    with pytest.raises(ValueError):
        pipelines.batch_recompute.build_pipeline(["--archive_path=/tmp/x"])
