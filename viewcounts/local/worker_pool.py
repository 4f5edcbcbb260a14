"""A Python SDK worker pool that several Flink task managers can share (EXTERNAL environment).

``python -m viewcounts.local.worker_pool --service_port=PORT`` serves Beam's worker-pool API
(``StartWorker``/``StopWorker``) like ``apache_beam.runners.worker.worker_pool_main``: each
``StartWorker`` starts one SDK worker process (``worker_command``: this module, with the
pool's Python, run as Beam's ``SdkHarness`` connected to the asking task manager's control
endpoint; importing ``pipelines`` first hides the unfixable grpcio warning in the worker as
in the CLI, where Beam's own command printed it in every worker).

Why not Beam's own pool when task managers share it: Beam's runner names a worker
``<factory>-<n>`` from counters of its own JVM, so two task managers (or a task manager and
its restarted successor) ask for the same worker id, and Beam's pool keeps one process per
id: a ``StopWorker`` from one task manager kills the other's worker (seen: a batch job on a
2-task-manager cluster failed with ``CANCELLED: client cancelled`` when the first task
manager released its environment). This pool keeps every process started under an id. The
runner closes a worker's control stream before it asks to stop it, and a worker whose
control stream is closed exits by itself, so on ``StopWorker(id)``:

* one process holds the id: it is stopped (SIGTERM, then SIGKILL after 5 s), as Beam does;
* several do: the one that has exited, or exits within ``STOP_GRACE_S`` seconds, is the one
  released and is forgotten; no process is killed, since the id alone cannot tell which task
  manager asked. A worker that does not exit stays until its own stream closes.

Used by the session cluster on one host (``viewcounts.local.flink``, the README's recipe) and by the
Kubernetes sidecar (``infra/flink/k8s``: one pool per task manager pod, whose task manager
container, restarted, names its workers as its predecessor did).
"""

from __future__ import annotations

import pipelines  # noqa: F401  (first: importing it hides the unfixable grpcio warning)

# isort: split

import argparse
import logging
import subprocess
import sys
import threading
import time
import traceback

from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer, kill_process_gracefully

_LOG = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


def worker_command(control_endpoint: str, worker_id: str) -> list[str]:
    """The command of one SDK worker: this module, run by the pool's Python, as Beam's
    ``SdkHarness`` of ``worker_id`` connected to ``control_endpoint`` (``host:port``)."""
    return [
        sys.executable,
        "-m",
        "viewcounts.local.worker_pool",
        f"--control_endpoint={control_endpoint}",
        f"--worker_id={worker_id}",
    ]


class SharedWorkerPool(BeamFnExternalWorkerPoolServicer):
    """Beam's process-mode pool, with every process started under an id kept (see module doc)."""

    def __init__(self, stop_grace_s: float = STOP_GRACE_S) -> None:
        super().__init__(use_process=True)
        self._grace_s = stop_grace_s
        self._lock = threading.Lock()
        self._by_id: dict[str, list[subprocess.Popen]] = {}

    def StartWorker(self, request: beam_fn_api_pb2.StartWorkerRequest, context) -> beam_fn_api_pb2.StartWorkerResponse:
        """Start ``worker_command`` for the request (its output to the pool's stderr, its
        stdout discarded); a process that cannot start is the response's ``error``."""
        command = worker_command(request.control_endpoint.url, request.worker_id)
        _LOG.info("starting worker %s: %s", request.worker_id, command)
        with self._lock:
            try:
                started = subprocess.Popen(command, stdout=subprocess.DEVNULL, close_fds=True)
            except OSError:
                return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
            self._by_id.setdefault(request.worker_id, []).append(started)
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request: beam_fn_api_pb2.StopWorkerRequest, context) -> beam_fn_api_pb2.StopWorkerResponse:
        worker_id = request.worker_id
        deadline = time.monotonic() + self._grace_s
        while True:
            with self._lock:
                procs = self._by_id.get(worker_id, [])
                exited = [p for p in procs if p.poll() is not None]
                if len(procs) <= 1 or exited:
                    released = procs[0] if len(procs) == 1 else (exited[0] if exited else None)
                    if released is not None:
                        procs.remove(released)
                    if not procs:
                        self._by_id.pop(worker_id, None)
                    break
            if time.monotonic() > deadline:
                _LOG.warning(
                    "worker id %s is held by %d live workers of different task managers; none is "
                    "stopped (each exits when its task manager closes its control stream)",
                    worker_id,
                    len(procs),
                )
                return beam_fn_api_pb2.StopWorkerResponse()
            time.sleep(0.1)
        if released is not None and released.poll() is None:
            _LOG.info("stopping worker %s", worker_id)
            kill_process_gracefully(released)
        return beam_fn_api_pb2.StopWorkerResponse()

    def live_workers(self) -> dict[str, int]:
        """Worker id -> number of its processes still running."""
        with self._lock:
            return {i: n for i, procs in self._by_id.items() if (n := sum(p.poll() is None for p in procs))}

    def stop_all(self) -> None:
        with self._lock:
            procs = [p for ps in self._by_id.values() for p in ps]
            self._by_id.clear()
        for p in procs:
            if p.poll() is None:
                kill_process_gracefully(p)


def serve(port: int, stop_grace_s: float = STOP_GRACE_S) -> tuple[str, object, SharedWorkerPool]:
    """Start the pool's gRPC server on ``port`` (0: any free port); returns
    ``(address, server, pool)``."""
    import grpc
    from apache_beam.utils import thread_pool_executor

    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    address = f"localhost:{server.add_insecure_port(f'[::]:{port}')}"
    pool = SharedWorkerPool(stop_grace_s)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    return address, server, pool


def main(argv: list[str] | None = None) -> None:
    """Serve the pool on ``--service_port``, or, with ``--control_endpoint`` and
    ``--worker_id``, run one SDK worker (``worker_command``) until its control stream ends."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--service_port", type=int, help="port of the worker-pool API")
    role.add_argument("--control_endpoint", help="one SDK worker: the task manager's control endpoint")
    parser.add_argument("--worker_id", help="the SDK worker's id (with --control_endpoint)")
    args = parser.parse_args(argv)
    if args.control_endpoint:
        from apache_beam.runners.worker.sdk_worker import SdkHarness

        SdkHarness(args.control_endpoint, worker_id=args.worker_id).run()
        return
    logging.basicConfig(level=logging.INFO)
    address, server, pool = serve(args.service_port)
    _LOG.info("worker pool listening at %s", address)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(0)
        pool.stop_all()


if __name__ == "__main__":
    main()
