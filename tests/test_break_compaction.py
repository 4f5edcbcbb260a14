"""Hostile tests of compaction (pipelines.compact, schemas.parquet_archive) found by breaking it:
a compacted hour must hold exactly the events the JSONL recompute reads from the same files
(``schemas.event.parse_payload`` per line, array lines included), the first copy of each id in
archive order."""

from __future__ import annotations

import os
import tempfile

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.compact import compact
from schemas.archive import ARCHIVE_WINDOW_S, file_name, hour_folder
from schemas.event import US_PER_S, format_time_us, parse_payload
from schemas.parquet_archive import hour_columns

H0 = 1_715_680_800  # 2024-05-14T10:00:00Z
NOW_S = 2_000_000_000  # every generated hour is closed

_event = st.builds(
    lambda i, v, t, value: {
        "event_id": f"e{i}",
        "video_id": v,
        "event_type": "view",
        "event_time": format_time_us(H0 * US_PER_S + t),
        **({} if value is None else {"value": value}),
    },
    st.integers(0, 6),
    st.sampled_from(["V1", "é#%"]),
    st.integers(0, ARCHIVE_WINDOW_S * US_PER_S - 1),
    st.one_of(st.none(), st.integers(-(10**15), 10**15)),
)
# a line: one event object, a JSON array of them (a batch line: items judged on their own),
# or damage (not JSON, an object that is no event)
_line = st.one_of(
    _event.map(orjson.dumps),
    st.lists(st.one_of(_event, st.just({"event_id": "broken"})), max_size=4).map(orjson.dumps),
    st.just(b"\xff{not json"),
)
_files = st.lists(st.lists(_line, min_size=1, max_size=5), min_size=1, max_size=4)


def _recompute_view(files) -> dict[str, tuple]:
    """What the JSONL recompute counts of one hour's files: per event_id, the first copy in
    archive order (file, then line, then item), from ``parse_payload`` of each line."""
    out: dict[str, tuple] = {}
    for lines in files:
        for line in lines:
            for ev in parse_payload(line)[0]:
                out.setdefault(ev.event_id, (ev.video_id, ev.event_type, ev.time_us, ev.value))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_files)
def test_a_compacted_hour_holds_what_the_jsonl_recompute_counts_array_lines_included(files):
    with tempfile.TemporaryDirectory() as tmp:
        archive, parquet = os.path.join(tmp, "archive"), os.path.join(tmp, "parquet")
        folder = hour_folder(archive, H0)
        os.makedirs(folder)
        for n, lines in enumerate(files):
            with open(
                os.path.join(folder, file_name("events", 1_800_000_000_000 + n, "0123456789", f"{n:04x}")), "wb"
            ) as f:
                f.write(b"\n".join(lines) + b"\n")
        compact(archive, parquet, NOW_S)
        cols = hour_columns(parquet, H0) or {
            "event_id": [],
            "video_id": [],
            "event_type": [],
            "time_us": [],
            "value": [],
        }
        got = {
            e: (v, t, us, val)
            for e, v, t, us, val in zip(
                cols["event_id"], cols["video_id"], cols["event_type"], cols["time_us"], cols["value"]
            )
        }
        assert len(got) == len(cols["event_id"])  # one row per distinct id
        assert got == _recompute_view(files)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start_s=st.integers(0, 4_000_000_000),
    back_s=st.integers(0, 10**7),
    bad=st.sampled_from(["garbage", "2024-05-14 10:00:00", "2024-05-14T10:00:00", ""]),
    which=st.integers(0, 2),
)
def test_the_command_refuses_a_reversed_or_unreadable_range_with_a_message(start_s, back_s, bad, which, capsys):
    """A reversed (or empty) range, an unreadable instant or one bound alone: exit 2 and a
    message, never a traceback nor a silent run over no hour."""
    from viewcounts.cli import main

    start, end = format_time_us(start_s * US_PER_S), format_time_us((start_s - back_s) * US_PER_S)
    if which == 1:
        start = bad or start
    elif which == 2:
        end = bad
    flags = ["--start", start] + (["--end", end] if end else [])
    with tempfile.TemporaryDirectory() as tmp:
        assert main(["compact", "--archive-path", tmp, "--parquet-path", os.path.join(tmp, "p"), *flags]) == 2
    assert capsys.readouterr().err.startswith("error: ")
