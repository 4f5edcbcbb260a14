"""Detached submission of the streaming job to a Flink session cluster.

``python -m viewcounts.commands.submit FLAGS`` (or ``viewcounts submit FLAGS``) builds
``pipelines.streaming`` from the same flags as ``python -m pipelines.streaming``, submits
it through Beam's Flink job server in detached mode (``--detached``, Java's
``attachedMode=false``: the job server hands the job graph and its jars to the cluster's
REST API and returns), waits until the job is healthy on the cluster (every task RUNNING,
a first checkpoint completed, no exception recorded), prints its Flink job id and exits;
the job server stops with it and the job keeps running on the cluster. A launcher stopped
before it printed the id (SIGTERM, Ctrl-C) cancels the job it was submitting and stops
the job server, so a retry never leaves two jobs reading one subscription. The
Python workers must live outside the launcher: ``--environment_type=EXTERNAL`` (a worker
pool beside each task manager) or ``PROCESS``; LOOPBACK is refused.

Stop the job with a savepoint with Flink's REST API or CLI (``flink stop --savepointPath
DIR JOB_ID``) and resume it by submitting again with ``--savepoint_path=<savepoint>``
(possibly another ``--parallelism``).
"""

from __future__ import annotations

import pipelines  # noqa: F401  (first: importing it hides the unfixable grpcio warning)

# isort: split

import json
import logging
import signal
import sys
import time
import urllib.request
import uuid

from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
)

from pipelines.runners import runner_of

_LOG = logging.getLogger(__name__)
_LOCAL_MASTERS = ("[local]", "[auto]")
_ENDED = ("FAILED", "CANCELED", "FINISHED", "SUSPENDED")


class SubmitError(RuntimeError):
    """The job was refused, failed at start, or did not reach RUNNING in time."""


def _rest_url(master: str) -> str:
    master = master.strip().rstrip("/")
    return master if master.startswith(("http://", "https://")) else f"http://{master}"


def _jobs_named(rest_url: str, name: str) -> list[dict]:
    with urllib.request.urlopen(f"{rest_url}/jobs/overview", timeout=10) as resp:
        return [j for j in json.loads(resp.read())["jobs"] if j["name"] == name]


def check_submittable(argv: list[str]) -> tuple[str, str]:
    """``(rest url, job name)`` of a detached submission of ``argv``. Raises ``ValueError``
    unless the flags select the Flink runner with a remote ``--flink_master`` and Python
    workers outside the launcher (EXTERNAL or PROCESS)."""
    options = PipelineOptions(argv)
    if runner_of(options) != "flink":
        raise ValueError("detached submission is for --runner=FlinkRunner")
    master = options.view_as(FlinkRunnerOptions).flink_master
    if master in _LOCAL_MASTERS:
        raise ValueError("detached submission needs a remote --flink_master=host:port (a session cluster)")
    env = (options.view_as(PortableOptions).environment_type or "").upper()
    if env not in ("EXTERNAL", "PROCESS"):
        raise ValueError(
            f"--environment_type={env or '(default: DOCKER)'}: the job's Python workers must run "
            f"outside the launcher and without Docker here: EXTERNAL (a worker pool, "
            f"--environment_config=host:port) or PROCESS"
        )
    name = options.view_as(GoogleCloudOptions).job_name
    return _rest_url(master), name


def submit(argv: list[str], timeout_s: float = 300.0) -> str:
    """Submit ``pipelines.streaming`` with ``argv`` detached; returns the Flink job id once
    the job is healthy (``_health``: every task RUNNING, a checkpoint completed, no
    exception). A ``--job_name`` is added when none is given (``viewcounts-<random>``: the
    job is found by its name on the cluster; a name may be
    reused once the job before it has ended, as when resuming from a savepoint). Raises
    ``ValueError`` for flags that cannot run detached (``check_submittable``) and
    ``SubmitError`` when a job of that name still runs, or the job is refused, ends, records
    an exception (it failed and restarted), or is not healthy within ``timeout_s``. A job
    submitted by a call that raises (``SubmitError``, or an interruption: ``KeyboardInterrupt``,
    ``SystemExit``) is cancelled, so a retry never leaves two jobs reading one subscription."""
    from pipelines.streaming import build_pipeline

    if not any(a.startswith("--job_name") for a in argv):
        argv = [*argv, f"--job_name=viewcounts-{uuid.uuid4().hex[:12]}"]
    rest_url, name = check_submittable(argv)
    before = _jobs_named(rest_url, name)
    if any(j["state"] not in _ENDED for j in before):
        raise SubmitError(f"the cluster already runs a job named {name!r}; stop it first or pick another --job_name")
    known = {b["jid"] for b in before}
    deadline = time.monotonic() + timeout_s
    try:
        result = build_pipeline([*argv, "--detached"]).run()
        while time.monotonic() < deadline:
            jobs = [j for j in _jobs_named(rest_url, name) if j["jid"] not in known]
            if jobs:
                job = max(jobs, key=lambda j: j["start-time"])
                if job["state"] in _ENDED:
                    raise SubmitError(
                        f"job {job['jid']} ({name}) is {job['state']}; see the cluster's logs and "
                        f"{rest_url}/jobs/{job['jid']}/exceptions"
                    )
                if job["state"] == "RUNNING" and _health(rest_url, job["jid"]):
                    _LOG.info("Flink job %s (%s) is running on %s", job["jid"], name, rest_url)
                    return job["jid"]
            elif str(result.state) in ("FAILED", "CANCELLED", "STOPPED"):
                raise SubmitError(f"the job server reports the submission {result.state}; see the log above")
            time.sleep(1)
        raise SubmitError(
            f"job {name} not healthy on {rest_url} within {timeout_s:.0f}s "
            f"(every task RUNNING and a first checkpoint completed)"
        )
    except BaseException as exc:  # a job that did not come up (or whose launcher was stopped) must not run on
        _cancel_new_jobs(rest_url, name, known)
        if isinstance(exc, OSError):
            raise SubmitError(f"the cluster's REST API failed while waiting for job {name}: {exc}") from exc
        raise


def _health(rest_url: str, job_id: str) -> bool:
    """True once every task of ``job_id`` is RUNNING and a checkpoint has completed; raises
    ``SubmitError`` when the job has recorded an exception (a task failed, so the job restarted
    or will), with the exception's first line."""
    with urllib.request.urlopen(f"{rest_url}/jobs/{job_id}/exceptions", timeout=10) as resp:
        history = json.loads(resp.read()).get("exceptionHistory", {}).get("entries", [])
    if history:
        first = (history[0].get("stacktrace") or history[0].get("exceptionName") or "").splitlines()[:1]
        raise SubmitError(
            f"job {job_id} failed after it started: {first[0] if first else 'see the cluster'}; "
            f"{rest_url}/jobs/{job_id}/exceptions"
        )
    with urllib.request.urlopen(f"{rest_url}/jobs/{job_id}", timeout=10) as resp:
        if not all(v["status"] == "RUNNING" for v in json.loads(resp.read())["vertices"]):
            return False
    with urllib.request.urlopen(f"{rest_url}/jobs/{job_id}/checkpoints", timeout=10) as resp:
        return json.loads(resp.read())["counts"]["completed"] >= 1


def _cancel_new_jobs(rest_url: str, name: str, known: set[str]) -> None:
    """Cancel every job named ``name`` that is not in ``known`` and has not ended (best effort)."""
    try:
        jobs = _jobs_named(rest_url, name)
    except OSError as exc:
        _LOG.warning("could not list the cluster's jobs to cancel %s: %s", name, exc)
        return
    for job in jobs:
        if job["jid"] not in known and job["state"] not in _ENDED:
            _cancel(rest_url, job["jid"])


def _cancel(rest_url: str, job_id: str) -> None:
    """Cancel ``job_id`` (best effort: logged when the cluster refuses)."""
    try:
        req = urllib.request.Request(f"{rest_url}/jobs/{job_id}?mode=cancel", method="PATCH")
        urllib.request.urlopen(req, timeout=10).close()
        _LOG.warning("cancelled job %s, which did not come up", job_id)
    except OSError as exc:
        _LOG.warning("could not cancel job %s: %s", job_id, exc)


def main(argv: list[str] | None = None) -> int:
    """Submit, print the Flink job id on stdout; errors on stderr, exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # SIGTERM unwinds like Ctrl-C: the job being submitted is cancelled and Beam's job server
    # (a Java process, stopped by an ``atexit`` hook) does not outlive the launcher
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        job_id = submit(sys.argv[1:] if argv is None else argv)
    except (ValueError, SubmitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(job_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
