"""``viewcounts demo``: the main job end to end on one machine.

Starts the Pub/Sub and Bigtable emulators, creates the topic, subscription, dead-letter
topic and table, starts the streaming job (on the local runner by default; ``--runner
flink-cluster``: a Flink session cluster of 2 task managers with a Python worker pool,
``viewcounts.local.flink.FlinkCluster``, and the job submitted to it detached at
``--parallelism``, ``viewcounts.commands.submit``; its counters, watermark lag, backlog and oldest
unacked message age are read from Flink's REST API, ``viewcounts.local.job_metrics``), replays real flights
(``viewcounts.samples.flights``) with duplicates, waits for the job to catch up, prints a report
and a reconciliation of every stored minute and hour aggregate against an independent
computation over the replay manifest, writes ``demo-out/summary.json``, and stops
everything it started by PID. Exit status 0 only when there are zero mismatches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import orjson

from pipelines.options import DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_SUBSCRIPTION, DEFAULT_TOPIC
from pipelines.runners import profile, runner_flags
from schemas import storage
from schemas.archive import local_lines
from schemas.event import US_PER_S, format_time_us
from transforms import metrics
from viewcounts.commands import replay
from viewcounts.local import provision
from viewcounts.local.emulators import bigtable_emulator, pubsub_emulator

_LOG = logging.getLogger(__name__)
PROJECT = storage.DEFAULT_PROJECT
DEAD_LETTER_SUBSCRIPTION = "viewcounts-dead-letters-sub"


def add_demo_args(p) -> None:
    p.add_argument("--flights", type=int, default=20_000, help="how many flights to replay")
    p.add_argument("--duplicate-rate", type=float, default=0.05, help="fraction of flights published twice")
    p.add_argument("--events-per-message", type=int, default=100, help="events per Pub/Sub message")
    p.add_argument(
        "--runner",
        choices=("local", "prism", "flink", "flink-cluster"),
        default="local",
        help="local: BundleBasedDirectRunner; prism and flink (embedded) need `make prism` / `make "
        "flink-job-server`; flink-cluster (a session cluster of 2 task managers, the job submitted "
        "detached) also `make flink-venv`",
    )
    p.add_argument(
        "--parallelism",
        type=int,
        default=2,
        help="the job's parallelism on flink-cluster (at most 4: 2 task managers x 2 slots)",
    )
    p.add_argument(
        "--time-mode",
        choices=("shift", "real"),
        default="shift",
        help="shift: event times moved into the last --fit-span-s seconds; real: the flights' own 2013 "
        "times (prism and flink only: the local runner's Pub/Sub watermark is the wall clock)",
    )
    p.add_argument(
        "--fit-span-s",
        type=float,
        default=480.0,
        help="event times are shifted into the last S seconds (inside the 600 s lateness)",
    )
    p.add_argument("--early-firing-s", type=int, default=10, help="seconds between early panes")
    p.add_argument(
        "--catch-up-timeout-s", type=float, default=300.0, help="give up waiting for the job after this long"
    )
    p.add_argument("--out", default="demo-out", help="folder for summary.json, the manifest and the archive")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the report, keep the emulators and the job up for queries until Ctrl-C",
    )


def _pull_dead_letters(subscription_path: str) -> dict[str, int]:
    from google.cloud import pubsub_v1

    counts: dict[str, int] = {}
    with pubsub_v1.SubscriberClient() as sub:
        while True:
            resp = sub.pull(subscription=subscription_path, max_messages=1000, timeout=10)
            if not resp.received_messages:
                return counts
            for m in resp.received_messages:
                reason = m.message.attributes.get("reason", "?")
                counts[reason] = counts.get(reason, 0) + 1
            sub.acknowledge(subscription=subscription_path, ack_ids=[m.ack_id for m in resp.received_messages])


class _InProcessJob:
    """The job run from this process (``pipeline.run()``)."""

    def __init__(self, result) -> None:
        self.result = result

    def counters(self) -> dict[str, int]:
        """Committed counters of the running job; empty where the runner reports them only at the end."""
        try:
            return metrics.committed_counters(self.result)
        except Exception:  # noqa: BLE001 - portable job services differ in what they serve while running
            return {}

    def final_counters(self, events: int) -> dict[str, int]:
        return self.counters()

    def ended(self) -> str | None:
        from apache_beam.runners.runner import PipelineState

        return self.result.state if PipelineState.is_terminal(self.result.state) else None

    def live_figures(self) -> dict:
        return {}


class _ClusterJob:
    """The job submitted detached to ``cluster`` as ``job_id``; its metrics come from Flink's REST API."""

    REFRESH_S = 2.0  # one read of every vertex's metrics takes dozens of REST calls

    def __init__(self, cluster, job_id: str) -> None:
        self.cluster, self.job_id, self.published_messages = cluster, job_id, None
        self._read_at, self._read = -self.REFRESH_S, {}

    def _metrics(self) -> dict:
        """``viewcounts.local.job_metrics.flink_job_metrics``, read at most every ``REFRESH_S``; {} when
        the REST API does not answer."""
        from viewcounts.local.job_metrics import flink_job_metrics

        if time.monotonic() - self._read_at >= self.REFRESH_S:
            try:
                self._read = flink_job_metrics(self.cluster.master, self.job_id, self.published_messages)
            except OSError:
                self._read = {}
            self._read_at = time.monotonic()
        return self._read

    def counters(self) -> dict[str, int]:
        return self._metrics().get("counters", {})

    def final_counters(self, events: int, timeout_s: float = 30.0) -> dict[str, int]:
        """The counters once they show every published event read: the job manager fetches
        the task managers' metrics every 10 s (Flink's ``metrics.fetcher.update-interval``),
        so a read right after the data caught up can be behind; gives up after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        counters = self.counters()
        while counters.get(metrics.EVENTS_IN, 0) < events and time.monotonic() < deadline:
            time.sleep(1)
            counters = self.counters()
        return counters

    def cancel(self) -> None:
        with contextlib.suppress(OSError):  # already ended, or the cluster is gone
            self.cluster.cancel(self.job_id)

    def ended(self) -> str | None:
        state = self.cluster.job_status(self.job_id)
        return state if state in ("FAILED", "CANCELED", "FINISHED", "SUSPENDED") else None

    def live_figures(self) -> dict:
        """Watermark lag, oldest unacked message age (s) and backlog (messages), read while it runs."""
        m = self._metrics()
        return {k: m.get(k) for k in ("watermark_lag_s", "oldest_unacked_age_s", "backlog_messages")}


def _submit_to_cluster(
    console, stack: contextlib.ExitStack, job_flags: list[str], parallelism: int, out: str
) -> _ClusterJob:
    """Start a session cluster (2 task managers x 2 slots, a Python worker pool), submit the
    job to it detached with ``python -m viewcounts.commands.submit`` (its log: ``out/submit.log``);
    the job is cancelled and the cluster stopped by PID when ``stack`` closes."""
    from viewcounts.local.flink import FlinkCluster

    cluster = stack.enter_context(FlinkCluster(task_managers=2, task_slots=2))
    console.print(
        f"[bold]flink[/]: session cluster at {cluster.master} (2 task managers x 2 slots), "
        f"Python worker pool at {cluster.worker_pool}; PIDs {' '.join(map(str, cluster.process_pids()))}"
    )
    argv = [
        sys.executable,
        "-m",
        "viewcounts.commands.submit",
        *job_flags,
        *runner_flags("flink", flink_master=cluster.master, parallelism=parallelism, worker_pool=cluster.worker_pool),
    ]
    with open(os.path.join(out, "submit.log"), "wb") as log:
        launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        stdout, _ = launcher.communicate()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launcher.pid, signal.SIGKILL)  # nothing of the launcher outlives the submission
    if launcher.returncode != 0:
        raise SystemExit(f"the submission failed; see {os.path.join(out, 'submit.log')}")
    job = _ClusterJob(cluster, stdout.decode().split()[-1])
    stack.callback(job.cancel)
    console.print(
        f"[bold]pipeline[/]: Flink job {job.job_id} running at parallelism {parallelism}; "
        f"the launcher (pid {launcher.pid}) has exited"
    )
    return job


def demo_main(args) -> int:
    from rich.console import Console

    from pipelines.streaming import build_pipeline
    from query.stats import StatsReader
    from viewcounts.commands.reconcile import expected_aggregates, reconcile, stored_aggregates
    from viewcounts.samples.flights import airport_metadata

    if args.time_mode == "real" and profile(args.runner).wall_clock_watermark:
        raise SystemExit(f"--time-mode real needs another runner than {args.runner} (its watermark is the wall clock)")
    console = Console()
    archive = os.path.abspath(os.path.join(args.out, "archive"))
    shutil.rmtree(archive, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    manifest = os.path.join(args.out, "manifest.jsonl")
    metadata_path = os.path.join(args.out, "metadata.jsonl")
    with open(metadata_path, "wb") as f:
        for faa, (name, tzone) in sorted(airport_metadata().items()):
            f.write(orjson.dumps({"video_id": faa, "title": name, "channel": tzone}) + b"\n")
    wall_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        pubsub = stack.enter_context(pubsub_emulator())
        bigtable = stack.enter_context(bigtable_emulator())
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
        os.environ["BIGTABLE_EMULATOR_HOST"] = bigtable.host
        console.print(
            f"[bold]emulators[/]: Pub/Sub {pubsub.host} (pid {pubsub.proc.pid}), "
            f"Bigtable {bigtable.host} (pid {bigtable.proc.pid})"
        )
        provision.create_topic_and_subscription(PROJECT, DEFAULT_TOPIC, DEFAULT_SUBSCRIPTION)
        provision.create_topic_and_subscription(PROJECT, DEFAULT_DEAD_LETTER_TOPIC, DEAD_LETTER_SUBSCRIPTION)
        provision.create_table(PROJECT, storage.DEFAULT_INSTANCE, storage.DEFAULT_TABLE)

        job_flags = [
            f"--input_subscription=projects/{PROJECT}/subscriptions/{DEFAULT_SUBSCRIPTION}",
            f"--dead_letter_topic=projects/{PROJECT}/topics/{DEFAULT_DEAD_LETTER_TOPIC}",
            f"--archive_path={archive}",
            f"--metadata_path={os.path.abspath(metadata_path)}",
            f"--bigtable_project={PROJECT}",
            f"--early_firing_s={args.early_firing_s}",
            *(["--no_event_age_check"] if args.time_mode == "real" else []),
        ]
        if args.runner == "flink-cluster":
            job = _submit_to_cluster(console, stack, job_flags, args.parallelism, args.out)
        else:
            result = build_pipeline([*job_flags, *runner_flags(args.runner)]).run()
            stack.callback(result.cancel)
            job = _InProcessJob(result)
            console.print(f"[bold]pipeline[/]: streaming job started on the {args.runner} runner")

        plan = replay.ReplayPlan(args.duplicate_rate, args.time_mode, None, args.fit_span_s, args.events_per_message)
        events = replay.plan_events(replay.read_source("flights", args.flights), plan, time.time_ns() // 1000)
        publish_start = time.monotonic()
        figures = replay.publish(events, PROJECT, DEFAULT_TOPIC, plan, manifest)
        if isinstance(job, _ClusterJob):
            job.published_messages = figures["messages"]
        expected = expected_aggregates(manifest)

        deadline = time.monotonic() + args.catch_up_timeout_s
        ingested_s = None
        with StatsReader(PROJECT, storage.DEFAULT_INSTANCE, storage.DEFAULT_TABLE) as reader:
            with console.status("waiting for the pipeline to catch up") as status:
                next_check = 0.0
                while True:
                    counters = job.counters()
                    if job.ended():
                        raise SystemExit(f"the streaming job ended early: {job.ended()}")
                    if ingested_s is None and counters.get("events_in", 0) >= len(events):
                        ingested_s = time.monotonic() - publish_start
                    if (ingested_s is not None or not counters) and time.monotonic() >= next_check:
                        mismatches = reconcile(expected, stored_aggregates(reader))
                        if not mismatches:
                            break
                        next_check = time.monotonic() + 2
                        status.update(f"{len(mismatches):,} aggregates not yet equal")
                    elif ingested_s is None:
                        status.update(f"events in {counters.get('events_in', 0):,}/{len(events):,}")
                    if time.monotonic() > deadline:
                        mismatches = reconcile(expected, stored_aggregates(reader))
                        break
                    time.sleep(0.25)
            caught_up_s = time.monotonic() - publish_start
            dead = _pull_dead_letters(f"projects/{PROJECT}/subscriptions/{DEAD_LETTER_SUBSCRIPTION}")
            recompute = _recompute(console, archive, events, metadata_path, reader, deadline)
            counters = job.final_counters(len(events)) or counters
            live = job.live_figures()
            summary = {
                "published": len(events),
                "distinct_events": len({e["event_id"] for e in events}),
                "messages": figures["messages"],
                "accepted": counters.get(metrics.EVENTS_ACCEPTED, 0),
                "duplicates_dropped": counters.get(metrics.DUPLICATES_DROPPED, 0),
                "dead_letters": counters.get(metrics.DEAD_LETTERS, 0),
                "dead_letters_by_reason": dead,
                "aggregates_written": counters.get(metrics.AGGREGATES_WRITTEN, 0),
                "aggregates_checked": len(expected),
                "mismatches": len(mismatches),
                "events_per_s": round(len(events) / ingested_s, 1) if ingested_s else 0.0,
                "ingested_s": round(ingested_s, 1) if ingested_s else None,
                "caught_up_s": round(caught_up_s, 1),
                "publish_events_per_s": figures["publish_events_per_s"],
                **live,
                **recompute,
            }
            _report(console, reader, summary, expected, mismatches)
        summary["wall_s"] = round(time.monotonic() - wall_start, 1)
        with open(os.path.join(args.out, "summary.json"), "wb") as f:
            f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        if args.keep_running:
            _serve_until_interrupted(console, bigtable.host, events)
        console.print(f"wrote {os.path.join(args.out, 'summary.json')}; stopping the job and the emulators")
    return 0 if not mismatches and not summary["recompute_mismatches"] else 1


def _serve_until_interrupted(console, bigtable_host: str, events: list[dict]) -> None:
    e = events[len(events) // 2]
    hour = replay._time_us(e) // (3600 * US_PER_S) * 3600
    console.print(
        "[bold]the emulators and the job stay up[/]; in another shell, for example:\n"
        f"  export BIGTABLE_EMULATOR_HOST={bigtable_host}\n"
        f"  .venv/bin/viewcounts stats --video-id {e['video_id']} --event-type {e['event_type']} "
        f"--function count --granularity minute --start {format_time_us(hour * US_PER_S)} "
        f"--end {format_time_us((hour + 3600) * US_PER_S)}\n"
        "Ctrl-C stops everything."
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _archived_lines(archive: str) -> int:
    return sum(1 for _ in local_lines(archive))


def _recompute(
    console, archive: str, events: list[dict], metadata_path: str, streaming_reader, deadline: float
) -> dict:
    """Wait for the archive to hold every published event, re-count it with the batch
    recompute into a second table, and compare that table with the streaming one."""
    from pipelines import batch_recompute
    from query.stats import StatsReader
    from viewcounts.commands.reconcile import reconcile, stored_aggregates

    with console.status("waiting for the raw archive files"):
        while _archived_lines(archive) < len(events) and time.monotonic() < deadline:
            time.sleep(1)
    hours = sorted({replay._time_us(e) // (3600 * US_PER_S) * 3600 for e in events})
    table = f"{storage.DEFAULT_TABLE}_recompute"
    provision.create_table(PROJECT, storage.DEFAULT_INSTANCE, table)
    started = time.monotonic()
    with console.status("batch recompute from the raw archive"):
        batch_recompute.build_pipeline(
            [
                f"--archive_path={archive}",
                f"--start={format_time_us(hours[0] * US_PER_S)}",
                f"--end={format_time_us((hours[-1] + 3600) * US_PER_S)}",
                f"--metadata_path={metadata_path}",
                f"--bigtable_project={PROJECT}",
                f"--bigtable_table={table}",
                "--runner=DirectRunner",
            ]
        ).run().wait_until_finish()
    with StatsReader(PROJECT, storage.DEFAULT_INSTANCE, table) as reader:
        recomputed = stored_aggregates(reader)
    streaming = stored_aggregates(streaming_reader)
    diff = reconcile(streaming, recomputed)
    ok = "[green]OK[/]" if not diff else "[red]MISMATCH[/]"
    console.print(
        f"batch recompute from the raw archive ({_archived_lines(archive):,} archived lines, "
        f"{time.monotonic() - started:.1f} s): {len(recomputed):,} aggregates, "
        f"{len(diff)} differ from the streaming job's {ok}"
    )
    return {
        "archived_lines": _archived_lines(archive),
        "recompute_aggregates": len(recomputed),
        "recompute_mismatches": len(diff),
    }


def _report(console, reader, summary: dict, expected: dict, mismatches: list) -> None:
    from rich.table import Table

    t = Table(title="demo: flights replayed through the streaming job")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k in (
        "published",
        "distinct_events",
        "accepted",
        "duplicates_dropped",
        "dead_letters",
        "aggregates_written",
        "events_per_s",
        "ingested_s",
        "caught_up_s",
        "watermark_lag_s",
        "oldest_unacked_age_s",
        "backlog_messages",
    ):
        if k in summary:
            t.add_row(k, f"{summary[k]:,}" if isinstance(summary[k], int) else str(summary[k]))
    console.print(t)
    totals: dict[tuple, int] = {}
    hours: dict[tuple, list[int]] = {}
    for (vid, et, g, w), agg in expected.items():
        if g == "hour":
            totals[(vid, et)] = totals.get((vid, et), 0) + agg[0]
            hours.setdefault((vid, et), []).append(w)
    top = Table(title="top destinations by departures (stored aggregates, get_stats over all hours)")
    for col in ("airport", "type", "count", "avg delay (min)", "max delay"):
        top.add_column(col, justify="right")
    for (vid, et), _ in sorted(totals.items(), key=lambda kv: -kv[1])[:5]:
        start, end = min(hours[(vid, et)]), max(hours[(vid, et)]) + 3600
        s = reader.get_stats(
            vid, et, "count", format_time_us(start * US_PER_S), format_time_us(end * US_PER_S), "total"
        )
        a = s.combined
        top.add_row(
            vid,
            et,
            f"{a.count:,}",
            f"{a.avg:.2f}" if a.avg is not None else "-",
            f"{a.max:g}" if a.max is not None else "-",
        )
    console.print(top)
    ok = "[green]OK[/]" if not mismatches else "[red]MISMATCH[/]"
    console.print(
        f"reconciliation: {summary['aggregates_checked']:,} minute and hour aggregates compared with an "
        f"independent polars computation over the manifest: {len(mismatches)} mismatches {ok}"
    )
    for m in mismatches[:10]:
        console.print(f"  {m.key}: expected {m.expected}, stored {m.stored}")
