"""Parquet archive (schemas.parquet_archive) and its compaction (pipelines.compact), on local
folders: generated archives with duplicates, re-stamped copies, odd extra fields, late files
and damaged lines; the DuckDB recipe against the independent polars model."""

from __future__ import annotations

import os
import socket
import tempfile

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.compact import archive_hours, closed_hours, compact
from schemas.archive import ARCHIVE_WINDOW_S, file_name, hour_folder, hour_of_us
from schemas.closed_windows import CLOSE_MARGIN_S
from schemas.event import US_PER_S, _loads, format_time_us, parse_payload
from schemas.parquet_archive import (
    DUCKDB_HOURLY_SQL,
    KNOWN_FIELDS,
    PART_NAME,
    SCHEMA,
    STAGING_FOLDER,
    hour_columns,
    hour_part_path,
    hour_payloads,
    part_sources,
    range_payloads,
    read_part,
)
from viewcounts.commands.reconcile import expected_aggregates, reconcile

T0_US = 1_715_680_800 * US_PER_S  # 2024-05-14T10:00:00Z
NOW_S = 2_000_000_000  # every generated hour is long closed
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_extra_values = st.recursive(
    _json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6
)


@st.composite
def _copy(draw):
    """One archived line: an event object as bytes (unknown fields, several time spellings,
    sometimes a number beyond the float range that only the standard library reads)."""
    time_us = T0_US + draw(st.integers(0, 3 * ARCHIVE_WINDOW_S * US_PER_S - 1))
    obj = {
        "event_id": draw(st.sampled_from(["e0", "e1", "e2", "e3", "é/#4", "e5"])),
        "video_id": draw(st.sampled_from(["v1", "v2", "ü\u2028v"])),
        "event_type": draw(st.sampled_from(["view", "like"])),
    }
    spelling = draw(st.sampled_from(["utc", "offset", "ms"]))
    if spelling == "ms":
        time_us -= time_us % 1000
        obj["event_time"] = time_us // 1000
    elif spelling == "offset":
        obj["event_time"] = format_time_us(time_us + 2 * 3600 * US_PER_S)[:-1] + "+02:00"
    else:
        obj["event_time"] = format_time_us(time_us)
    value = draw(
        st.one_of(st.just("absent"), st.none(), st.integers(-(10**15), 10**15), st.floats(-1e15, 1e15, allow_nan=False))
    )
    if value != "absent":
        obj["value"] = value
    obj.update(
        draw(
            st.dictionaries(
                st.text(min_size=1, max_size=5).filter(lambda k: k not in KNOWN_FIELDS), _extra_values, max_size=3
            )
        )
    )
    line = orjson.dumps(obj)
    if draw(st.booleans()) and draw(st.booleans()):
        line = line[:-1] + b',"huge":1e400}'
    return time_us, line


# A file: (written_ms offset, run id, copies); several files may share a written time.
_files = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["aa01", "bb02"]), st.lists(_copy(), min_size=1, max_size=6)),
    min_size=1,
    max_size=6,
)


def _write_archive(root: str, files, first: int = 0) -> list[tuple[tuple, bytes]]:
    """Write the files (each copy into its event time's hour folder; ``first``: number of the
    first file, unique in names); returns every archived ``((written_ms, file name, line from 1),
    line)``."""
    out = []
    for n, (written, run, copies) in enumerate(files, first):
        written_ms = T0_US // 1000 + 4 * 3_600_000 + written
        by_hour: dict[int, list[bytes]] = {}
        for time_us, line in copies:
            by_hour.setdefault(hour_of_us(time_us), []).append(line)
        for hour_s, lines in by_hour.items():
            folder = hour_folder(root, hour_s)
            os.makedirs(folder, exist_ok=True)
            name = file_name("events", written_ms, run, f"{n:04x}{hour_s:x}")  # unique per folder too
            with open(f"{folder}/{name}", "wb") as f:
                f.write(b"\n".join(lines) + b"\n")
            out += [((written_ms, name, i), line) for i, line in enumerate(lines, 1)]
    return out


def _firsts_per_hour(archived) -> dict[int, list[tuple[tuple, bytes]]]:
    """The model: per hour, the first copy of each event_id in archive order."""
    out: dict[int, dict[str, tuple]] = {}
    for key, line in sorted(archived):
        event = parse_payload(line)[0][0]
        out.setdefault(hour_of_us(event.time_us), {}).setdefault(event.event_id, (key, line))
    return {h: sorted(firsts.values()) for h, firsts in out.items()}


def _same_event(payload: bytes, line: bytes) -> bool:
    """Same fields, microsecond, value and unknown fields (numbers beyond floats by their text)."""
    a, b = parse_payload(payload)[0][0], parse_payload(line)[0][0]
    extras = [{k: v for k, v in _loads(x).items() if k not in KNOWN_FIELDS} for x in (payload, line)]
    return a[:5] == b[:5] and extras[0] == extras[1]


@SETTINGS
@given(files=_files)
def test_compacted_hours_keep_the_first_copy_in_archive_order_and_read_back_exactly(files):
    with tempfile.TemporaryDirectory() as tmp:
        archived = _write_archive(f"{tmp}/archive", files)
        results = compact(f"{tmp}/archive", f"{tmp}/parquet", NOW_S)
        model = _firsts_per_hour(archived)
        assert [r.hour for r in results] == [format_time_us(h * US_PER_S) for h in sorted(model)]
        for hour_s, firsts in model.items():
            got = list(hour_payloads(f"{tmp}/parquet", hour_s))
            assert [key for _, key in got] == [key for key, _ in firsts]
            assert all(_same_event(p, line) for (p, _), (_, line) in zip(got, firsts))
            c = hour_columns(f"{tmp}/parquet", hour_s)
            assert list(zip(c["event_id"], c["video_id"], c["event_type"], c["time_us"], c["value"])) == [
                tuple(parse_payload(p)[0][0][:5]) for p, _ in got
            ]
            assert list(zip(c["written_ms"], c["source_file"], c["line"])) == [key for _, key in got]
            assert pq.ParquetFile(hour_part_path(f"{tmp}/parquet", hour_s)).schema_arrow.remove_metadata() == SCHEMA


@SETTINGS
@given(files=_files, split=st.integers(0, 6))
def test_late_files_merge_into_existing_parts_as_if_compacted_at_once(files, split):
    with tempfile.TemporaryDirectory() as tmp:
        _write_archive(f"{tmp}/all", files)
        _write_archive(f"{tmp}/inc", files[:split])
        compact(f"{tmp}/inc", f"{tmp}/inc-pq", NOW_S)
        _write_archive(f"{tmp}/inc", files[split:], split)  # late arrivals: new files in old hours
        compact(f"{tmp}/inc", f"{tmp}/inc-pq", NOW_S)
        compact(f"{tmp}/all", f"{tmp}/all-pq", NOW_S)
        hours = archive_hours(f"{tmp}/all")
        for hour_s in hours:
            once, merged = (hour_part_path(f"{tmp}/{x}-pq", hour_s) for x in ("all", "inc"))
            assert read_part(merged).equals(read_part(once))
            assert part_sources(merged) == part_sources(once)


def test_a_rerun_rewrites_nothing_and_a_purged_raw_hour_keeps_its_part(tmp_path):
    line = b'{"event_id":"x","video_id":"v","event_type":"view","event_time":"2024-05-14T10:00:00Z"}'
    archived = _write_archive(f"{tmp_path}/archive", [(1, "aa01", [(T0_US, line)])])
    first = compact(f"{tmp_path}/archive", f"{tmp_path}/pq", NOW_S)
    part = hour_part_path(f"{tmp_path}/pq", T0_US // US_PER_S)
    written = os.stat(part).st_mtime_ns
    again = compact(f"{tmp_path}/archive", f"{tmp_path}/pq", NOW_S)
    assert [r.files_merged for r in first] == [1] and [r.files_merged for r in again] == [0]
    assert os.stat(part).st_mtime_ns == written
    for folder, _, names in os.walk(f"{tmp_path}/archive"):
        for name in names:
            os.remove(f"{folder}/{name}")  # the raw archive's retention ran
    assert compact(f"{tmp_path}/archive", f"{tmp_path}/pq", NOW_S) == []
    assert [key for _, key in hour_payloads(f"{tmp_path}/pq", T0_US // US_PER_S)] == [archived[0][0]]


@given(
    hour=st.integers(0, 10**6).map(lambda h: h * ARCHIVE_WINDOW_S),
    lateness=st.integers(0, 7200),
    now_after_end=st.integers(-3 * ARCHIVE_WINDOW_S, 3 * ARCHIVE_WINDOW_S),
)
def test_an_hour_is_compacted_only_once_closed(hour, lateness, now_after_end):
    now = hour + ARCHIVE_WINDOW_S + now_after_end
    assert (closed_hours([hour], now, lateness) == [hour]) == (now_after_end >= lateness + CLOSE_MARGIN_S)


def test_open_hours_wait_and_damaged_lines_are_skipped_and_counted(tmp_path):
    good = b'{"event_id":"a","video_id":"v","event_type":"view","event_time":"2024-05-14T10:00:00Z"}'
    folder = hour_folder(f"{tmp_path}/archive", T0_US // US_PER_S)
    os.makedirs(folder)
    with open(f"{folder}/{file_name('events', T0_US // 1000, 'aa01', '1')}", "wb") as f:
        f.write(good + b"\n{not json\n" + b'{"event_id":"b"}\n\n')
    hour_end = T0_US // US_PER_S + ARCHIVE_WINDOW_S
    assert compact(f"{tmp_path}/archive", f"{tmp_path}/pq", hour_end + 600 + CLOSE_MARGIN_S - 1) == []
    [result] = compact(f"{tmp_path}/archive", f"{tmp_path}/pq", hour_end + 600 + CLOSE_MARGIN_S)
    assert (result.lines_read, result.bad_lines, result.rows) == (3, 2, 1)


def test_a_killed_run_leaves_only_a_staging_file_that_no_reader_sees(tmp_path):
    files = [
        (
            0,
            "aa01",
            [
                (
                    T0_US,
                    b'{"event_id":"a","video_id":"v","event_type":"view","event_time":'
                    b'"2024-05-14T10:00:00Z","value":2}',
                )
            ],
        )
    ]
    _write_archive(f"{tmp_path}/archive", files)
    compact(f"{tmp_path}/archive", f"{tmp_path}/pq", NOW_S)
    os.makedirs(f"{tmp_path}/pq/{STAGING_FOLDER}", exist_ok=True)
    with open(f"{tmp_path}/pq/{STAGING_FOLDER}/dead.parquet", "wb") as f:
        f.write(b"PAR1 half written")
    rows = duckdb.sql(DUCKDB_HOURLY_SQL.format(root=f"{tmp_path}/pq")).fetchall()
    assert [r[4:] for r in rows] == [(1, 1, 2.0, 2.0, 2.0)]
    assert os.listdir(os.path.dirname(hour_part_path(f"{tmp_path}/pq", T0_US // US_PER_S))) == [PART_NAME]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_files)
def test_duckdb_recipe_equals_the_independent_model(files):
    """The README's DuckDB query over the Parquet folders gives the hour aggregates that polars
    computes from the archived events (first copy per event_id in archive order)."""
    with tempfile.TemporaryDirectory() as tmp:
        archived = _write_archive(f"{tmp}/archive", files)
        compact(f"{tmp}/archive", f"{tmp}/pq", NOW_S)
        with open(f"{tmp}/manifest.jsonl", "wb") as f:  # archive order, times as RFC 3339 for polars
            for _, line in sorted(archived):
                e = parse_payload(line)[0][0]
                f.write(
                    orjson.dumps(
                        {
                            "event_id": e.event_id,
                            "video_id": e.video_id,
                            "event_type": e.event_type,
                            "event_time": format_time_us(e.time_us),
                            "value": e.value,
                        }
                    )
                    + b"\n"
                )
        expected = {k: v for k, v in expected_aggregates(f"{tmp}/manifest.jsonl").items() if k[2] == "hour"}
        stored = {}
        for video, etype, day, hour, count, value_count, total, lo, hi in duckdb.sql(
            DUCKDB_HOURLY_SQL.format(root=f"{tmp}/pq")
        ).fetchall():
            start_s = (day.toordinal() - 719163) * 86400 + hour * 3600
            stored[(video, etype, "hour", start_s)] = (count, value_count, float(total or 0.0), lo, hi)
        assert reconcile(expected, stored) == []


def test_range_payloads_reads_the_hours_of_a_range_in_order(tmp_path):
    lines = [
        (
            T0_US + h * ARCHIVE_WINDOW_S * US_PER_S,
            orjson.dumps(
                {
                    "event_id": f"e{h}",
                    "video_id": "v",
                    "event_type": "view",
                    "event_time": format_time_us(T0_US + h * ARCHIVE_WINDOW_S * US_PER_S),
                }
            ),
        )
        for h in range(3)
    ]
    _write_archive(f"{tmp_path}/archive", [(0, "aa01", lines)])
    compact(f"{tmp_path}/archive", f"{tmp_path}/pq", NOW_S)
    start = T0_US // US_PER_S
    got = [
        orjson.loads(p)["event_id"]
        for p, _ in range_payloads(f"{tmp_path}/pq", start + 1, start + 2 * ARCHIVE_WINDOW_S + 1)
    ]
    assert got == ["e0", "e1", "e2"]


@pytest.fixture(scope="module")
def gcs_bucket():
    """A bucket on a local GCS emulator (gcp-storage-emulator, in this process, on a free
    loopback port): ``gs://viewcounts-test``. Beam's GCS client reaches it through
    ``STORAGE_EMULATOR_HOST``; its credentials are set to none (anonymous), which Beam
    otherwise settles on after about 25 s of retries on a machine without credentials."""
    from apache_beam.internal.gcp import auth
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="viewcounts-test")
    server.start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    saved = auth._Credentials._credentials_init, auth._Credentials._credentials
    auth._Credentials._credentials_init, auth._Credentials._credentials = True, None
    try:
        yield "gs://viewcounts-test"
    finally:
        auth._Credentials._credentials_init, auth._Credentials._credentials = saved
        if old is None:
            del os.environ["STORAGE_EMULATOR_HOST"]
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
        server.stop()


def _upload(local_root: str, gs_root: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    for folder, _, names in os.walk(local_root):
        for name in names:
            with (
                open(f"{folder}/{name}", "rb") as src,
                FileSystems.create(f"{gs_root}/{os.path.relpath(f'{folder}/{name}', local_root)}") as dst,
            ):
                dst.write(src.read())


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(files=_files, split=st.integers(0, 6))
def test_compaction_on_gcs_equals_compaction_on_local_folders(gcs_bucket, files, split):
    """The same archive on GCS and on disk, late files included, gives the same parts; the
    part on GCS is replaced by a copy of a staging object, which is then deleted."""
    from apache_beam.io.filesystems import FileSystems

    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.basename(tmp)
        gs = f"{gcs_bucket}/{run}"
        _write_archive(f"{tmp}/archive", files[:split])
        _upload(f"{tmp}/archive", f"{gs}/archive")
        compact(f"{gs}/archive", f"{gs}/parquet", NOW_S)
        _write_archive(f"{tmp}/late", files[split:], split)
        _upload(f"{tmp}/late", f"{gs}/archive")
        compact(f"{gs}/archive", f"{gs}/parquet", NOW_S)
        _write_archive(f"{tmp}/archive", files[split:], split)
        compact(f"{tmp}/archive", f"{tmp}/parquet", NOW_S)
        for hour_s in archive_hours(f"{tmp}/archive"):
            on_gcs, on_disk = hour_part_path(f"{gs}/parquet", hour_s), hour_part_path(f"{tmp}/parquet", hour_s)
            assert read_part(on_gcs).equals(read_part(on_disk))
            assert part_sources(on_gcs) == part_sources(on_disk)
            assert list(hour_payloads(f"{gs}/parquet", hour_s)) == list(hour_payloads(f"{tmp}/parquet", hour_s))
        assert FileSystems.match([f"{gs}/parquet/{STAGING_FOLDER}/*"])[0].metadata_list == []


def test_the_command_compacts_only_the_hours_of_its_range_and_prints_a_summary(tmp_path, capsys):
    import argparse

    from pipelines.compact import add_compact_args, compact_main

    lines = [
        (
            T0_US + h * ARCHIVE_WINDOW_S * US_PER_S,
            orjson.dumps(
                {
                    "event_id": f"e{h}",
                    "video_id": "v",
                    "event_type": "view",
                    "event_time": format_time_us(T0_US + h * ARCHIVE_WINDOW_S * US_PER_S),
                }
            ),
        )
        for h in range(3)
    ]
    _write_archive(f"{tmp_path}/archive", [(0, "aa01", lines)])
    p = argparse.ArgumentParser()
    add_compact_args(p)
    assert (
        compact_main(
            p.parse_args(
                [
                    "--archive-path",
                    f"{tmp_path}/archive",
                    "--parquet-path",
                    f"{tmp_path}/pq",
                    "--start",
                    "2024-05-14T11:30:00Z",
                    "--end",
                    "2024-05-14T12:00:00Z",
                ]
            )
        )
        == 0
    )
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["closed_hours"], summary["rows"], [h["hour"] for h in summary["hours"]]) == (
        1,
        1,
        ["2024-05-14T11:00:00Z"],
    )
    assert sorted(os.listdir(f"{tmp_path}/pq/dt=2024-05-14")) == ["hour=11"]
