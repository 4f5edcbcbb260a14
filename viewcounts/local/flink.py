"""A Flink session cluster from the ``apache-flink`` wheels, with Python worker pools,
started and stopped by PID.

``with FlinkCluster(task_managers=2, task_slots=2) as cluster:`` starts one job manager,
``task_managers`` task managers and one Python worker pool that they all share
(``python -m viewcounts.local.worker_pool``: Beam's pool would let one task manager stop another's
worker; the project's venv first on its ``PATH``: the pool starts each SDK worker with the
``python`` it finds there), each in a
process group of its own, with a config of their own (free ports, a temporary folder).
``cluster.master`` is ``localhost:REST_PORT`` for ``--flink_master``; ``cluster.worker_pool``
is ``localhost:PORT`` for ``--environment_type=EXTERNAL --environment_config=...``. Leaving
the context kills every group. ``make flink-venv`` installs the wheels into ``.venv-flink``
(their minor version is ``pipelines.runners.FLINK_VERSION``).

Faults: ``kill_taskmanager(i)`` (SIGKILL of task manager ``i`` and of the SDK workers it
started in the pool), ``start_taskmanager(i)``, ``kill_jobmanager()`` and
``start_jobmanager()`` (same ports; the task managers register again).

REST helpers (Flink's REST API, https://nightlies.apache.org/flink/flink-docs-release-1.19/docs/ops/rest_api/):
``running_jobs()``, ``job_status(job_id)``, ``wait_for_running(...)``, ``job_taskmanagers(job_id)``,
``stop_with_savepoint(job_id, folder)``, ``cancel(job_id)``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from viewcounts.local.emulators import _die_with_parent, free_port, stop_process

REST_TIMEOUT_S = 20
REST_GET_ATTEMPTS = 3

FLINK_VENV = Path(os.environ.get("VIEWCOUNTS_FLINK_VENV", Path(__file__).resolve().parents[2] / ".venv-flink"))


class FlinkMissing(RuntimeError):
    pass


def flink_home() -> Path:
    found = glob.glob(str(FLINK_VENV / "lib" / "python3*" / "site-packages" / "pyflink"))
    if not found or not (Path(found[0]) / "bin" / "jobmanager.sh").exists():
        raise FlinkMissing(f"no Flink distribution under {FLINK_VENV}: run `make flink-venv`")
    return Path(found[0])


class FlinkCluster:
    """A session cluster of ``task_managers`` task managers with ``task_slots`` slots each,
    ``taskmanager_memory`` of process memory each (Flink's size syntax), and, unless
    ``worker_pool`` is False, one Python worker pool for EXTERNAL environments. Raises
    ``FlinkMissing`` without ``.venv-flink``, ``TimeoutError`` when the task managers do not
    all register within ``startup_timeout_s`` and ``RuntimeError`` when a process exits at
    start (the message names the log folder)."""

    def __init__(
        self,
        task_managers: int = 1,
        task_slots: int = 4,
        worker_pool: bool = True,
        taskmanager_memory: str = "1536m",
        startup_timeout_s: float = 120.0,
    ) -> None:
        self._n_tms, self._slots, self._with_pool = task_managers, task_slots, worker_pool
        self._tm_memory, self._timeout_s = taskmanager_memory, startup_timeout_s
        self.rest_port, self._rpc_port, self._pool_port = free_port(), free_port(), free_port()
        self._jm: subprocess.Popen | None = None
        self._tms: list[subprocess.Popen | None] = [None] * task_managers
        self._pool: subprocess.Popen | None = None
        self.dir = ""

    @property
    def master(self) -> str:
        return f"localhost:{self.rest_port}"

    @property
    def worker_pool(self) -> str:
        """``localhost:PORT`` of the Python worker pool (``--environment_config``)."""
        if not self._with_pool:
            raise RuntimeError("this cluster was started without a worker pool")
        return f"localhost:{self._pool_port}"

    def start(self) -> FlinkCluster:
        home = flink_home()
        self._home = home
        self.dir = tempfile.mkdtemp(prefix="flink-cluster-")
        conf = Path(self.dir) / "conf"
        shutil.copytree(home / "conf", conf)
        settings = {
            "jobmanager.rpc.address": "localhost",
            "jobmanager.bind-host": "localhost",
            "jobmanager.rpc.port": self._rpc_port,
            "rest.address": "localhost",
            "rest.bind-address": "localhost",
            "rest.port": self.rest_port,
            "taskmanager.host": "localhost",
            "taskmanager.bind-host": "localhost",
            "taskmanager.numberOfTaskSlots": self._slots,
            "jobmanager.memory.process.size": "1024m",
            "taskmanager.memory.process.size": self._tm_memory,
            "io.tmp.dirs": f"{self.dir}/tmp",
            "web.tmpdir": f"{self.dir}/web",
            "blob.storage.directory": f"{self.dir}/blobs",
            # a lost task manager is noticed within 10 s rather than 50 s
            "heartbeat.timeout": 10000,
            "heartbeat.interval": 2000,
            # a job's subtasks go to every task manager rather than filling the first one's slots
            "cluster.evenly-spread-out-slots": "true",
        }
        java_opts = re.search(r"^\s+all: (.*)$", (home / "conf" / "config.yaml").read_text(), re.M)
        if java_opts:  # the distribution's JVM flags for Java 17 (add-opens)
            settings["env.java.opts.all"] = java_opts.group(1)
        (conf / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
        self._conf = conf
        try:
            if self._with_pool:
                self._start_pool()
            self.start_jobmanager()
            for i in range(self._n_tms):
                self.start_taskmanager(i)
        except BaseException:
            self.stop()
            raise
        return self

    def _flink_process(self, script: str, name: str) -> subprocess.Popen:
        log_dir = Path(self.dir) / "log" / name
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "FLINK_HOME": str(self._home),
            "FLINK_CONF_DIR": str(self._conf),
            "FLINK_LOG_DIR": str(log_dir),
            "FLINK_PID_DIR": str(log_dir),
        }
        log = open(log_dir / "console.out", "ab")
        return subprocess.Popen(
            ["bash", str(self._home / "bin" / script), "start-foreground"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _start_pool(self) -> None:
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        log_dir = Path(self.dir) / "log" / "worker-pool"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._pool = subprocess.Popen(
            [str(Path(venv_bin) / "python"), "-m", "viewcounts.local.worker_pool", f"--service_port={self._pool_port}"],
            env=env,
            stdout=open(log_dir / "pool.log", "ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._wait(
            lambda: socket.create_connection(("localhost", self._pool_port), timeout=1).close() or True,
            "the worker pool to listen",
            [self._pool],
        )

    def _wait(self, ready, what: str, procs: list) -> None:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            for p in procs:
                if p is not None and p.poll() is not None:
                    raise RuntimeError(
                        f"a Flink cluster process exited with {p.returncode} while waiting for "
                        f"{what}; logs in {self.dir}/log"
                    )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {self._timeout_s}s waiting for {what}; logs in {self.dir}/log")

    def _registered_tms(self) -> int:
        return self.rest("/overview").get("taskmanagers", 0)

    def _tm_ids(self) -> set[str]:
        return {tm["id"] for tm in self.rest("/taskmanagers").get("taskmanagers", [])}

    def start_jobmanager(self) -> None:
        """Start the job manager (again, after ``kill_jobmanager``: same ports) and wait for its REST API."""
        self._jm = self._flink_process("jobmanager.sh", "jobmanager")
        self._wait(lambda: self.rest("/overview") is not None, "the job manager's REST API", [self._jm])

    def kill_jobmanager(self) -> None:
        """SIGKILL the job manager (no HA here: its jobs end with it; task managers keep retrying)."""
        stop_process(self._jm, signal.SIGKILL)

    def start_taskmanager(self, i: int) -> None:
        """Start task manager ``i`` and wait until it has registered with the job manager."""
        before = self._tm_ids()
        self._tms[i] = self._flink_process("taskmanager.sh", f"taskmanager-{i}")
        self._wait(lambda: bool(self._tm_ids() - before), f"task manager {i} to register", [self._jm, self._tms[i]])

    def wait_for_taskmanagers(self, n: int | None = None) -> None:
        """Wait until ``n`` (default: all) task managers are registered (after ``start_jobmanager``)."""
        self._wait(lambda: self._registered_tms() >= (n or self._n_tms), "the task managers to register", [self._jm])

    def taskmanager_pids(self, i: int) -> list[int]:
        """PIDs of task manager ``i`` and of the SDK worker processes it started (its Python workers)."""
        tm = self._tms[i]
        if tm is None or tm.poll() is not None:
            return []
        return [tm.pid] + [w.pid for w in self._workers_of(tm.pid)]

    def _workers_of(self, tm_pid: int) -> list[psutil.Process]:
        """The pool's SDK workers whose control endpoint is a port task manager ``tm_pid`` listens on."""
        if self._pool is None:
            return []
        try:
            ports = {
                c.laddr.port
                for c in psutil.Process(tm_pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
            workers = psutil.Process(self._pool.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for w in workers:
            try:
                found = re.search(r'SdkHarness\("[^"]*:(\d+)"', " ".join(w.cmdline()))
            except psutil.NoSuchProcess:
                continue
            if found and int(found.group(1)) in ports:
                out.append(w)
        return out

    def kill_taskmanager(self, i: int) -> list[int]:
        """SIGKILL task manager ``i`` and its Python workers, as when its machine dies; returns their PIDs."""
        tm = self._tms[i]
        if tm is None:
            return []
        workers = self._workers_of(tm.pid)
        pids = [tm.pid] + [w.pid for w in workers]
        stop_process(tm, signal.SIGKILL)
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        self._tms[i] = None
        return pids

    def sdk_workers(self) -> int:
        """How many SDK worker processes the pool is running."""
        if self._pool is None:
            return 0
        try:
            return len(psutil.Process(self._pool.pid).children())
        except psutil.NoSuchProcess:
            return 0

    def process_pids(self) -> list[int]:
        """Every process of the cluster: job manager, task managers, pool and its workers."""
        pids = [p.pid for p in [self._jm, *self._tms, self._pool] if p is not None and p.poll() is None]
        if self._pool is not None and self._pool.poll() is None:
            try:
                pids += [c.pid for c in psutil.Process(self._pool.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return pids

    def cpu_seconds(self) -> dict[int, float]:
        """``{pid: user + system CPU seconds so far}`` of every live process of the cluster
        (``process_pids``); a process that ended meanwhile is left out."""
        out = {}
        for pid in self.process_pids():
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[pid] = t.user + t.system
        return out

    def rest(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        """The JSON answer of Flink's REST API at ``path`` (``{}`` for an empty body). The job
        manager can take tens of seconds to answer while it takes in a submission on a busy
        machine: a GET that times out (``REST_TIMEOUT_S``) is asked again, up to
        ``REST_GET_ATTEMPTS`` times in all, then ``TimeoutError``; other methods are asked once."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://{self.master}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        for _ in range(REST_GET_ATTEMPTS - 1 if method == "GET" else 0):
            try:
                return _answer(req)
            except TimeoutError:
                continue
        return _answer(req)

    def running_jobs(self) -> list[str]:
        return [j["id"] for j in self.rest("/jobs")["jobs"] if j["status"] == "RUNNING"]

    def job_status(self, job_id: str) -> str:
        """Flink's status of ``job_id`` (RUNNING, RESTARTING, FAILED, CANCELED, FINISHED...)."""
        return self.rest(f"/jobs/{job_id}")["state"]

    def wait_for_running(self, timeout_s: float = 120.0, count: int = 1) -> list[str]:
        """Wait until ``count`` jobs are RUNNING with every task of theirs running; returns their ids."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ids = self.running_jobs()
                if len(ids) >= count and all(self._all_tasks_running(j) for j in ids):
                    return ids
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"fewer than {count} running jobs after {timeout_s}s; logs in {self.dir}/log")

    def _all_tasks_running(self, job_id: str) -> bool:
        vertices = self.rest(f"/jobs/{job_id}")["vertices"]
        return all(v["status"] == "RUNNING" for v in vertices)

    def job_taskmanagers(self, job_id: str) -> set[str]:
        """Ids of the task managers running (or having run) subtasks of ``job_id``, from each
        vertex's subtasks (``/jobs/<id>/vertices/<vertex id>``, field ``taskmanager-id``)."""
        found = set()
        for vertex in self.rest(f"/jobs/{job_id}")["vertices"]:
            for sub in self.rest(f"/jobs/{job_id}/vertices/{vertex['id']}").get("subtasks", []):
                if sub.get("taskmanager-id") and sub["taskmanager-id"] != "(unassigned)":
                    found.add(sub["taskmanager-id"])
        return found

    def taskmanager_ids(self) -> set[str]:
        """Ids of the task managers registered with the job manager."""
        return self._tm_ids()

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
        for p in [*self._tms, self._jm, self._pool]:
            stop_process(p, timeout_s=20.0)
        self._tms, self._jm, self._pool = [None] * self._n_tms, None, None

    def __enter__(self) -> FlinkCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answer(req: urllib.request.Request) -> dict:
    """One REST request's JSON answer (``{}`` for an empty body); ``TimeoutError`` after ``REST_TIMEOUT_S``."""
    with urllib.request.urlopen(req, timeout=REST_TIMEOUT_S) as resp:
        text = resp.read()
    return json.loads(text) if text else {}
