"""Start and stop the real Google Pub/Sub and Bigtable emulators by PID, on free ports.

``Emulator`` is a context manager: ``with bigtable_emulator() as emu: emu.host`` gives
``127.0.0.1:PORT``; leaving it stops the process group it started. The binaries come with
the gcloud CLI (README); when they are missing, ``EmulatorMissing`` says so.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

_LOG = logging.getLogger(__name__)
SDK_ROOT = os.environ.get("CLOUDSDK_ROOT", "/usr/lib/google-cloud-sdk")
PUBSUB_BIN = f"{SDK_ROOT}/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
BIGTABLE_BIN = f"{SDK_ROOT}/platform/bigtable-emulator/cbtemulator"


class EmulatorMissing(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started us dies (Linux),
    so a killed test run or demo never leaves an emulator behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(argv: list[str], name: str, ready, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """Start ``argv`` in its own process group (it dies with this process), its output to a
    temporary log, and wait until ``ready()`` returns without raising ``OSError``.
    Returns ``(process, log path)``. Raises ``RuntimeError`` if it exits first and
    ``TimeoutError`` (after stopping it) if it is not ready within ``timeout_s`` seconds."""
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log: {log.name}")
        try:
            ready()
            _LOG.info("%s up (pid %d)", name, proc.pid)
            return proc, log.name
        except OSError:
            time.sleep(0.2)
    stop_process(proc)
    raise TimeoutError(f"{name} was not ready within {timeout_s}s; log: {log.name}")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Stop a process group started in a session of its own (``start_process``,
    ``viewcounts.local.flink``) by its PID: ``sig`` to the group, then SIGKILL when it is still
    there after ``timeout_s`` seconds. Nothing when ``proc`` is None or has ended."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


class StartedProcess:
    """A context manager around one process group this process starts: the subclass's
    ``start()`` (which sets ``proc``, by ``start_process``) on entering, returning ``self``;
    ``stop()`` (``stop_process``) on leaving."""

    proc: subprocess.Popen | None = None

    def start(self) -> StartedProcess:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Emulator(StartedProcess):
    name: str
    argv: list[str]
    port: int
    env_var: str
    startup_timeout_s: float = 90.0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Emulator:
        if not os.path.exists(self.argv[0]):
            raise EmulatorMissing(
                f"the {self.name} emulator is not installed at {self.argv[0]} "
                "(it ships with the Google Cloud CLI; see README)"
            )

        def listening() -> None:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()

        self.proc, self.log_path = start_process(self.argv, f"{self.name}-emulator", listening, self.startup_timeout_s)
        return self


def pubsub_emulator(port: int | None = None) -> Emulator:
    port = port or free_port()
    return Emulator("pubsub", [PUBSUB_BIN, "--host=127.0.0.1", f"--port={port}"], port, "PUBSUB_EMULATOR_HOST")


def bigtable_emulator(port: int | None = None) -> Emulator:
    port = port or free_port()
    return Emulator(
        "bigtable",
        [BIGTABLE_BIN, "-host", "127.0.0.1", "-port", str(port)],
        port,
        "BIGTABLE_EMULATOR_HOST",
        startup_timeout_s=30.0,
    )
