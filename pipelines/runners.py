"""Which runner a job runs on, the flags each runner needs, and what each one supports.

Runner names used by the CLI, the demo and the tests:

* ``local``: Beam's BundleBasedDirectRunner (native ``ReadFromPubSub``, wall-clock watermark,
  no ``PeriodicImpulse``; ``direct_runner_fix`` keeps its metrics).
* ``prism``: Beam's Prism runner, the binary built by ``make prism`` from the Go module at
  the pinned Beam version.
* ``flink``: Beam's FlinkRunner through the job server that ``make flink-job-server``
  assembles from Maven Central (``infra/flink/job-server/pom.xml``); ``flink_master``
  ``[local]`` is an embedded Flink, ``host:port`` a session cluster (``viewcounts.local.flink``).
* ``dataflow``: Google Cloud Dataflow (native ``ReadFromPubSub`` with the timestamp attribute).

What each runner supports and needs is declared once, in ``PROFILES`` (a ``RunnerProfile``
per runner); the pipeline builders read it and give transforms runner-neutral parameters.
``docs/runners.md`` tabulates the profiles and tells, per workaround, the upstream issue and
the symptom.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mmh3
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions, StandardOptions

from pipelines import direct_runner_fix

BUILD_DIR = Path(os.environ.get("VIEWCOUNTS_BUILD_DIR", Path(__file__).resolve().parents[1] / "build"))
PRISM_BINARY = BUILD_DIR / "bin" / "prism"
FLINK_JOB_SERVER_JAR = BUILD_DIR / "flink-job-server" / "flink-job-server.jar"
FLINK_VERSION = "1.19"  # the Flink minor of beam-runners-flink-1.19 (the job server) and the cluster wheels
RUNNERS = ("local", "prism", "flink", "dataflow")
_LOG = logging.getLogger(__name__)
_LOCAL = (None, "DirectRunner", "BundleBasedDirectRunner", "FnApiRunner")  # Beam runner names runner_of calls local
DEFAULT_CHECKPOINTING_INTERVAL_MS = 5000
ACK_DEADLINE_S = 60  # the ack deadline of the subscriptions this project makes (provision.py, Terraform)


class FlinkJobOptions(PipelineOptions):
    """The Java FlinkPipelineOptions this project sets, declared so Python knows and forwards them."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--checkpointing_interval", type=int, default=None, help="ms between Flink checkpoints")
        parser.add_argument("--state_backend", default=None, help="Flink state backend: filesystem or rocksdb")
        parser.add_argument("--state_backend_storage_path", default=None, help="where checkpoints go (file://...)")
        parser.add_argument(
            "--externalized_checkpoints_enabled",
            action="store_true",
            default=None,
            help="keep checkpoints after the job ends, to restore from",
        )
        parser.add_argument("--retain_externalized_checkpoints_on_cancellation", action="store_true", default=None)
        parser.add_argument(
            "--savepoint_path",
            default=None,
            help="savepoint or retained checkpoint to start from; default: the newest retained "
            "checkpoint under --state_backend_storage_path (pipelines.runners.prepare)",
        )
        parser.add_argument(
            "--fresh_start",
            action="store_true",
            default=False,
            help="start without state even when a retained checkpoint exists (then recompute: pipelines.restarts)",
        )
        parser.add_argument(
            "--finish_bundle_before_checkpointing",
            action="store_true",
            default=None,
            help="finish the bundle at a checkpoint instead of buffering its output in state",
        )
        parser.add_argument("--flink_conf_dir", default=None, help="folder with a flink-conf.yaml for the job")
        parser.add_argument(
            "--shutdown_sources_after_idle_ms",
            type=int,
            default=None,
            help="stop a source idle this long (lets a job of bounded input in streaming mode end "
            "while checkpoints are on: runner_flags(bounded=True))",
        )
        parser.add_argument(
            "--max_bundle_time_ms",
            type=int,
            default=None,
            help="Flink's bundle-check period; the source's pause between pulls follows it (pull_pacing)",
        )
        parser.add_argument(
            "--max_concurrent_checkpoints",
            type=int,
            default=None,
            help="checkpoints in flight at once; the job needs 1 (pubsub_io.AckLedger)",
        )
        # Java's attachedMode: detached, the job server returns once Flink has accepted the job
        # (a remote master only; viewcounts.commands.submit)
        parser.add_argument(
            "--detached",
            dest="attached_mode",
            action="store_false",
            default=None,
            help="submit to a remote Flink and return without waiting for the job "
            "(python -m viewcounts.commands.submit)",
        )


def _require(path: Path, make_target: str) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make {make_target}` first")
    return str(path)


def runner_flags(
    runner: str,
    flink_master: str = "[local]",
    checkpointing_interval_ms: int = DEFAULT_CHECKPOINTING_INTERVAL_MS,
    checkpoint_dir: str | None = None,
    savepoint_path: str | None = None,
    parallelism: int = 1,
    worker_pool: str | None = None,
    sdk_worker_parallelism: int = 1,
    bounded: bool = False,
) -> list[str]:
    """Beam flags that select ``runner`` (one of ``RUNNERS``). ``dataflow`` gives only the
    runner; project, region and staging flags are the user's (README).

    Flink: ``parallelism``; Python workers from the worker pool at ``worker_pool``
    (``host:port``, EXTERNAL environment, ``sdk_worker_parallelism`` processes per task
    manager) or, without it, LOOPBACK (the submitting process; tests only); checkpoints every
    ``checkpointing_interval_ms`` (acks happen at checkpoints), written as files to
    ``checkpoint_dir`` and retained there on cancellation or failure when it is given, else
    to a fresh temporary folder (Flink's default storage keeps checkpoints in the job
    manager's memory, at most 5 MB of state per task: the dead-letter files' buffered lines
    passed that in a 100k-event demo, every checkpoint failed and the job restarted in a
    loop), and ``savepoint_path`` (a
    savepoint or a retained checkpoint) to resume from; without it a job whose checkpoints
    are retained resumes from the newest one (``prepare``). ``prepare`` sets the settings
    the job needs for correctness again, so a command without these flags gets them too.
    ``bounded``: the job's input ends (a ``TestStream``, a file) though it runs in streaming
    mode; Beam's Flink runner keeps finished sources (the impulses) alive while checkpoints are
    on, so there they stop after 1 s idle and the job ends. Raises ``FileNotFoundError``
    when a runner's build is missing, ``ValueError`` for an unknown runner.
    """
    if runner == "local":
        return [f"--runner={PROFILES['local'].beam_runner}"]
    if runner == "prism":
        return [
            f"--runner={PROFILES['prism'].beam_runner}",
            f"--prism_location={_require(PRISM_BINARY, 'prism')}",
            "--environment_type=LOOPBACK",
            # a Prism server of its own: Beam shares one per process, and a DirectRunner that
            # tried Prism first (with no --prism_location) may already have made it
            "--experiments=disable_prism_server_singleton",
            # no runner-initiated splits (of any bundle, despite the name): Prism 2.70's
            # splitBundle releases the residual's keys while the primary still runs, so
            # one key of a stateful stage can run in two bundles at once. Seen: the shared
            # case 16-flush-at-end accepted events twice (events_accepted 1006 of 1004
            # read) in 4 runs of 8, and the demo overcounted; without splits, 0 of 8 and 0
            "--experiments=prism_disable_sdf_split",
        ]
    if runner == "flink":
        flags = [
            f"--runner={PROFILES['flink'].beam_runner}",
            f"--flink_master={flink_master}",
            f"--flink_version={FLINK_VERSION}",
            f"--flink_job_server_jar={_require(FLINK_JOB_SERVER_JAR, 'flink-job-server')}",
            f"--parallelism={parallelism}",
        ]
        flags += (
            [
                "--environment_type=EXTERNAL",
                f"--environment_config={worker_pool}",
                f"--sdk_worker_parallelism={sdk_worker_parallelism}",
            ]
            if worker_pool
            else ["--environment_type=LOOPBACK"]
        )
        # --finish_bundle_before_checkpointing: see _flink_job_settings
        flags += [
            f"--checkpointing_interval={checkpointing_interval_ms}",
            "--finish_bundle_before_checkpointing",
            "--state_backend=filesystem",
            f"--state_backend_storage_path=file://{checkpoint_dir or tempfile.mkdtemp(prefix='flink-checkpoints-')}",
        ]
        if checkpoint_dir:
            flags += ["--externalized_checkpoints_enabled", "--retain_externalized_checkpoints_on_cancellation"]
        if savepoint_path:
            flags.append(f"--savepoint_path={savepoint_path}")
        if bounded:
            flags.append("--shutdown_sources_after_idle_ms=1000")
        return flags
    if runner == "dataflow":
        return [f"--runner={PROFILES['dataflow'].beam_runner}"]
    raise ValueError(f"unknown runner {runner!r}; one of {', '.join(RUNNERS)}")


def latest_checkpoint(storage_path: str) -> str | None:
    """The newest completed checkpoint under a Flink checkpoint storage path (``file://``,
    a plain folder, or any Beam file system such as ``gs://``): the ``<job id>/chk-N``
    folder whose ``_metadata`` was written last, or None."""
    root = storage_path[len("file://") :] if storage_path.startswith("file://") else storage_path
    found = FileSystems.match([f"{root.rstrip('/')}/*/chk-*/_metadata"])[0].metadata_list
    if not found:
        return None
    newest = max(found, key=lambda m: (m.last_updated_in_seconds, int(m.path.rsplit("chk-", 1)[1].split("/")[0])))
    return newest.path.rsplit("/", 1)[0]


def _resume(options: PipelineOptions) -> None:
    """Flink: with no ``--savepoint_path``, resume from the newest retained checkpoint under
    ``--state_backend_storage_path`` unless ``--fresh_start``; then make an embedded Flink
    honour the savepoint path. Beam 2.70 honours ``--savepoint_path`` only for a remote
    master (``FlinkExecutionEnvironments``); an embedded Flink reads the same setting from
    a configuration folder, written here (with the lines of a given ``--flink_conf_dir``)."""
    flink = options.view_as(FlinkJobOptions)
    if flink.fresh_start and flink.savepoint_path:
        raise ValueError("--fresh_start and --savepoint_path contradict each other")
    if (
        not flink.savepoint_path
        and not flink.fresh_start
        and flink.externalized_checkpoints_enabled
        and flink.state_backend_storage_path
    ):
        flink.savepoint_path = latest_checkpoint(flink.state_backend_storage_path)
        if flink.savepoint_path:
            _LOG.info(
                "resuming from the newest retained checkpoint %s (--fresh_start to start without it)",
                flink.savepoint_path,
            )
    master = options.view_as(FlinkRunnerOptions).flink_master
    if flink.savepoint_path and master in ("[local]", "[auto]"):
        conf_dir = tempfile.mkdtemp(prefix="flink-conf-")
        given = os.path.join(flink.flink_conf_dir, "flink-conf.yaml") if flink.flink_conf_dir else None
        with open(os.path.join(conf_dir, "flink-conf.yaml"), "w") as f:
            if given and os.path.exists(given):
                with open(given) as g:
                    f.writelines(line for line in g if not line.startswith("execution.savepoint.path:"))
            f.write(f"execution.savepoint.path: {flink.savepoint_path}\n")
        flink.flink_conf_dir = conf_dir


def runner_of(options: PipelineOptions) -> str:
    """The ``RUNNERS`` name of the runner ``options`` select (a runner given as an object by its
    class name); any other name is returned as it is (``profile`` takes it as ``PORTABLE``)."""
    name = options.view_as(StandardOptions).runner
    if not (name is None or isinstance(name, str)):
        name = type(name).__name__
    if name in _LOCAL:
        return "local"
    return next((runner for runner, p in PROFILES.items() if p.beam_runner == name), name)


def _flink_job_settings(options: PipelineOptions) -> None:
    """What the streaming job needs on Flink for its results to be right, set whatever the
    command gave (``runner_flags`` passes the same; a bare command gets them here):

    * streaming mode;
    * checkpoints, every ``DEFAULT_CHECKPOINTING_INTERVAL_MS`` unless an interval is given:
      the portable source acknowledges Pub/Sub messages only at checkpoints, so without them
      every message is redelivered after its ack deadline;
    * ``--finish_bundle_before_checkpointing``: otherwise a bundle's output is buffered in
      state while the watermark goes on (the source's first element was dropped as late in
      about 1 start in 5), and a job restored from a checkpoint read nothing for two minutes
      (its archive held none of the new events);
    * file checkpoint storage (``--state_backend=filesystem``): Flink's default keeps
      checkpoints in the job manager's memory, 5 MB of state per task at most (a 100k-event
      demo failed every checkpoint and restarted in a loop); without
      ``--state_backend_storage_path`` a fresh temporary folder on the submitting machine
      (fine for a one-machine cluster; a cluster of several machines needs a shared path);
    * a given ``--state_backend_storage_path`` keeps its checkpoints after the job ends
      (``--externalized_checkpoints_enabled``, retained on cancellation), so the job started
      again with the same command resumes from the newest one (``_resume``);
    * ``--flink_job_server_jar`` defaults to this project's (``FLINK_JOB_SERVER_JAR``, when
      built: Beam would otherwise fetch a shaded jar this registry does not serve);
    * one checkpoint in flight (``--max_concurrent_checkpoints=1``) and Python workers not
      kept across job restarts (``--environment_cache_millis=0``): the source acknowledges a
      bundle's messages after three later checkpoint notices (``transforms.pubsub_io.AckLedger``),
      which is safe only when each notice is a later checkpoint than the one before and no
      worker carries filed acknowledgements from before a restore. Other values raise
      ``ValueError``. A checkpoint interval over ``ACK_DEADLINE_S / 4`` is logged as a
      warning: acknowledgements trail pulls by about four intervals, and messages not
      acknowledged within the subscription's ack deadline come back (as duplicates).
    """
    options.view_as(StandardOptions).streaming = True
    flink = options.view_as(FlinkJobOptions)
    if flink.max_concurrent_checkpoints not in (None, 1):
        raise ValueError(
            f"--max_concurrent_checkpoints={flink.max_concurrent_checkpoints}: the job needs 1 "
            "(its source acknowledges messages after three later checkpoint notices)"
        )
    flink.max_concurrent_checkpoints = 1
    portable = options.view_as(PortableOptions)
    if portable.environment_cache_millis:
        raise ValueError(
            f"--environment_cache_millis={portable.environment_cache_millis}: the job needs 0 "
            "(a worker kept across a restart could acknowledge messages the restore lost)"
        )
    if not flink.checkpointing_interval or flink.checkpointing_interval <= 0:
        flink.checkpointing_interval = DEFAULT_CHECKPOINTING_INTERVAL_MS
    if flink.checkpointing_interval > ACK_DEADLINE_S * 1000 / 4:
        _LOG.warning(
            "--checkpointing_interval=%d ms: acknowledgements trail pulls by about four intervals, "
            "over the %d s ack deadline of this project's subscriptions; messages will come back as "
            "duplicates",
            flink.checkpointing_interval,
            ACK_DEADLINE_S,
        )
    flink.finish_bundle_before_checkpointing = True
    flink.state_backend = flink.state_backend or "filesystem"
    if flink.state_backend_storage_path:
        flink.externalized_checkpoints_enabled = True
        flink.retain_externalized_checkpoints_on_cancellation = True
    else:
        flink.state_backend_storage_path = f"file://{tempfile.mkdtemp(prefix='flink-checkpoints-')}"
        _LOG.info(
            "checkpoints go to %s (not retained; pass --state_backend_storage_path to keep them)",
            flink.state_backend_storage_path,
        )
    runner = options.view_as(FlinkRunnerOptions)
    if not runner.flink_job_server_jar and FLINK_JOB_SERVER_JAR.exists():
        runner.flink_job_server_jar = str(FLINK_JOB_SERVER_JAR)


def prepare(options: PipelineOptions) -> str:
    """Pin the local runner to the BundleBasedDirectRunner (with its metrics fix); on Flink,
    set what the job needs (``_flink_job_settings``) and resume from a retained checkpoint by
    default (``_resume``); returns ``runner_of``."""
    runner = runner_of(options)
    if runner == "local":
        options.view_as(StandardOptions).runner = PROFILES["local"].beam_runner
        direct_runner_fix.apply()
    elif runner == "flink":
        _flink_job_settings(options)
        _resume(options)
    return runner


def prepare_batch(options: PipelineOptions) -> str:
    """A batch job (the recompute): the local runner is Beam's ``FnApiRunner`` (the portable
    in-process runner, which executes a bounded pipeline stage by stage; the
    BundleBasedDirectRunner that ``prepare`` pins for streaming is far slower on a batch
    GroupByKey); on Flink the job runs in Flink's batch mode: not forced to streaming, no
    checkpoints (a bounded job restarts from its input), this project's job server jar by
    default. Raises ``ValueError`` for ``--streaming``. Returns ``runner_of``."""
    if options.view_as(StandardOptions).streaming:
        raise ValueError("a batch job cannot run with --streaming")
    runner = runner_of(options)
    if runner == "local":
        options.view_as(StandardOptions).runner = "FnApiRunner"
    elif runner == "flink":
        flink = options.view_as(FlinkRunnerOptions)
        if not flink.flink_job_server_jar and FLINK_JOB_SERVER_JAR.exists():
            flink.flink_job_server_jar = str(FLINK_JOB_SERVER_JAR)
    return runner


@dataclass(frozen=True)
class RunnerProfile:
    """What a runner supports and needs, as the pipeline builders read it (``pipelines.streaming``,
    ``pipelines.graph``). ``docs/runners.md`` has a table of these per runner and, for each
    workaround, the upstream issue and the symptom that led to it.

    * ``native_pubsub``: Python's own ``ReadFromPubSub`` runs here (else the job reads through
      ``transforms.pubsub_io.ReadFromPubSubPortable``).
    * ``native_timestamp_attribute``: the native source is given ``--timestamp_attribute``
      (else its elements carry publish times).
    * ``stamped_watermark``: the dedup stage takes its view of the watermark from element stamps
      (``transforms.dedup``), so the source has one reader.
    * ``reader_key_groups``: the runner places a splittable DoFn's work by a hash of the
      element into key groups (``flink_key_group``), so the source's readers are salted to
      spread over the workers (``reader_placement``).
    * ``pause_outlasts_bundle_check``: the portable source waits longer than the runner's
      bundle-check period between bundles (``pull_pacing``).
    * ``metadata_side_input``: the enrichment metadata comes as a side input (else each worker
      reads the file: ``transforms.enrich.EnrichFromFile``).
    * ``periodic_impulse``: ``PeriodicImpulse`` runs here (metadata refresh by side input).
    * ``triggered_side_inputs``: a triggered global-window side input is accepted.
    * ``trigger_read_once_side_input``: a side input read once still needs the re-firing trigger
      (streaming refuses an untriggered ``GroupByKey``).
    * ``timer_output_holds_watermark``: the watermark waits for the output of event-time timers
      (else the top stages keep a window's state ``transforms.top.CLEANUP_GRACE_S`` longer:
      ``top_cleanup_grace_s``).
    * ``sets_parallelism``: ``--parallelism`` sets how many subtasks run each stage.
    * ``test_stream_one_output``: a ``TestStream`` has one output only ("expected one element"),
      so payloads and metadata snapshots cannot share one.
    * ``test_stream_processing_time``: a ``TestStream`` may advance processing time (else it
      takes none between its events: the arrival times the elements carry are the only clock).
    * ``test_stream_round_robin``: the runner runs a ``TestStream`` as a source of its own and
      deals its elements to the next stage's subtasks round robin, out of their order.
    * ``waits_with_deadline``: a job's result waits for its end within a deadline
      (``wait_until_finish(duration=...)``).
    * ``one_worker_thread``: the job runs in one worker thread, where every key of a stateful
      stage costs a bundle (default shards ``pipelines.options.LOCAL_SHARDS``, else
      ``DISTRIBUTED_SHARDS``).
    * ``wall_clock_watermark``: the source's watermark is the wall clock, whatever the events'
      times (the native source on the local runner): a replay of old event times is all late.
    * ``metrics_in_result``: the job's Beam metrics come back through ``result.metrics()``
      (portable runners here hand back none: read them from the runner instead, e.g. Flink's REST).

    The last five are what the scenario runner (``viewcounts.commands.scenario``) reads.
    """

    beam_runner: str  # the --runner value
    native_pubsub: bool
    native_timestamp_attribute: bool
    stamped_watermark: bool
    reader_key_groups: bool
    pause_outlasts_bundle_check: bool
    metadata_side_input: bool
    periodic_impulse: bool
    triggered_side_inputs: bool
    trigger_read_once_side_input: bool
    timer_output_holds_watermark: bool
    sets_parallelism: bool
    test_stream_one_output: bool
    test_stream_processing_time: bool
    test_stream_round_robin: bool
    waits_with_deadline: bool
    one_worker_thread: bool
    wall_clock_watermark: bool
    metrics_in_result: bool


# The capability matrix: one row per ``RunnerProfile`` field, one column per runner, the last
# any other (portable) runner: the portable source with one reader, metadata read by each
# worker. docs/runners.md's "Capabilities" table states the same (tests/test_runner_home.py).
_COLUMNS = {
    "local": "BundleBasedDirectRunner",
    "prism": "PrismRunner",
    "flink": "FlinkRunner",
    "dataflow": "DataflowRunner",
    "": "",
}
# fmt: off
_CAPABILITIES = (
    # capability                     local  prism  flink  dataflow  any other
    ("native_pubsub",                 True,  False, False, True,     False),
    ("native_timestamp_attribute",    False, False, False, True,     False),
    ("stamped_watermark",             False, True,  False, False,    True),
    ("reader_key_groups",             False, False, True,  False,    False),
    ("pause_outlasts_bundle_check",   False, False, True,  False,    False),
    ("metadata_side_input",           True,  False, False, True,     False),
    ("periodic_impulse",              False, False, True,  True,     True),
    ("triggered_side_inputs",         True,  False, True,  True,     True),
    ("trigger_read_once_side_input",  True,  False, False, False,    False),
    ("timer_output_holds_watermark",  False, True,  True,  True,     True),
    ("sets_parallelism",              False, False, True,  False,    False),
    ("test_stream_one_output",        False, False, True,  False,    False),
    ("test_stream_processing_time",   True,  True,  False, True,     True),
    ("test_stream_round_robin",       False, False, True,  False,    False),
    ("waits_with_deadline",           False, True,  True,  True,     True),
    ("one_worker_thread",             True,  False, False, False,    False),
    ("wall_clock_watermark",          True,  False, False, False,    False),
    ("metrics_in_result",             True,  False, False, True,     False),
)
# fmt: on


def _column(i: int, beam_runner: str) -> RunnerProfile:
    """Column ``i`` of the matrix as a profile (a missing or unknown capability: TypeError)."""
    return RunnerProfile(beam_runner, **{row[0]: row[1 + i] for row in _CAPABILITIES})


PROFILES: dict[str, RunnerProfile] = {
    runner: _column(i, beam_runner) for i, (runner, beam_runner) in enumerate(_COLUMNS.items()) if runner
}
PORTABLE = _column(len(_COLUMNS) - 1, "")


def profile(runner: str) -> RunnerProfile:
    """The ``RunnerProfile`` of a ``runner_of`` name; ``PORTABLE`` for a runner not in ``RUNNERS``."""
    return PROFILES.get(runner, PORTABLE)


def pull_pacing(runner: str, max_bundle_time_ms: int | None = None) -> dict[str, float]:
    """``ReadFromPubSubPortable`` pacing on ``runner``: ``max_pull_s`` of pulling per bundle and
    ``pause_s`` between bundles, ``{}`` for the source's defaults. Where the pause must outlast
    one bundle-check period (``pause_outlasts_bundle_check``: ``--max_bundle_time_ms``, Beam's
    default 1 s) it is that period plus 0.5 s, at least 1.5 s; pulls last twice the pause, so
    the share of time spent pulling stays at 2/3 (docs/runners.md, "Source pause")."""
    if profile(runner).pause_outlasts_bundle_check:
        pause_s = max(1.5, (max_bundle_time_ms or 1000) / 1000 + 0.5)
        return {"max_pull_s": 2 * pause_s, "pause_s": pause_s}
    return {}


def reader_placement(options: PipelineOptions, runner: str) -> dict:
    """``ReadFromPubSubPortable``'s ``key_group`` and ``key_groups`` on ``runner``: where it
    places readers by key group (``reader_key_groups``), ``flink_key_group`` over
    ``--max_parallelism`` groups, else Flink's default for ``--parallelism``; ``{}`` elsewhere."""
    if not profile(runner).reader_key_groups:
        return {}
    flink = options.view_as(FlinkRunnerOptions)
    groups = (
        flink.max_parallelism if flink.max_parallelism > 0 else flink_default_max_parallelism(max(1, flink.parallelism))
    )
    return {"key_group": functools.partial(flink_key_group, max_parallelism=groups), "key_groups": groups}


def top_cleanup_grace_s(options: PipelineOptions) -> int | None:
    """``transforms.top.TopEntities``' ``cleanup_grace_s`` for the job of ``options``:
    ``CLEANUP_GRACE_S`` where the watermark does not wait for timers' output
    (``timer_output_holds_watermark``), else None (clear at the drop time: a processing-time
    timer left at the end of a bounded job's input kept an embedded Flink job from ending)."""
    from transforms.top import CLEANUP_GRACE_S

    return None if profile(runner_of(options)).timer_output_holds_watermark else CLEANUP_GRACE_S


# Flink's default max parallelism (the number of key groups) for operators of parallelism
# up to 85: KeyGroupRangeAssignment.computeDefaultMaxParallelism
FLINK_DEFAULT_MAX_PARALLELISM = 128


def flink_default_max_parallelism(parallelism: int) -> int:
    """Flink's default max parallelism (number of key groups) of an operator of ``parallelism``
    (``KeyGroupRangeAssignment.computeDefaultMaxParallelism``): ``1.5 * parallelism`` rounded
    up to a power of two, within ``[128, 32768]``."""
    wanted = parallelism + parallelism // 2
    return min(max(1 << max(0, (wanted - 1).bit_length()), 128), 32768)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _flink_murmur(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``: a non-negative int."""
    m = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & m

    code = rotl((code * 0xCC9E2D51) & m, 15)
    code = rotl((code * 0x1B873593) & m, 13)
    code = ((code * 5 + 0xE6546B64) & m) ^ 4
    code ^= code >> 16
    code = (code * 0x85EBCA6B) & m
    code ^= code >> 13
    code = (code * 0xC2B2AE35) & m
    code ^= code >> 16
    if code >= 1 << 31:
        code -= 1 << 32
    return code if code >= 0 else (-code if code != -(1 << 31) else 0)


def flink_key_group(element: str, max_parallelism: int = FLINK_DEFAULT_MAX_PARALLELISM) -> int:
    """The Flink key group of a ``str`` element of a splittable DoFn on Beam's Flink runner,
    which keys that work by the element's encoding (``SdfFlinkKeyKeySelector``):
    ``FlinkKey.hashCode`` (Guava's murmur3_128 of the element's nested ``StringUtf8Coder``
    encoding, first 4 bytes) through ``KeyGroupRangeAssignment.assignToKeyGroup``. The
    subtask that runs it is ``key group * parallelism // max_parallelism``. Checked against
    the Java classes of the job server jar (tests/test_pubsub_io.py)."""
    data = element.encode("utf-8")
    code = int.from_bytes(mmh3.hash_bytes(_varint(len(data)) + data)[:4], "little", signed=True)
    return _flink_murmur(code) % max_parallelism
