"""``pipelines.runners.runner_flags`` and ``prepare``: what each runner is given (no job is run)."""

import os
import re

import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, StandardOptions

from pipelines.runners import (
    DEFAULT_CHECKPOINTING_INTERVAL_MS,
    FLINK_JOB_SERVER_JAR,
    FlinkJobOptions,
    prepare,
    prepare_batch,
    runner_flags,
)
from viewcounts.commands.submit import check_submittable

pytestmark = pytest.mark.skipif(not os.path.exists(FLINK_JOB_SERVER_JAR), reason="needs `make flink-job-server`")


def _value(flags: list[str], name: str) -> str | None:
    return next((f.split("=", 1)[1] for f in flags if f.startswith(f"--{name}=")), None)


def test_flink_checkpoints_go_to_files_even_without_a_checkpoint_folder():
    # Flink's default storage keeps checkpoints in memory, 5 MB per task at most: a 100k-event
    # demo failed every checkpoint there and restarted in a loop
    flags = runner_flags("flink")
    assert _value(flags, "state_backend") == "filesystem"
    storage = _value(flags, "state_backend_storage_path")
    assert storage.startswith("file://") and os.path.isdir(storage[len("file://") :])
    assert "--externalized_checkpoints_enabled" not in flags


def test_flink_checkpoints_are_retained_in_a_given_folder(tmp_path):
    flags = runner_flags("flink", checkpoint_dir=str(tmp_path))
    assert _value(flags, "state_backend_storage_path") == f"file://{tmp_path}"
    assert {"--externalized_checkpoints_enabled", "--retain_externalized_checkpoints_on_cancellation"} <= set(flags)


def _prepared(*argv: str):
    options = PipelineOptions(["--runner=FlinkRunner", "--flink_master=localhost:8081", *argv])
    assert prepare(options) == "flink"
    return options


def test_a_bare_flink_command_gets_what_the_job_needs():
    options = _prepared("--environment_type=EXTERNAL", "--environment_config=localhost:50000")
    flink = options.view_as(FlinkJobOptions)
    assert options.view_as(StandardOptions).streaming
    assert flink.finish_bundle_before_checkpointing is True
    assert flink.checkpointing_interval == DEFAULT_CHECKPOINTING_INTERVAL_MS
    assert flink.state_backend == "filesystem"
    storage = flink.state_backend_storage_path
    assert storage.startswith("file://") and os.path.isdir(storage[len("file://") :])
    assert not flink.externalized_checkpoints_enabled  # a temporary folder: nothing to resume from
    assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == str(FLINK_JOB_SERVER_JAR)
    # what reaches the Java runner: the options as the portable runner sends them
    sent = options.get_all_options(drop_default=True)
    assert sent["finish_bundle_before_checkpointing"] is True and sent["checkpointing_interval"] == 5000


def test_a_batch_job_is_not_forced_to_streaming_and_runs_on_the_fn_api_runner_locally():
    flink = PipelineOptions(["--runner=FlinkRunner", "--flink_master=localhost:8081"])
    assert prepare_batch(flink) == "flink"
    assert not flink.view_as(StandardOptions).streaming
    assert flink.view_as(FlinkJobOptions).checkpointing_interval is None
    assert flink.view_as(FlinkRunnerOptions).flink_job_server_jar == str(FLINK_JOB_SERVER_JAR)
    for local in ([], ["--runner=DirectRunner"], ["--runner=BundleBasedDirectRunner"]):
        options = PipelineOptions(local)
        assert prepare_batch(options) == "local"
        assert options.view_as(StandardOptions).runner == "FnApiRunner"
    with pytest.raises(ValueError):
        prepare_batch(PipelineOptions(["--runner=FlinkRunner", "--streaming"]))


def test_a_given_checkpoint_folder_is_retained_and_resumed_from(tmp_path):
    options = _prepared(f"--state_backend_storage_path=file://{tmp_path}", "--checkpointing_interval=2000")
    flink = options.view_as(FlinkJobOptions)
    assert flink.externalized_checkpoints_enabled and flink.retain_externalized_checkpoints_on_cancellation
    assert flink.checkpointing_interval == 2000 and flink.state_backend_storage_path == f"file://{tmp_path}"
    assert flink.savepoint_path is None  # no checkpoint there yet
    (tmp_path / "job" / "chk-3").mkdir(parents=True)
    (tmp_path / "job" / "chk-3" / "_metadata").write_bytes(b"x")
    again = _prepared(f"--state_backend_storage_path=file://{tmp_path}")
    assert again.view_as(FlinkJobOptions).savepoint_path == str(tmp_path / "job" / "chk-3")


def test_a_zero_checkpoint_interval_is_replaced():
    # acks happen at checkpoints: a job without them would have every message redelivered
    assert _prepared("--checkpointing_interval=0").view_as(FlinkJobOptions).checkpointing_interval == 5000


def test_prepare_leaves_other_runners_alone():
    options = PipelineOptions(["--runner=PrismRunner"])
    prepare(options)
    assert options.view_as(FlinkJobOptions).finish_bundle_before_checkpointing is None


@pytest.mark.parametrize(
    "argv, refused",
    [
        (["--runner=FlinkRunner", "--flink_master=[local]", "--environment_type=EXTERNAL"], "remote --flink_master"),
        (
            ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--environment_type=LOOPBACK"],
            "outside the launcher",
        ),
        (["--runner=FlinkRunner", "--flink_master=localhost:8081"], "DOCKER"),
        (["--runner=PrismRunner"], "FlinkRunner"),
    ],
)
def test_detached_submission_refuses_jobs_that_would_die_with_their_launcher(argv, refused):
    with pytest.raises(ValueError, match=re.escape(refused)):
        check_submittable(argv)


def test_detached_submission_finds_the_cluster_and_the_job_by_name():
    argv = [
        "--runner=FlinkRunner",
        "--flink_master=flink-jm:8081",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
        "--job_name=counts",
    ]
    assert check_submittable(argv) == ("http://flink-jm:8081", "counts")
    assert check_submittable([*argv[:1], "--flink_master=https://jm/", *argv[2:]])[0] == "https://jm"


@pytest.mark.parametrize("flag", ["--max_concurrent_checkpoints=2", "--environment_cache_millis=60000"])
def test_flink_refuses_flags_that_break_acknowledgement_after_a_checkpoint(flag):
    """The source acknowledges after three later checkpoint notices (pubsub_io.AckLedger):
    sound with one checkpoint in flight and no worker kept across a restart."""
    with pytest.raises(ValueError, match=flag.split("=")[0]):
        prepare(PipelineOptions(["--runner=FlinkRunner", flag]))


def test_flink_runs_one_checkpoint_at_a_time():
    options = PipelineOptions(["--runner=FlinkRunner"])
    prepare(options)
    assert options.view_as(FlinkJobOptions).max_concurrent_checkpoints == 1
    assert options.get_all_options()["max_concurrent_checkpoints"] == 1  # passed on to Flink


def test_the_sources_pause_outlasts_flinks_bundle_check_period():
    """Reported by review: a --max_bundle_time_ms above the fixed 1.5 s pause would hold the
    source's watermark (transforms.pubsub_io module docstring)."""
    from pipelines.runners import pull_pacing

    assert pull_pacing("flink") == {"max_pull_s": 3.0, "pause_s": 1.5}
    for ms in (500, 1000, 3000, 10_000):
        assert pull_pacing("flink", ms)["pause_s"] > ms / 1000
    assert pull_pacing("local", 3000) == {}
