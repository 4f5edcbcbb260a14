"""``viewcounts recompute`` and day top lists (README "Restarts without state", "Top entities"),
on the Bigtable emulator:

* after a stateless restart, ``--after-restarts`` while the day is still open recomputes the
  restart's hour, leaves the day's list as streaming stored it and reports the day with the
  time after which to run again; run again after it, it rebuilds the day's list from the whole
  day's archive without rewriting the other hours' aggregates;
* a range inside a closed day reads the day's other hours with it: a copy re-stamped into the
  range counts where its first copy is (as a recompute of the whole day counts it), the dry
  run reads the same and so agrees with what the recompute wrote, and the command says how
  many hours it read for the day lists.
"""

from __future__ import annotations

import argparse
import os

import orjson
import pytest

from query.stats import StatsReader
from schemas import storage
from schemas.event import US_PER_S, format_time_us
from schemas.restart_markers import marker_path as restart_marker_path
from tests.test_break2_top_restart import DAY_S, HOUR_S, NEW_RUN, OLD_RUN, store
from tests.test_recompute import write_archive
from tests.test_recompute_runs import recompute_cli
from tests.test_top_streaming import all_top_lists
from transforms.top import TopRow
from viewcounts.cli import main
from viewcounts.commands.recompute import add_recompute_args, run_recompute
from viewcounts.commands.reconcile import stored_aggregates

pytestmark = pytest.mark.emulator


def _copy(eid: str, video: str, t_s: int, written_s: int, run: str = OLD_RUN) -> dict:
    return {
        "event_id": eid,
        "video_id": video,
        "event_type": "view",
        "value": None,
        "t_us": t_s * US_PER_S,
        "written_ms": written_s * 1000,
        "file_name": f"f{written_s}",
        "line": 1,
        "run": run,
    }


def _archive(root: str, copies: list, restart_s: int | None = None) -> None:
    for run in {c["run"] for c in copies}:
        write_archive(root, [c for c in copies if c["run"] == run], run)
    if restart_s is not None:
        path = restart_marker_path(root, restart_s * 1000, NEW_RUN)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(orjson.dumps({"run_id": NEW_RUN, "started_ms": restart_s * 1000, "allowed_lateness_s": 600}))


def _cli(table: tuple, archive: str, *flags: str) -> list[str]:
    """``recompute_cli`` with the dead letters in ``<archive>-dead-letters``."""
    return recompute_cli(table, archive, "--dead-letter-path", f"{archive}-dead-letters", *flags)


def _run(table: tuple, archive: str, now_s: int, *flags: str) -> dict:
    p = argparse.ArgumentParser()
    add_recompute_args(p)
    return run_recompute(p.parse_args(_cli(table, archive, *flags)[1:]), now_s=now_s).to_json()


def _day_list(table: tuple) -> list:
    return all_top_lists(table[2]).get((storage.top_row_key("view", "day", DAY_S), storage.qualifier(DAY_S)))


def _t(s: int) -> str:
    return format_time_us(s * US_PER_S)


def test_an_open_day_is_reported_and_its_list_rebuilt_when_run_again(table, tmp_path):
    restart_s = DAY_S + 14 * HOUR_S + 1800
    copies = [_copy(f"a{i}", "A", DAY_S + 10 * HOUR_S + i, DAY_S + 11 * HOUR_S + i) for i in range(5)]
    copies += [_copy(f"b{i}", "B", DAY_S + 14 * HOUR_S + i, DAY_S + 14 * HOUR_S + 600 + i) for i in range(2)]
    copies += [
        _copy("b2", "B", DAY_S + 14 * HOUR_S + 2000, restart_s + 300, NEW_RUN),
        _copy("c0", "C", DAY_S + 14 * HOUR_S + 2100, restart_s + 400, NEW_RUN),
    ]
    archive = str(tmp_path / "archive")
    _archive(archive, copies, restart_s)
    # the new job's day list (its day stage started empty), stamped at the restart: it won
    streamed = TopRow("view", "day", DAY_S, (("B", 1), ("C", 1)), storage.cell_timestamp_us(restart_s * 1000, 2))
    store(table[2], [streamed])

    # the restart's hour has closed, the day has not
    out = _run(table, archive, DAY_S + 16 * HOUR_S, "--after-restarts")
    assert (out["hours"], out["hours_read"], out["day_lists"]) == ([_t(DAY_S + 14 * HOUR_S)], 1, [])
    assert out["open_days"] == {_t(DAY_S): {"run_again_after": _t(DAY_S + 86400 + 900)}}
    assert _day_list(table) == [("B", 1), ("C", 1)]
    lists = all_top_lists(table[2])
    assert lists[
        (storage.top_row_key("view", "hour", DAY_S + 14 * HOUR_S), storage.qualifier(DAY_S + 14 * HOUR_S))
    ] == [("B", 3), ("C", 1)]

    # run again once the day has closed: the whole day's list; hour 10 read, not rewritten
    out = _run(table, archive, DAY_S + 86400 + 900, "--after-restarts")
    assert (out["hours"], out["hours_read"], out["day_lists"], out["open_days"]) == (
        [_t(DAY_S + 14 * HOUR_S)],
        24,
        [_t(DAY_S)],
        {},
    )
    assert _day_list(table) == [("A", 5), ("B", 3), ("C", 1)]
    with StatsReader(*table) as reader:
        stored = stored_aggregates(reader)
    assert {k[3] - k[3] % HOUR_S for k in stored} == {DAY_S + 14 * HOUR_S}
    assert not any(q == storage.qualifier(DAY_S + 10 * HOUR_S) for _, q in all_top_lists(table[2]))


def test_a_range_inside_a_closed_day_counts_as_the_whole_day_and_the_dry_run_agrees(table, tmp_path, capsys):
    # e1 archived first in hour 10, then a copy re-stamped into hour 14 (the same event)
    copies = [
        _copy("e1", "A", DAY_S + 10 * HOUR_S + 5, DAY_S + 10 * HOUR_S + 60),
        _copy("e1", "A", DAY_S + 14 * HOUR_S + 5, DAY_S + 14 * HOUR_S + 60),
        _copy("e2", "B", DAY_S + 14 * HOUR_S + 7, DAY_S + 14 * HOUR_S + 61),
        _copy("e3", "A", DAY_S + 20 * HOUR_S + 7, DAY_S + 20 * HOUR_S + 61),
    ]
    archive = str(tmp_path / "archive")
    _archive(archive, copies)
    rng = ("--start", _t(DAY_S + 14 * HOUR_S), "--end", _t(DAY_S + 15 * HOUR_S))
    assert main(_cli(table, archive, *rng)) == 0
    printed = capsys.readouterr().err
    assert "1 hour(s) recomputed (23 more read for day top lists)" in printed
    assert "day top lists rebuilt from the whole day: 2025-12-02" in printed
    with StatsReader(*table) as reader:
        stored = stored_aggregates(reader)
    # hour 14 holds B only: e1 counts in hour 10, where its first copy is (not rewritten here)
    assert {(k[0], k[3]) for k in stored if k[2] == "hour"} == {("B", DAY_S + 14 * HOUR_S)}
    assert _day_list(table) == [("A", 2), ("B", 1)]
    report = tmp_path / "audit.json"
    assert main(_cli(table, archive, *rng, "--dry-run", "--json", str(report))) == 0
    [hour] = orjson.loads(report.read_bytes())["audit"]
    assert (hour["changed"], hour["unchanged"], hour["stored_only"]) == (0, 2, 0)
