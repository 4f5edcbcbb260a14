"""The session-end cleanup of tests/conftest.py: it finds the processes of this session launched as
Beam job servers (``-jar`` with a ``job-server`` jar), whether still children of this process or
orphaned by the process that started them, and only those (not another session's, not other
jars), and stops them by PID. The processes here are Python processes with a job server's
arguments (``python -c ... -jar X``), so no Java runs; the arguments are generated."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SESSION_ID, SESSION_MARK, beam_job_servers, stop

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
jar_names = st.sampled_from(
    ["flink-job-server.jar", "beam-runners-flink-1.19-job-server-2.73.0.jar", "beam-runners-spark-3-job-server.jar"]
)
other_jars = st.sampled_from(["cloud-pubsub-emulator-0.8.20-all.jar", "flink-dist-1.19.jar", "app.jar"])


def ended(p: psutil.Process) -> bool:
    """Whether ``p`` has ended (a zombie waiting for init to reap it counts as ended)."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@settings(max_examples=4, deadline=None)
@given(
    server_jar=jar_names,
    folder=st.sampled_from(["/work/main/build/flink-job-server", "/tmp/beam-cache", "relative/dir"]),
    other_jar=other_jars,
    port=st.integers(1024, 65535),
)
def test_the_sessions_job_servers_are_found_and_stopped_and_nothing_else(server_jar, folder, other_jar, port):
    server_args = [*SLEEP, "-jar", f"{folder}/{server_jar}", "--job-port", str(port)]
    server = subprocess.Popen(server_args)
    # a job server whose parent ended (as when a test's job process is terminated): init adopts it
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import subprocess; print(subprocess.Popen({server_args!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = psutil.Process(int(launcher.stdout))
    bystanders = [
        subprocess.Popen([*SLEEP, "-jar", f"{folder}/{other_jar}", f"--port={port}"]),
        subprocess.Popen([*SLEEP, f"{folder}/{server_jar}"]),  # a job-server jar, but not run with -jar
        subprocess.Popen(server_args, env={**os.environ, SESSION_MARK: "another session"}),
    ]
    try:
        # real job servers this session's earlier tests still run are found too: leave them be
        found = {p.pid: p for p in beam_job_servers(SESSION_ID)}
        assert {server.pid, orphan.pid} <= set(found)
        assert not {b.pid for b in bystanders} & set(found)
        stop([found[server.pid], found[orphan.pid]], grace_s=5)
        assert server.poll() is not None and ended(orphan)
        assert all(b.poll() is None for b in bystanders)
    finally:
        for p in [server, *bystanders]:
            p.kill()
            p.wait()
        if not ended(orphan):
            orphan.kill()
