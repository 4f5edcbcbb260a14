"""Run ``pipelines.streaming`` as a real job process against the emulators, for runner tests.

``Deployment`` holds one test's topic, subscription, table and folders; ``start_job``
launches ``python -m pipelines.streaming`` in its own process group (so the Flink job
server it starts dies with it), ``kill`` stops the group, ``publish`` replays flights
with a manifest per call, ``converged`` compares the stored aggregates with the polars
reference over every manifest so far.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import orjson

from pipelines import runners
from query.stats import StatsReader
from schemas.archive import local_lines
from schemas.restart_markers import RESTARTS_FOLDER
from viewcounts.commands import replay
from viewcounts.commands.reconcile import expected_aggregates, reconcile, stored_aggregates
from viewcounts.local import provision

PROJECT, INSTANCE = "test-project", "test-instance"


@dataclass
class Deployment:
    folder: str
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    manifests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        provision.create_topic_and_subscription(PROJECT, self.topic, self.subscription)
        provision.create_table(PROJECT, INSTANCE, self.table)

    topic = property(lambda self: f"events-{self.name}")
    subscription = property(lambda self: f"events-{self.name}-sub")
    table = property(lambda self: f"t-{self.name}")

    def job_flags(self, *extra: str) -> list[str]:
        return [
            f"--input_subscription=projects/{PROJECT}/subscriptions/{self.subscription}",
            f"--bigtable_project={PROJECT}",
            f"--bigtable_instance={INSTANCE}",
            f"--bigtable_table={self.table}",
            f"--archive_path={self.folder}/archive",
            f"--dead_letter_path={self.folder}/dead-letters",
            "--early_firing_s=2",
            *extra,
        ]

    def start_job(self, *flags: str) -> subprocess.Popen:
        log = open(f"{self.folder}/job-{len(glob.glob(f'{self.folder}/job-*.log'))}.log", "wb")
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.streaming", *self.job_flags(*flags)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def publish(self, events: list[dict], plan: replay.ReplayPlan) -> dict:
        manifest = f"{self.folder}/manifest-{len(self.manifests)}.jsonl"
        self.manifests.append(manifest)
        return replay.publish(events, PROJECT, self.topic, plan, manifest, progress=False)

    def expected(self, manifests: list[str] | None = None) -> dict:
        """The polars reference over ``manifests`` (default: every manifest so far)."""
        merged = f"{self.folder}/manifest-merged.jsonl"
        with open(merged, "wb") as out:
            for m in self.manifests if manifests is None else manifests:
                with open(m, "rb") as f:
                    out.write(f.read())
        return expected_aggregates(merged)

    def stored(self) -> dict:
        """Every stored aggregate, in the shape of ``expected``."""
        with StatsReader(PROJECT, INSTANCE, self.table) as reader:
            return stored_aggregates(reader)

    def mismatches(self, expected: dict) -> list:
        return reconcile(expected, self.stored())

    def converged(self, timeout_s: float, job: subprocess.Popen | None = None) -> tuple[list, float]:
        """Wait until every aggregate equals the reference; returns (mismatches, seconds waited)."""
        expected = self.expected()
        started = time.monotonic()
        while True:
            mismatches = self.mismatches(expected)
            if not mismatches or time.monotonic() - started > timeout_s:
                return mismatches, time.monotonic() - started
            if job is not None and job.poll() is not None:
                raise AssertionError(f"the job exited with {job.returncode}; see {self.folder}/job-*.log")
            time.sleep(1)


def archive_missing(folder: str, events: list[dict]) -> int:
    """How many of the published event ids the raw archive lacks."""
    archived = {orjson.loads(line)["event_id"] for line in local_lines(f"{folder}/archive")}
    return len({e["event_id"] for e in events} - archived)


def restart_markers(folder: str) -> list[str]:
    """The restart markers under the deployment's archive (``pipelines.restarts``)."""
    return sorted(glob.glob(f"{folder}/archive/{RESTARTS_FOLDER}/*.json"))


def kill(job: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the job's whole process group (the job process, its Flink job server, workers)."""
    try:
        os.killpg(job.pid, sig)
    except ProcessLookupError:
        pass
    job.wait(timeout=60)


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest completed retained checkpoint (``<dir>/<job id>/chk-N`` with ``_metadata``)."""
    return runners.latest_checkpoint(checkpoint_dir)
