"""``pipelines.runners.runner_flags``: what each runner is given (no job is run)."""
import os

import pytest

from pipelines.runners import FLINK_JOB_SERVER_JAR, runner_flags

pytestmark = pytest.mark.skipif(not os.path.exists(FLINK_JOB_SERVER_JAR), reason="needs `make flink-job-server`")


def _value(flags: list[str], name: str) -> str | None:
    return next((f.split("=", 1)[1] for f in flags if f.startswith(f"--{name}=")), None)


def test_flink_checkpoints_go_to_files_even_without_a_checkpoint_folder():
    # Flink's default storage keeps checkpoints in memory, 5 MB per task at most: a 100k-event
    # demo failed every checkpoint there and restarted in a loop
    flags = runner_flags("flink")
    assert _value(flags, "state_backend") == "filesystem"
    storage = _value(flags, "state_backend_storage_path")
    assert storage.startswith("file://") and os.path.isdir(storage[len("file://"):])
    assert "--externalized_checkpoints_enabled" not in flags


def test_flink_checkpoints_are_retained_in_a_given_folder(tmp_path):
    flags = runner_flags("flink", checkpoint_dir=str(tmp_path))
    assert _value(flags, "state_backend_storage_path") == f"file://{tmp_path}"
    assert {"--externalized_checkpoints_enabled", "--retain_externalized_checkpoints_on_cancellation"} <= set(flags)


def test_flink_without_checkpoints_has_no_checkpoint_storage():
    flags = runner_flags("flink", checkpointing_interval_ms=None)
    assert _value(flags, "checkpointing_interval") is None and _value(flags, "state_backend") is None
