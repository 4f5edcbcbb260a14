"""``viewcounts.local.worker_pool``: a ``StopWorker`` never stops a worker another task manager
started under the same id; a lone worker is stopped as Beam's pool does. Real SDK worker
processes, started through the pool's gRPC API, whose control endpoints nobody serves (they
wait for it, alive, until stopped). The cluster test of the recompute
(``tests/test_cluster.py``) is the end-to-end check: with Beam's pool it failed."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

from viewcounts.local import worker_pool


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    address, server, servicer = worker_pool.serve(0, stop_grace_s=2.0)
    channel = grpc.insecure_channel(address)
    stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
    try:
        yield stub, servicer
    finally:
        servicer.stop_all()
        channel.close()
        server.stop(0)


def _start(stub, worker_id: str, control_port: int) -> None:
    response = stub.StartWorker(
        beam_fn_api_pb2.StartWorkerRequest(
            worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=f"localhost:{control_port}")
        )
    )
    assert response.error == ""


def _stop(stub, worker_id: str) -> None:
    assert stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id=worker_id)).error == ""


def _eventually(check, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_lone_worker_is_stopped(pool):
    stub, servicer = pool
    _start(stub, "1-1", 1)
    _start(stub, "2-1", 1)
    assert servicer.live_workers() == {"1-1": 1, "2-1": 1}
    _stop(stub, "1-1")
    _eventually(lambda: servicer.live_workers() == {"2-1": 1})


def test_a_stop_never_kills_another_task_managers_worker_of_the_same_id(pool):
    stub, servicer = pool
    _start(stub, "2-1", 1)  # task manager A
    _start(stub, "2-1", 2)  # task manager B: its JVM counted to the same id
    assert servicer.live_workers() == {"2-1": 2}
    # neither has exited (their control streams are open): a stop cannot tell them apart
    _stop(stub, "2-1")
    assert servicer.live_workers() == {"2-1": 2}
    # A closes its worker's control stream (the worker exits), then asks to stop it
    a = servicer._by_id["2-1"][0]
    a.kill()
    _stop(stub, "2-1")
    assert servicer.live_workers() == {"2-1": 1}
    assert servicer._by_id["2-1"][0].poll() is None  # B's worker runs on
    _stop(stub, "2-1")  # now B's is the only one left under the id: stopped
    _eventually(lambda: servicer.live_workers() == {})


def test_a_worker_hides_the_unfixable_grpcio_warning(pool, capfd):
    """A worker started by the pool reaches the task manager's control endpoint (it has
    imported Beam's SDK worker and the Google clients by then) without printing the grpcio
    warning that the pool's own imports hide; the stream's end stops it."""
    stub, servicer = pool
    connected = threading.Event()

    class Control(beam_fn_api_pb2_grpc.BeamFnControlServicer):
        def Control(self, requests, context):
            connected.set()
            yield from ()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(Control(), server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        _start(stub, "1-1", port)
        _eventually(connected.is_set, timeout_s=60.0)
        _eventually(lambda: servicer.live_workers() == {}, timeout_s=30.0)
    finally:
        server.stop(0)
    err = capfd.readouterr().err
    assert "Post-Quantum" not in err, err
