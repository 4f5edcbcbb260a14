"""The recompute against real components: ``viewcounts recompute`` on the Bigtable emulator
(dry-run audit, overwrite, refusal of open hours), streaming and batch agreeing on the
archive the streaming job wrote, and the recompute as a batch job on an embedded Flink."""

from __future__ import annotations

import datetime as dt
import random
import time

import pytest

from pipelines.runners import FLINK_JOB_SERVER_JAR, runner_flags
from query.stats import StatsReader
from schemas import storage
from schemas.event import US_PER_S, format_time_us
from tests.test_recompute import H0, model, write_archive
from viewcounts.cli import main
from viewcounts.commands.reconcile import reconcile, stored_aggregates

pytestmark = pytest.mark.emulator


def _copies(n: int, start_s: int, span_s: int, seed: int = 3) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ev = {
            "event_id": f"e{i}",
            "video_id": f"V{rnd.randrange(5)}",
            "event_type": rnd.choice(["view", "like"]),
            "t_us": start_s * US_PER_S + rnd.randrange(span_s * US_PER_S),
            "value": rnd.choice([None, 2.0, 7.5]),
        }
        out.append({**ev, "written_ms": 1_700_000_000_000 + i // 100, "file_name": "f", "line": i % 100 + 1})
    # 5 % copies in later files: exact, or re-stamped within the range
    for k, c in enumerate(rnd.sample(out, n // 20)):
        t = c["t_us"] if k % 2 else start_s * US_PER_S + rnd.randrange(span_s * US_PER_S)
        out.append({**c, "t_us": t, "written_ms": 1_800_000_000_000, "file_name": "g", "line": k + 1})
    return out


def recompute_cli(table: tuple, archive: str, *flags: str) -> list[str]:
    """``viewcounts recompute`` arguments: ``archive`` into ``table`` (project, instance, name), then ``flags``."""
    project, instance, name = table
    return [
        "recompute",
        "--archive-path",
        archive,
        "--project",
        project,
        "--instance",
        instance,
        "--table",
        name,
        *flags,
    ]


def _args(table: tuple, archive: str, start_s: int, end_s: int, *extra: str) -> list[str]:
    """``recompute_cli`` of the hours ``[start_s, end_s)`` (epoch s), then ``extra`` flags."""
    start, end = format_time_us(start_s * US_PER_S), format_time_us(end_s * US_PER_S)
    return recompute_cli(table, archive, "--start", start, "--end", end, *extra)


def _stored(table: tuple) -> dict:
    with StatsReader(*table) as reader:
        return stored_aggregates(reader)


def _overwrite_cell(table: tuple, key: tuple, agg: storage.Aggregate) -> None:
    """Store ``agg`` for ``key`` with a cell timestamp an hour ahead (a pane the recompute's
    would lose to, so the audit must see it)."""
    from google.cloud import bigtable

    video_id, event_type, granularity, w = key
    client = bigtable.Client(project=table[0], admin=False)
    try:
        row = (
            client.instance(table[1]).table(table[2]).direct_row(storage.row_key(video_id, event_type, granularity, w))
        )
        row.set_cell(
            storage.FAMILY,
            storage.qualifier(w),
            storage.encode_cell(agg, None, None),
            timestamp=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
        )
        row.commit()
    finally:
        client.close()


def test_dry_run_audits_per_hour_and_the_recompute_overwrites(table, tmp_path):
    import orjson

    copies = _copies(1500, H0, 3 * 3600)
    archive = str(tmp_path / "archive")
    write_archive(archive, copies)
    expected = model(copies)
    report = tmp_path / "audit.json"

    # an empty table: every aggregate is missing, the count deltas add up to the events counted
    assert main(_args(table, archive, H0, H0 + 3 * 3600, "--dry-run", "--json", str(report))) == 0
    audit = orjson.loads(report.read_bytes())["audit"]
    assert [a["hour"] for a in audit] == [format_time_us((H0 + h * 3600) * US_PER_S) for h in range(3)]
    assert sum(a["changed"] for a in audit) == sum(a["missing"] for a in audit) == len(expected)
    assert sum(a["count_delta"] for a in audit) == 1500
    assert _stored(table) == {}  # a dry run writes nothing

    assert main(_args(table, archive, H0, H0 + 3 * 3600)) == 0
    assert reconcile(expected, _stored(table)) == []

    # one minute stored 5 too high, one hour's sum off: the audit names their hours and deltas
    minute = next(k for k in sorted(expected) if k[2] == "minute" and k[3] >= H0 + 3600)
    hour = next(k for k in sorted(expected) if k[2] == "hour" and k[3] == H0 + 7200)
    c, vc, s, lo, hi = expected[minute]
    _overwrite_cell(table, minute, storage.Aggregate(c + 5, vc, s, lo, hi))
    c, vc, s, lo, hi = expected[hour]
    _overwrite_cell(
        table,
        hour,
        storage.Aggregate(c, vc + 1, s + 10.0, lo if lo is not None else 10.0, hi if hi is not None else 10.0),
    )
    assert main(_args(table, archive, H0, H0 + 3 * 3600, "--dry-run", "--json", str(report))) == 0
    audit = {a["hour"]: a for a in orjson.loads(report.read_bytes())["audit"]}
    changed = {h: (a["changed"], a["count_delta"], a["sum_delta"]) for h, a in audit.items() if a["changed"]}
    minute_hour = format_time_us((minute[3] - minute[3] % 3600) * US_PER_S)
    if minute_hour == format_time_us(hour[3] * US_PER_S):
        assert changed == {minute_hour: (2, -5, 0.0)}
    else:
        assert changed == {minute_hour: (1, -5, 0.0), format_time_us(hour[3] * US_PER_S): (1, 0, 0.0)}
    assert all(a["missing"] == 0 and a["stored_only"] == 0 for a in audit.values())


def test_open_hours_are_refused_unless_forced(table, tmp_path):
    now_hour = int(time.time()) // 3600 * 3600
    copies = _copies(200, now_hour, 60)
    archive = str(tmp_path / "archive")
    write_archive(archive, copies)
    # the hour ends after the streaming job's watermark: it may still fire its windows
    assert main(_args(table, archive, now_hour - 3600, now_hour + 3600)) == 3
    assert _stored(table) == {}
    assert main(_args(table, archive, now_hour - 3600, now_hour + 3600, "--force")) == 0
    assert reconcile(model(copies), _stored(table)) == []


@pytest.mark.slow
@pytest.mark.flink
@pytest.mark.skipif(not FLINK_JOB_SERVER_JAR.exists(), reason="needs `make flink-job-server`")
def test_the_recompute_runs_as_a_batch_job_on_an_embedded_flink(table, tmp_path):
    copies = _copies(3000, H0, 4 * 3600)
    archive = str(tmp_path / "archive")
    write_archive(archive, copies)
    # the flags a streaming job gets (checkpoints among them): the batch job runs with them
    assert main(_args(table, archive, H0, H0 + 4 * 3600, "--", *runner_flags("flink"))) == 0
    assert reconcile(model(copies), _stored(table)) == []


@pytest.mark.slow
@pytest.mark.flink
@pytest.mark.skipif(not FLINK_JOB_SERVER_JAR.exists(), reason="needs `make flink-job-server`")
def test_streaming_and_the_batch_recompute_agree_on_the_archive_streaming_wrote(tmp_path, pubsub_host, bigtable_host):
    """The streaming job (embedded Flink) counts real 2013 flights with 5 % duplicates and
    writes the raw archive; the recompute of that archive into another table stores the same
    aggregates, and both equal the reference."""
    from tests.streaming_jobs import INSTANCE, PROJECT, Deployment, archive_missing, kill
    from tests.test_streaming_runners import CONVERGE_S, HISTORICAL, _flights, _wait_for
    from viewcounts.local import provision

    d = Deployment(str(tmp_path))
    job = d.start_job("--no_event_age_check", *runner_flags("flink", checkpoint_dir=str(tmp_path / "checkpoints")))
    try:
        events = _flights(2000)
        d.publish(events, HISTORICAL)
        mismatches, _ = d.converged(CONVERGE_S, job)
        assert mismatches == [], mismatches[:5]
        _wait_for(lambda: archive_missing(d.folder, events) == 0, 60, "every event in the raw archive")
    finally:
        kill(job)
    streaming = d.stored()
    batch_table = (PROJECT, INSTANCE, f"{d.table}-batch")
    provision.create_table(*batch_table)
    hours = sorted({k[3] for k in streaming if k[2] == "hour"})
    assert main(_args(batch_table, f"{d.folder}/archive", hours[0], hours[-1] + 3600)) == 0
    assert reconcile(streaming, _stored(batch_table)) == []
    assert reconcile(d.expected(), _stored(batch_table)) == []
