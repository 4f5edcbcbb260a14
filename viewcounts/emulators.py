"""Start and stop the real Google Pub/Sub and Bigtable emulators by PID, on free ports.

``Emulator`` is a context manager: ``with bigtable_emulator() as emu: emu.host`` gives
``127.0.0.1:PORT``; leaving it stops the process group it started. The binaries come with
the gcloud CLI (DESIGN.md); when they are missing, ``EmulatorMissing`` says so.
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


@dataclass
class Emulator:
    name: str
    argv: list[str]
    port: int
    env_var: str
    startup_timeout_s: float = 90.0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Emulator":
        if not os.path.exists(self.argv[0]):
            raise EmulatorMissing(f"the {self.name} emulator is not installed at {self.argv[0]} "
                                  "(it ships with the Google Cloud CLI; see README)")
        log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-emulator-", suffix=".log", delete=False)
        self.log_path = log.name
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} emulator exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    _LOG.info("%s emulator up on %s (pid %d)", self.name, self.host, self.proc.pid)
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} emulator did not listen on {self.host} within {self.startup_timeout_s}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def pubsub_emulator(port: int | None = None) -> Emulator:
    port = port or free_port()
    return Emulator("pubsub", [PUBSUB_BIN, "--host=127.0.0.1", f"--port={port}"], port, "PUBSUB_EMULATOR_HOST")


def bigtable_emulator(port: int | None = None) -> Emulator:
    port = port or free_port()
    return Emulator("bigtable", [BIGTABLE_BIN, "-host", "127.0.0.1", "-port", str(port)], port,
                    "BIGTABLE_EMULATOR_HOST", startup_timeout_s=30.0)
