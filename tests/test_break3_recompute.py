"""Hostile tests of the recompute's day top-list repair (``pipelines.batch_recompute``:
``RecomputeScope``/``recompute_scope``, ``incomplete_days``; ``TopFromRows(hours, days)``).

A recompute of some hours of a closed day also reads the day's other hours, for the day's
list only: their aggregates are not written. Their unreadable lines must not be written as
dead letters either: those lines are not the recompute's hours (a recompute of one hour
would otherwise write the dead letters of 23 more hours again, and so would its dry run,
every time it is run). The recompute job runs on the FnApiRunner with ``--rows_path`` (the
dry run's shape: no Bigtable). The scope of ranges over day boundaries at any wall clock and
lateness is checked against its rule (holds).

On the emulator: a one-hour recompute of a closed day whose other hours are in Parquet only
(their JSONL deleted by the raw retention) rebuilds the day's list with ``--parquet-path``, and
without it leaves the list alone and reports the day once (the job's check when it runs,
``batch_recompute.incomplete_days``): an hour with no file but a stored hour list had events
that cannot be read (``batch_recompute.unreadable_hours``).
"""

from __future__ import annotations

import base64
import os
import shutil

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.batch_recompute import RecomputeOptions, recompute_scope
from schemas.archive import hour_folder
from schemas.closed_windows import CLOSE_MARGIN_S
from schemas.event import US_PER_S, format_time_us
from tests.test_recompute import H0, _recompute_rows, write_archive
from transforms import metrics

DAY_S = 86400
DAY0_S = H0 - H0 % DAY_S  # 2024-05-14T00:00:00Z


def _dead_letter_lines(folder) -> list[dict]:
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out += [orjson.loads(line) for line in f.read().splitlines() if line.strip()]
    return out


def test_a_recompute_writes_dead_letters_of_its_hours_only(tmp_path):
    archive = str(tmp_path / "archive")
    copies = [
        {
            "event_id": f"e{h}",
            "video_id": "V1",
            "event_type": "view",
            "value": None,
            "t_us": (DAY0_S + h * 3600 + 60) * US_PER_S,
            "written_ms": 1_700_000_000_000,
            "file_name": "f",
            "line": 1,
        }
        for h in range(24)
    ]
    write_archive(archive, copies)
    for h in (3, 10):  # an unreadable line in hour 03:00 (read for the day list only) and in 10:00
        with open(os.path.join(hour_folder(archive, DAY0_S + h * 3600), "hand-made.jsonl"), "wb") as f:
            f.write(b'{"event_id": "bad-%d"\n' % h)
    _rows, result = _recompute_rows(tmp_path, archive, DAY0_S + 10 * 3600, DAY0_S + 11 * 3600)
    payloads = [base64.b64decode(d["payload_base64"]) for d in _dead_letter_lines(tmp_path / "dead-letters")]
    assert payloads == [b'{"event_id": "bad-10"']
    assert metrics.committed_counters(result)["dead_letters_json_error"] == 1


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(-30, 30), st.integers(1, 50), st.integers(0, 3 * DAY_S), st.sampled_from([0, 600, 3600, DAY_S]))
def test_scope_days_are_those_of_the_hours_and_closed_by_their_last_hour(start_h, n_h, now_after_s, lateness_s):
    """Ranges over and at day boundaries (a dry run's scope: ``--rows_path``, no stored lists
    read for ``incomplete_days``): every hour is in exactly one UTC day of ``days`` or
    ``open_days``; a day is closed exactly when its last hour is (hour end + lateness +
    margin), and ``hours_read`` is the hours plus whole closed days, nothing of an open day
    outside the range."""
    start_s = DAY0_S + start_h * 3600
    end_s = start_s + n_h * 3600
    now_s = DAY0_S + now_after_s
    r = RecomputeOptions(
        [
            f"--start={format_time_us(start_s * US_PER_S)}",
            f"--end={format_time_us(end_s * US_PER_S)}",
            "--rows_path=/nonexistent-rows",
        ]
    )
    scope = recompute_scope("/nonexistent", r, lateness_s, now_s)
    hours = list(range(start_s, end_s, 3600))
    assert scope.hours == hours
    days = {h - h % DAY_S for h in hours}
    assert set(scope.days) | set(scope.open_days) == days and not set(scope.days) & set(scope.open_days)
    for d in days:
        closed = d + DAY_S + lateness_s + CLOSE_MARGIN_S <= now_s
        assert (d in scope.days) == closed
        if not closed:
            assert scope.open_days[d] == d + DAY_S + lateness_s + CLOSE_MARGIN_S
    expected_read = set(hours).union(*(range(d, d + DAY_S, 3600) for d in scope.days))
    assert scope.hours_read == sorted(expected_read)


def _t(s: int) -> str:
    return format_time_us(s * US_PER_S)


@pytest.mark.emulator
@pytest.mark.parametrize("with_parquet", [True, False])
def test_a_one_hour_recompute_keeps_the_day_list_whose_other_hours_are_in_parquet_only(
    table, tmp_path, capsys, caplog, with_parquet
):
    """Hour 02 compacted to Parquet and its JSONL gone (the raw archive's 30-day retention), then
    hour 15 recomputed: the day's list still counts hour 02 -- rebuilt with ``--parquet-path``,
    left alone without it and the day reported once (``incomplete_days``: hour 02, whose hour
    list is stored but no file is left) with what to pass."""
    from pipelines.compact import compact
    from tests.test_break2_top_restart import DAY_S as DAY
    from tests.test_break2_top_restart import OLD_RUN
    from tests.test_top_repair import _archive, _cli, _copy, _day_list
    from viewcounts.cli import main

    copies = [_copy(f"a{i}", "A", DAY + 2 * 3600 + i, DAY + 2 * 3600 + 60 + i) for i in range(3)]
    copies += [_copy(f"b{i}", "B", DAY + 15 * 3600 + i, DAY + 15 * 3600 + 60 + i) for i in range(2)]
    archive, parquet = str(tmp_path / "archive"), str(tmp_path / "parquet")
    _archive(archive, copies)
    assert copies[0]["run"] == OLD_RUN
    compact(archive, parquet, now_s=DAY + 40 * 86400, hours=range(DAY, DAY + 86400, 3600))
    shutil.rmtree(hour_folder(archive, DAY + 2 * 3600))  # the raw retention deleted hour 02's JSONL
    assert main(_cli(table, archive, "--start", _t(DAY), "--end", _t(DAY + 86400), "--parquet-path", parquet)) == 0
    assert _day_list(table) == [("A", 3), ("B", 2)]
    capsys.readouterr()
    caplog.clear()
    flags = ("--parquet-path", parquet) if with_parquet else ()
    report = tmp_path / "outcome.json"
    assert (
        main(
            _cli(
                table,
                archive,
                "--start",
                _t(DAY + 15 * 3600),
                "--end",
                _t(DAY + 16 * 3600),
                *flags,
                "--json",
                str(report),
            )
        )
        == 0
    )
    assert _day_list(table) == [("A", 3), ("B", 2)]
    outcome = orjson.loads(report.read_bytes())
    assert (len(outcome["day_lists"]), len(outcome["incomplete_days"])) == ((1, 0) if with_parquet else (0, 1))
    if not with_parquet:
        assert outcome["incomplete_days"] == {_t(DAY): {"unreadable_hours": [_t(DAY + 2 * 3600)]}}, outcome
    # one warning: the command's line from the job's check (the job's own log needs -v)
    said = capsys.readouterr().err + caplog.text
    assert (said.count("incomplete day"), said.count("not rebuilt")) == ((0, 0) if with_parquet else (1, 0)), said
