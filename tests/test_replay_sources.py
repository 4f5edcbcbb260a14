"""``viewcounts replay`` sources (viewcounts.commands.replay): files, globs, folders, Parquet parts and
dead-letter files, in any mix; time-mode defaults; publishing odd JSON through the emulator."""

from __future__ import annotations

import argparse
import os
import tempfile

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.compact import compact
from schemas.archive import DeadLetter, file_name, hour_folder, hour_of_us
from schemas.event import (
    JSON_ERROR,
    NOT_AN_OBJECT,
    TOO_LATE,
    US_PER_S,
    WRITE_FAILED,
    _loads,
    format_time_us,
    parse_event_time,
    parse_payload,
)
from schemas.parquet_archive import hour_part_path
from tests.test_parquet_archive import _upload, gcs_bucket  # noqa: F401 (a fixture)
from viewcounts.commands import replay

T0_US = 1_715_680_800 * US_PER_S  # 2024-05-14T10:00:00Z
NOW_S = 2_000_000_000


@st.composite
def _event(draw, n: int) -> dict:
    """Event ``n`` (distinct ids), as Parquet gives it back: UTC time, float or no value."""
    e = {
        "event_id": f"e{n}",
        "video_id": draw(st.sampled_from(["v1", "ü v2"])),
        "event_type": "view",
        "event_time": format_time_us(T0_US + draw(st.integers(0, 2 * 3600 * US_PER_S))),
    }
    value = draw(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)))
    if value is not None:
        e["value"] = value
    if draw(st.booleans()):
        e["extra"] = draw(st.lists(st.integers(-5, 5), max_size=3))
    return e


# A source file: its kind and how the replay names it (the file, its folder, or a glob).
_files = st.lists(
    st.tuples(
        st.sampled_from(["events", "dead_letters", "parquet"]),
        st.sampled_from(["file", "folder", "glob"]),
        st.integers(1, 5),
    ),
    min_size=1,
    max_size=5,
)


def _write(tmp: str, n: int, kind: str, events: list[dict], data) -> str:
    """Write one source of ``kind`` holding ``events`` (plus what replay must skip); returns its
    folder. Dead letters hold each event alone or in a batch, beside skipped ones."""
    folder = f"{tmp}/src{n}"
    os.makedirs(folder)
    if kind == "events":
        with open(f"{folder}/events.jsonl", "wb") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in events) + b"\n")
    elif kind == "dead_letters":
        skipped = [
            DeadLetter(b"{not json", JSON_ERROR, "", 0),
            DeadLetter(b"5", NOT_AN_OBJECT, "", 0),
            DeadLetter(orjson.dumps(events[0]), WRITE_FAILED, "an aggregate, not an event", 0),
        ]
        letters = (
            [DeadLetter(orjson.dumps(events), TOO_LATE, "batch", 1)]
            if data.draw(st.booleans())
            else [DeadLetter(orjson.dumps(e), TOO_LATE, "late", 1) for e in events]
        )
        for letter in skipped:  # anywhere between the events' letters
            letters.insert(data.draw(st.integers(0, len(letters))), letter)
        with open(f"{folder}/dead.jsonl", "wb") as f:
            f.write(b"".join(d.to_json() + b"\n" for d in letters))
    else:
        archive = f"{tmp}/archive{n}"
        for i, e in enumerate(events):  # one file per event, in order of writing: Parquet keeps that order
            hour = hour_folder(archive, hour_of_us(T0_US))
            os.makedirs(hour, exist_ok=True)
            line = dict(e, event_time=format_time_us(T0_US + 1))  # one hour: parts are read hour by hour
            events[i] = line
            with open(f"{hour}/{file_name('events', 1_000 + i, 'aa01', f'{i:04x}')}", "wb") as f:
                f.write(orjson.dumps(line) + b"\n")
        compact(archive, folder, NOW_S)
        os.makedirs(f"{folder}/_staging", exist_ok=True)
        with open(f"{folder}/_staging/half.parquet", "wb") as f:
            f.write(b"not a part")  # a killed compaction's leftover: not read from a folder
    return folder


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_files, data=st.data())
def test_any_mix_of_sources_replays_their_events_in_order(files, data):
    """Whatever the mix of event files, dead-letter files and Parquet parts, named as files,
    folders or globs, the replay reads exactly their events, source after source; in real
    time mode the plan is that union ordered by event time (ties in source order)."""
    with tempfile.TemporaryDirectory() as tmp:
        expected, sources, n_events = [], [], 0
        for n, (kind, naming, count) in enumerate(files):
            events = [data.draw(_event(n_events + i)) for i in range(count)]
            n_events += count
            folder = _write(tmp, n, kind, events, data)
            expected += events
            [name] = [x for x in os.listdir(folder) if not x.startswith("_")]
            path = f"{folder}/{name}"
            if kind == "parquet":  # a Parquet root: the part of its one hour
                path = hour_part_path(folder, T0_US // US_PER_S)
            sources.append(
                {
                    "file": path,
                    "folder": folder,
                    "glob": f"{folder}/dt=*/*/*.parquet" if kind == "parquet" else f"{folder}/*.jsonl",
                }[naming]
            )
        got = replay.read_source(sources, None)
        assert got == expected
        planned = replay.plan_events(got, replay.ReplayPlan(time_mode="real"), 0)
        assert planned == sorted(expected, key=lambda e: parse_event_time(e["event_time"]))


def test_folders_are_read_recursively_without_markers_or_staging(tmp_path):
    e = {"event_id": "a", "video_id": "v", "event_type": "view", "event_time": "2024-05-14T10:00:00Z"}
    for sub, name in (("2024/05/14/10", "events-1.jsonl"), ("_restarts", "m.jsonl"), ("x", "notes.txt")):
        os.makedirs(tmp_path / sub, exist_ok=True)
        (tmp_path / sub / name).write_bytes(orjson.dumps(dict(e, event_id=name)) + b"\n")
    assert [x["event_id"] for x in replay.read_source([str(tmp_path)], None)] == ["events-1.jsonl"]


def test_a_source_with_no_file_is_an_error(tmp_path):
    for spec in (str(tmp_path / "missing.jsonl"), str(tmp_path / "*.jsonl"), str(tmp_path)):
        with pytest.raises(FileNotFoundError):
            replay.read_source([spec], None)


@pytest.mark.parametrize(
    "sources, mode", [(["flights"], "shift"), (["a.jsonl"], "real"), (["flights", "a.jsonl"], "real")]
)
def test_time_mode_defaults_to_real_for_files_and_shift_for_flights(sources, mode):
    p = argparse.ArgumentParser()
    replay.add_replay_args(p)
    assert replay.plan_of_args(p.parse_args(["--source", *sources])).time_mode == mode
    assert replay.plan_of_args(p.parse_args(["--source", *sources, "--time-mode", "shift"])).time_mode == "shift"


def test_limit_stops_reading_early(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"event_id":"1"}\n{"event_id":"2"}\n')
    (tmp_path / "b.jsonl").write_bytes(b"not read")
    assert replay.read_source([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], 2) == [
        {"event_id": "1"},
        {"event_id": "2"},
    ]


@pytest.mark.emulator
def test_replay_of_an_archive_folder_publishes_odd_json_verbatim(pubsub_host, tmp_path):
    """Numbers beyond the float range and lone surrogates in unknown fields reach Pub/Sub as
    archived (the streaming job reads them the same way), from the command line."""
    from google.cloud import pubsub_v1

    from viewcounts.cli import main
    from viewcounts.local.provision import create_topic_and_subscription

    lines = [
        b'{"event_id":"a","video_id":"v","event_type":"view","event_time":"2024-05-14T10:00:00Z","huge":1e400}',
        b'{"event_id":"b","video_id":"v","event_type":"view","event_time":"2024-05-14T10:00:01Z","u":"\\ud800"}',
    ]
    folder = hour_folder(f"{tmp_path}/archive", T0_US // US_PER_S)
    os.makedirs(folder)
    with open(f"{folder}/events-1.jsonl", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    create_topic_and_subscription("test-project", "replay-src-topic", "replay-src-sub")
    manifest = tmp_path / "manifest.jsonl"
    assert (
        main(
            [
                "replay",
                "--source",
                f"{tmp_path}/archive",
                "--project",
                "test-project",
                "--topic",
                "replay-src-topic",
                "--events-per-message",
                "1",
                "--manifest",
                str(manifest),
            ]
        )
        == 0
    )
    received = []
    with pubsub_v1.SubscriberClient() as sub:
        path = sub.subscription_path("test-project", "replay-src-sub")
        while len(received) < 2:
            resp = sub.pull(subscription=path, max_messages=10, timeout=30)
            received += [m.message.data for m in resp.received_messages]
            sub.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
    assert sorted(_loads(d)["event_id"] for d in received) == ["a", "b"]
    assert sorted(map(_loads, received), key=lambda e: e["event_id"]) == [_loads(x) for x in lines]
    assert all(parse_payload(d)[0] for d in received)  # valid events: times kept (real mode)
    assert [_loads(x) for x in manifest.read_bytes().splitlines()] == [_loads(x) for x in lines]


def test_gcs_folders_globs_and_parquet_replay_like_local_ones(gcs_bucket, tmp_path):  # noqa: F811 (the fixture)
    """An archive, a dead-letter file and a Parquet root copied to GCS read as they do on disk."""
    events = [
        {"event_id": f"e{i}", "video_id": "v", "event_type": "view", "event_time": format_time_us(T0_US + i)}
        for i in range(4)
    ]
    local = str(tmp_path / "src")
    os.makedirs(f"{local}/dead")
    with open(f"{local}/dead/dead.jsonl", "wb") as f:
        f.write(b"".join(DeadLetter(orjson.dumps(e), TOO_LATE, "", 0).to_json() + b"\n" for e in events[:2]))
    archive = hour_folder(f"{local}/archive", T0_US // US_PER_S)
    os.makedirs(archive)
    with open(f"{archive}/{file_name('events', 1, 'aa01', '1')}", "wb") as f:
        f.write(b"".join(orjson.dumps(e) + b"\n" for e in events[2:]))
    compact(f"{local}/archive", f"{local}/parquet", NOW_S)
    gs = f"{gcs_bucket}/{tmp_path.name}/src"
    _upload(local, gs)
    for spec in ("", "/archive", "/parquet", "/dead/dead.jsonl"):
        assert replay.read_source([gs + spec], None) == replay.read_source([local + spec], None)
    assert replay.read_source([f"{gs}/**/*.jsonl"], None) == events[2:] + events[:2]
