"""Fixtures: the real Bigtable and Pub/Sub emulators, started once per session, stopped by PID.
At the session's end, the Beam job servers the session started and left running are stopped by
PID and named in the summary: FlinkRunner starts one as a child ``java -jar ...job-server....jar``
of the process that runs the pipeline and keeps it for that process's life, and when that
process is a job the tests started and ended, the job server outlives it (its parent is then
init). The session's processes are told apart by a mark in their environment
(``SESSION_MARK``), set when this module is imported, before any test starts one."""

from __future__ import annotations

import contextlib
import os
import uuid

import psutil
import pytest

from viewcounts.local.emulators import bigtable_emulator, pubsub_emulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CASES = os.path.join(os.path.dirname(REPO), "shared", "cases")
# every process this session starts, and those they start, inherit the mark
SESSION_MARK = "VIEWCOUNTS_TEST_SESSION"
SESSION_ID = os.environ[SESSION_MARK] = uuid.uuid4().hex


def _serve(emulator):
    """Start an emulator, point its client variable at it for the session, stop it by PID."""
    with emulator as emu:
        old = os.environ.get(emu.env_var)
        os.environ[emu.env_var] = emu.host
        yield emu.host
        if old is None:
            del os.environ[emu.env_var]
        else:
            os.environ[emu.env_var] = old


@pytest.fixture(scope="session")
def bigtable_host():
    yield from _serve(bigtable_emulator())


@pytest.fixture(scope="session")
def pubsub_host():
    yield from _serve(pubsub_emulator())


@pytest.fixture
def table(bigtable_host):
    """A fresh table with the aggregates family: ``(project, instance, table)``."""
    from viewcounts.local.provision import create_table

    name = f"t-{uuid.uuid4().hex[:10]}"
    create_table("test-project", "test-instance", name)
    return "test-project", "test-instance", name


def beam_job_servers(session_id: str) -> list[psutil.Process]:
    """This user's processes that are Beam job servers started within the session ``session_id``:
    ``SESSION_MARK`` is ``session_id`` in their environment, and they run with ``-jar`` and a jar
    whose file name holds ``job-server`` (Beam's ``JavaJarServer`` launch, the project's
    ``build/flink-job-server/flink-job-server.jar`` and Beam's released ones alike). Processes
    of other users, and those that end while being looked at, are left out."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.uids().real != os.getuid() or p.environ().get(SESSION_MARK) != session_id:
                continue
            args = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        jars = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-jar"]
        if any("job-server" in os.path.basename(jar) for jar in jars):
            found.append(p)
    return found


def stop(processes: list[psutil.Process], grace_s: float = 10.0) -> None:
    """SIGTERM each of ``processes``, then SIGKILL those still running after ``grace_s`` seconds,
    and wait up to ``grace_s`` more for those to end."""
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


STOPPED: list[int] = []  # PIDs of the job servers stopped at the session's end


def pytest_sessionfinish(session):
    """Stop the Beam job servers this session started and left running."""
    servers = beam_job_servers(SESSION_ID)
    STOPPED.extend(p.pid for p in servers)
    stop(servers)


def pytest_terminal_summary(terminalreporter):
    """Name the job servers ``pytest_sessionfinish`` stopped."""
    if STOPPED:
        terminalreporter.write_line(
            f"stopped {len(STOPPED)} Beam job server(s) this session left running: PIDs {STOPPED}"
        )
