"""A Flink session cluster from the ``apache-flink`` wheels, started and stopped by PID.

``with FlinkCluster() as cluster: cluster.master`` gives ``localhost:REST_PORT`` for
``--flink_master``. The job manager and one task manager run in the foreground as child
process groups (``bin/jobmanager.sh start-foreground``, ``bin/taskmanager.sh
start-foreground``) with a config of their own (free ports, a temporary folder); leaving
the context kills both groups. ``make flink-venv`` installs the wheels into
``.venv-flink`` (their minor version is ``pipelines.runners.FLINK_VERSION``).

REST helpers (Flink's REST API, https://nightlies.apache.org/flink/flink-docs-release-1.19/docs/ops/rest_api/):
``running_jobs()``, ``stop_with_savepoint(job_id, folder)``, ``cancel(job_id)``.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from viewcounts.emulators import _die_with_parent, free_port

FLINK_VENV = Path(os.environ.get("VIEWCOUNTS_FLINK_VENV", Path(__file__).resolve().parents[1] / ".venv-flink"))


class FlinkMissing(RuntimeError):
    pass


def flink_home() -> Path:
    found = glob.glob(str(FLINK_VENV / "lib" / "python3*" / "site-packages" / "pyflink"))
    if not found or not (Path(found[0]) / "bin" / "jobmanager.sh").exists():
        raise FlinkMissing(f"no Flink distribution under {FLINK_VENV}: run `make flink-venv`")
    return Path(found[0])


class FlinkCluster:
    def __init__(self, task_slots: int = 4, startup_timeout_s: float = 120.0) -> None:
        self._slots, self._timeout_s = task_slots, startup_timeout_s
        self._procs: list[subprocess.Popen] = []
        self.rest_port = free_port()

    @property
    def master(self) -> str:
        return f"localhost:{self.rest_port}"

    def start(self) -> "FlinkCluster":
        home = flink_home()
        self._dir = tempfile.mkdtemp(prefix="flink-cluster-")
        conf = Path(self._dir) / "conf"
        shutil.copytree(home / "conf", conf)
        settings = {
            "jobmanager.rpc.address": "localhost", "jobmanager.bind-host": "localhost",
            "jobmanager.rpc.port": free_port(), "rest.address": "localhost", "rest.bind-address": "localhost",
            "rest.port": self.rest_port, "taskmanager.host": "localhost", "taskmanager.bind-host": "localhost",
            "taskmanager.numberOfTaskSlots": self._slots, "jobmanager.memory.process.size": "1024m",
            "taskmanager.memory.process.size": "2048m", "io.tmp.dirs": f"{self._dir}/tmp",
            "web.tmpdir": f"{self._dir}/web", "blob.storage.directory": f"{self._dir}/blobs",
        }
        java_opts = re.search(r"^\s+all: (.*)$", (home / "conf" / "config.yaml").read_text(), re.M)
        if java_opts:  # the distribution's JVM flags for Java 17 (add-opens)
            settings["env.java.opts.all"] = java_opts.group(1)
        (conf / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
        env = {**os.environ, "FLINK_HOME": str(home), "FLINK_CONF_DIR": str(conf), "FLINK_LOG_DIR": f"{self._dir}/log"}
        os.makedirs(f"{self._dir}/log", exist_ok=True)
        for script in ("jobmanager.sh", "taskmanager.sh"):
            log = open(f"{self._dir}/log/{script}.out", "wb")
            self._procs.append(subprocess.Popen(["bash", str(home / "bin" / script), "start-foreground"], env=env,
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, preexec_fn=_die_with_parent))
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            for p in self._procs:
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"a Flink process exited with {p.returncode}; logs in {self._dir}/log")
            try:
                if self.rest("/overview").get("taskmanagers", 0) >= 1:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"no Flink task manager registered within {self._timeout_s}s; logs in {self._dir}/log")

    def rest(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.master}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else {}

    def running_jobs(self) -> list[str]:
        return [j["id"] for j in self.rest("/jobs")["jobs"] if j["status"] == "RUNNING"]

    def stop_with_savepoint(self, job_id: str, folder: str, timeout_s: float = 120.0) -> str:
        """Stop ``job_id`` with a savepoint under ``folder`` (no drain); returns the savepoint path."""
        trigger = self.rest(f"/jobs/{job_id}/stop", "POST", {"targetDirectory": folder, "drain": False})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.rest(f"/jobs/{job_id}/savepoints/{trigger['request-id']}")
            if status["status"]["id"] == "COMPLETED":
                op = status["operation"]
                if "failure-cause" in op:
                    raise RuntimeError(f"savepoint failed: {op['failure-cause']}")
                return op["location"]
            time.sleep(0.5)
        raise TimeoutError(f"no savepoint for {job_id} within {timeout_s}s")

    def cancel(self, job_id: str) -> None:
        self.rest(f"/jobs/{job_id}?mode=cancel", "PATCH")

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 15)
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait(timeout=10)
                except ProcessLookupError:
                    pass
        self._procs = []

    def __enter__(self) -> "FlinkCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
