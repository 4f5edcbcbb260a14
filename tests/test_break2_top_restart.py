"""Day top lists after a streaming job restarted without state, and after any recompute of
part of a day (``pipelines.batch_recompute``, README "Restarts without state").

The break: the new job's day counts (``transforms.aggregate``'s windows stage) start empty, so
its day list sums only the hours it saw itself, and its ``MergeTop`` base is the wall clock at
the restart:
that list wins over the old job's. The documented repair (``--after_restarts``) recomputes the
hours holding files of both runs, and day lists used to be written only for days whose 24
hours were all recomputed: the day's stored list stayed the new job's partial one for good.
The same kind: a ``--start/--end`` recompute inside a day changed its hours' counts and left
the day's list as it was.

Here, over generated archives of two UTC days written by two runs (the restart at a random
instant; late copies, duplicates and copies re-stamped within their day), the streaming jobs'
day lists are made by the real stages (driven directly, state in memory per key) and stored
on the Bigtable emulator with their cell timestamps, then the real recompute job runs
(``--after_restarts``, with or without a range, or a random hour range inside or over the day
boundary) at a random wall clock. Then, from a plain reference over the archive:

* the day list of a day holding a recomputed hour is the reference over the whole day's
  archive once the day is closed (its end + allowed lateness + ``CLOSE_MARGIN_S``), and is
  left as the streaming job stored it while the day is open (the scope names the day and the
  time after which to run again); a day holding no recomputed hour is left as it was;
* hour lists and aggregates are written for the recomputed hours only (the other hours of a
  day, read for its list, are not rewritten), with the reference's counts.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipelines import batch_recompute
from query.stats import StatsReader
from schemas import storage
from schemas.closed_windows import CLOSE_MARGIN_S
from schemas.event import US_PER_S, format_time_us, parse_event_time
from schemas.restart_markers import marker_path as restart_marker_path
from tests.test_parallel_state import Cell
from tests.test_recompute import write_archive
from tests.test_top_streaming import all_top_lists
from transforms import top
from transforms.aggregate import AggregateRow, DayCount
from transforms.bigtable_sink import WriteAggregates, cell_of
from viewcounts.commands.reconcile import stored_aggregates
from viewcounts.local import provision

pytestmark = pytest.mark.emulator
PROJECT, INSTANCE = "test-project", "test-instance"
DAY_S = 1_764_633_600  # 2025-12-02T00:00:00Z: the first of the two days
HOUR_S = 3600
LATENESS_S = 600
OLD_RUN, NEW_RUN = "0100000000", "0200000000"
VIDEOS = ["A", "B", "C", "D", "é", "x#%"]


class StreamingJob:
    """The day-list path of one job: the day counts its windows stage emits for the hour
    panes it fired (``transforms.aggregate.DayCount``: the sum of the hour counts this job
    saw, as its state started empty) -> ``WindowOffers`` -> ``ShardTop`` -> ``MergeTop``,
    each key's state in memory; ``base_ms``: the wall clock when the job opens a window's list."""

    def __init__(self, base_ms: int) -> None:
        self.base_ms = base_ms
        self.hours: dict = defaultdict(dict)  # (video, type, day) -> {hour_s: count}
        self.offers = top.WindowOffers(4, top.day_offers)
        self.shard = top.ShardTop(LATENESS_S)
        self.merge = top.MergeTop(LATENESS_S)
        self.state: dict = defaultdict(Cell)

    def pane(self, rows) -> list:
        """The day lists ``MergeTop`` emits for a pane of hour ``rows``."""
        days = []
        for r in rows:
            key = (r.video_id, r.event_type, r.window_start_s - r.window_start_s % 86400)
            self.hours[key][r.window_start_s] = r.aggregate.count
            days.append(DayCount(*key, sum(self.hours[key].values())))
        lists = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(top, "wall_clock_ms", lambda: self.base_ms)
            self.offers.start_bundle()
            self.offers.process(days)
            for offered in self.offers.finish_bundle():
                shard_key, offers = offered.value
                for window, changed in self.shard.process(
                    (shard_key, offers), state=self.state[("s", shard_key)], cleanup=Cell()
                ):
                    for out in self.merge.process((window, changed), state=self.state[("m", window)], cleanup=Cell()):
                        lists.extend(out)
        return lists


def first_copies(copies) -> list[dict]:
    """The reference's dedup: per ``event_id`` the copy first in archive order (written time,
    file name, line; the written times here are distinct per file)."""
    best: dict = {}
    for c in sorted(copies, key=lambda c: (c["written_ms"], c["line"])):
        best.setdefault(c["event_id"], c)
    return list(best.values())


def hour_counts(copies) -> dict:
    """``{(event_type, hour_s): {video_id: count}}`` of ``first_copies``."""
    out: dict = defaultdict(lambda: defaultdict(int))
    for c in first_copies(copies):
        s = c["t_us"] // US_PER_S
        out[(c["event_type"], s - s % HOUR_S)][c["video_id"]] += 1
    return out


def ranked(counts: dict) -> list:
    return sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[: storage.TOP_K]


@st.composite
def restarted_days(draw):
    """``(copies, restart_s)``: events over the two days, archived by the old run when they
    arrived before ``restart_s`` and by the new run after; ``copies`` as
    ``tests.test_recompute.archives`` (plus ``run``), ``written_ms`` distinct per file."""
    restart_hour = DAY_S + draw(st.integers(0, 47)) * HOUR_S
    restart_s = restart_hour + draw(st.integers(1, HOUR_S - 1))
    copies = []
    for i in range(draw(st.integers(2, 50))):
        # the first two in the restart's hour (before and after it: files of both runs there, mostly),
        # then half of the events within two hours of the restart
        t_s = draw(
            st.integers(restart_hour, restart_s - 1)
            if i == 0
            else st.integers(restart_s, restart_hour + HOUR_S - 1)
            if i == 1
            else st.one_of(
                st.integers(DAY_S, DAY_S + 2 * 86400 - 1),
                st.integers(max(DAY_S, restart_s - 2 * HOUR_S), min(DAY_S + 2 * 86400 - 1, restart_s + 2 * HOUR_S)),
            )
        )
        ev = {
            "event_id": f"e{i}",
            "video_id": draw(st.sampled_from(VIDEOS)),
            "event_type": draw(st.sampled_from(["view", "like"])),
            "value": None,
        }
        arrivals = [(t_s, t_s + (0 if i == 0 else draw(st.integers(0, 120))))]
        for _ in range(draw(st.integers(0, 2))):  # a duplicate (late), or a copy re-stamped within its day
            later = arrivals[-1][1] + draw(st.integers(1, 4000))
            again = t_s if draw(st.booleans()) else t_s - t_s % 86400 + draw(st.integers(0, 86399))
            arrivals.append((again, max(later, again)))
        for t, arrived in arrivals:
            copies.append(
                {
                    **ev,
                    "t_us": t * US_PER_S + draw(st.integers(0, 999_999)),
                    "arrived_s": arrived,
                    "run": OLD_RUN if arrived < restart_s else NEW_RUN,
                }
            )
    # files: per run, event hour and 10 minutes of arrival; lines in arrival order
    files: dict = defaultdict(list)
    for c in copies:
        files[(c["run"], c["t_us"] // US_PER_S // HOUR_S, c["arrived_s"] // 600)].append(c)
    for (run, hour, slot), cs in files.items():
        written_ms = (slot + 1) * 600_000 + (hour - DAY_S // HOUR_S) * 2 + (run == NEW_RUN)
        for line, c in enumerate(sorted(cs, key=lambda c: c["arrived_s"]), 1):
            c.update(written_ms=written_ms, file_name=f"f{written_ms}", line=line)
    return copies, restart_s


def streaming_day_lists(copies, restart_s: int) -> list:
    """The day lists the two jobs wrote: each counts its own copies (deduplicated among them),
    one pane per hour in hour order; the new job started without state at ``restart_s``."""
    written = []
    for run, base_s in ((OLD_RUN, DAY_S - HOUR_S), (NEW_RUN, restart_s)):
        job = StreamingJob(base_s * 1000)
        counts = hour_counts([c for c in copies if c["run"] == run])
        for (etype, hour_s), per_video in sorted(counts.items(), key=lambda kv: kv[0][1]):
            written += job.pane(
                [
                    AggregateRow(v, etype, "hour", hour_s, storage.Aggregate(n, 0, 0.0, None, None), 0, 0)
                    for v, n in per_video.items()
                ]
            )
    return written


def store(table: str, lists: list) -> None:
    """Write top lists as the pipeline does (``WriteAggregates``), with their cell timestamps."""
    sink = WriteAggregates(PROJECT, INSTANCE, table)
    sink.setup()
    try:
        assert sink._write({cell_of(t): t for t in sorted(lists, key=lambda t: t.cell_timestamp_us)}) == []
    finally:
        sink.teardown()


def newest(lists: list) -> dict:
    """``{(row key, qualifier): items}`` of the list with the highest cell timestamp per window."""
    best: dict = {}
    for t in lists:
        key = cell_of(t)
        if key not in best or t.cell_timestamp_us >= best[key].cell_timestamp_us:
            best[key] = t
    return {k: list(t.items) for k, t in best.items()}


def write_restart(root: str, copies: list, restart_s: int) -> None:
    """The archive of both runs and the new run's restart marker (``pipelines.restarts``)."""
    for run in (OLD_RUN, NEW_RUN):
        mine = [c for c in copies if c["run"] == run]
        if mine:
            write_archive(root, mine, run)
    path = restart_marker_path(root, restart_s * 1000, NEW_RUN)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(orjson.dumps({"run_id": NEW_RUN, "started_ms": restart_s * 1000, "allowed_lateness_s": LATENESS_S}))


def closes_at(start_s: int, size_s: int) -> int:
    return start_s + size_s + LATENESS_S + CLOSE_MARGIN_S


def check_repair(tmp_path, copies, restart_s: int, flags: list[str], now_s: int) -> str:
    """Store the streaming jobs' day lists, run the recompute of ``flags`` at ``now_s``, and
    check what is stored (module docstring); returns what was rebuilt and left open."""
    table = f"t-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, table)
    root = str(tmp_path / f"archive-{table}")
    write_restart(root, copies, restart_s)
    streamed = streaming_day_lists(copies, restart_s)
    store(table, streamed)
    argv = [
        f"--archive_path={root}",
        f"--bigtable_project={PROJECT}",
        f"--bigtable_instance={INSTANCE}",
        f"--bigtable_table={table}",
        f"--dead_letter_path={tmp_path}/dead-{table}",
        f"--allowed_lateness_s={LATENESS_S}",
        *flags,
    ]
    batch_recompute.build_pipeline(argv, now_s).run().wait_until_finish()

    # the hours recomputed, by the rules of the README (independent of the job's code)
    r = {k: parse_event_time(v) // US_PER_S for k, v in (f[2:].split("=", 1) for f in flags if "=" in f)}
    rng = range(r["start"], r["end"], HOUR_S) if r else None
    open_hours = {}
    if "--after_restarts" in flags:
        runs = defaultdict(set)
        for c in copies:
            runs[c["t_us"] // US_PER_S // HOUR_S * HOUR_S].add(c["run"])
        shared = {h for h, rs in runs.items() if len(rs) == 2 and (rng is None or h in rng)}
        hours = {h for h in shared if closes_at(h, HOUR_S) <= now_s}
        open_hours = {h: closes_at(h, HOUR_S) for h in shared - hours}
    else:
        hours = set(rng)
    days = {h - h % 86400 for h in hours}
    closed_days = {d for d in days if closes_at(d, 86400) <= now_s}
    scope = batch_recompute.recompute_scope(root, batch_recompute.RecomputeOptions(flags), LATENESS_S, now_s)
    assert (set(scope.hours), set(scope.days)) == (hours, closed_days)
    assert (scope.open_days, scope.open_hours) == ({d: closes_at(d, 86400) for d in days - closed_days}, open_hours)
    read = hours | {h for d in closed_days for h in range(d, d + 86400, HOUR_S)}
    in_read = [c for c in copies if c["t_us"] // US_PER_S // HOUR_S * HOUR_S in read]

    # day lists: the whole day's reference once closed, else as streaming left them
    want = newest(streamed)
    for d in closed_days:
        per_video: dict = defaultdict(lambda: defaultdict(int))
        of_day = [c for c in copies if c["t_us"] // US_PER_S // 86400 * 86400 == d]
        for (etype, _), counts in hour_counts(of_day).items():
            for v, n in counts.items():
                per_video[etype][v] += n
        for etype in ("view", "like"):
            key = (storage.top_row_key(etype, "day", d), storage.qualifier(d))
            if per_video[etype]:
                want[key] = ranked(per_video[etype])
    # hour lists of the recomputed hours only, from the hours read (re-stamped copies stay in their day)
    for (etype, h), counts in hour_counts(in_read).items():
        if h in hours:
            want[(storage.top_row_key(etype, "hour", h), storage.qualifier(h))] = ranked(counts)
    got = all_top_lists(table)
    assert {k: v for k, v in got.items() if b"#m#" not in k[0]} == want
    assert all(int(q) - int(q) % HOUR_S in hours for k, q in got if b"#m#" in k)
    # aggregates: of the recomputed hours only, with the reference's counts
    with StatsReader(PROJECT, INSTANCE, table) as reader:
        stored = stored_aggregates(reader)
    assert {(v, t, w): a[0] for (v, t, g, w), a in stored.items() if g == "hour"} == {
        (v, t, h): n for (t, h), counts in hour_counts(in_read).items() if h in hours for v, n in counts.items()
    }
    assert all(w - w % HOUR_S in hours for (_, _, _, w) in stored)
    return f"days rebuilt {len(closed_days)}, left open {len(days - closed_days)}; hours {min(len(hours), 3)}+"


_EXAMPLES = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@st.composite
def recomputes(draw, restart_s: int):
    """``(flags, now_s)``: ``--after_restarts`` (alone or within a range) or a range of hours
    inside the two days or over their boundary; a wall clock from during the first day to
    after both have closed."""
    start = DAY_S + draw(st.integers(0, 47)) * HOUR_S
    end = start + draw(st.integers(1, (DAY_S + 48 * HOUR_S - start) // HOUR_S)) * HOUR_S
    rng = [f"--start={format_time_us(start * US_PER_S)}", f"--end={format_time_us(end * US_PER_S)}"]
    kind = draw(st.sampled_from(["after_restarts", "after_restarts in range", "range"]))
    flags = {
        "after_restarts": ["--after_restarts"],
        "after_restarts in range": ["--after_restarts", *rng],
        "range": rng,
    }[kind]
    # after the restart's hour has closed; about when its day or the next closes (900 s past their end)
    day_closes = restart_s - restart_s % 86400 + 86400 + 900
    now_s = draw(st.sampled_from([restart_s + 2 * HOUR_S, day_closes, day_closes + 86400]))
    return flags, max(now_s + draw(st.integers(-1, 12 * HOUR_S)), restart_s + 2 * HOUR_S)


@settings(max_examples=15, **_EXAMPLES)
@given(st.data())
def test_after_a_restart_or_a_partial_recompute_day_lists_are_the_whole_days_reference(
    bigtable_host, tmp_path_factory, data
):
    copies, restart_s = data.draw(restarted_days())
    flags, now_s = data.draw(recomputes(restart_s))
    event(check_repair(tmp_path_factory.mktemp("repair"), copies, restart_s, flags, now_s))


def test_the_documented_repair_restores_the_day_list_of_the_restart(bigtable_host, tmp_path):
    """The break as first seen: 50 views of A in the morning (old job), a restart at 14:30; the
    new job's day list (B and C only) won. ``--after_restarts`` once the day has closed."""

    def copy(i, video, hour, run, written_s):
        t = DAY_S + hour * HOUR_S + i
        return {
            "event_id": f"e{video}{i}",
            "video_id": video,
            "event_type": "view",
            "value": None,
            "t_us": t * US_PER_S,
            "run": run,
            "written_ms": written_s * 1000 + i,
            "file_name": "f",
            "line": 1,
        }

    copies = [copy(i, "A", 10, OLD_RUN, DAY_S + 11 * HOUR_S) for i in range(50)]
    copies += [copy(i, "B", 14, OLD_RUN, DAY_S + 14 * HOUR_S + 900) for i in range(2)]
    copies += [copy(i, "B", 14, NEW_RUN, DAY_S + 14 * HOUR_S + 2700) for i in range(2, 5)]
    copies += [copy(0, "C", 14, NEW_RUN, DAY_S + 14 * HOUR_S + 2700)]
    check_repair(tmp_path, copies, DAY_S + 14 * HOUR_S + 1800, ["--after_restarts"], DAY_S + 3 * 86400)
