"""The Kubernetes example (infra/flink/k8s/), checked offline for structure: the Flink
operator's FlinkDeployment (session cluster, task managers with a Beam worker-pool sidecar)
and the submitter Job agree with each other and with what ``runner_flags`` and ``prepare``
give a session-cluster job. No cluster is contacted."""

from __future__ import annotations

import os
import re
import shlex

import pytest
import yaml
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions

from pipelines.runners import BUILD_DIR, FLINK_JOB_SERVER_JAR, FLINK_VERSION, FlinkJobOptions, prepare, runner_flags
from tests.conftest import REPO
from tests.test_images import PROJECT_INSTALL, stages
from viewcounts.commands.submit import check_submittable

K8S = os.path.join(REPO, "infra", "flink", "k8s")


def _load(name: str) -> dict:
    with open(os.path.join(K8S, name)) as f:
        (doc,) = list(yaml.safe_load_all(f))
    return doc


@pytest.fixture(scope="module")
def deployment() -> dict:
    return _load("flinkdeployment.yaml")


@pytest.fixture(scope="module")
def submit() -> dict:
    return _load("submit-job.yaml")


def _containers(pod_template: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_template["spec"]["containers"]}


def _submit_args(submit: dict) -> list[str]:
    (container,) = submit["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "viewcounts.commands.submit"]
    return container["args"]


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def test_flink_deployment_is_a_session_cluster_of_the_job_servers_flink(deployment):
    assert deployment["apiVersion"] == "flink.apache.org/v1beta1" and deployment["kind"] == "FlinkDeployment"
    spec = deployment["spec"]
    assert spec["flinkVersion"] == "v" + FLINK_VERSION.replace(".", "_")
    assert re.match(rf"flink:{re.escape(FLINK_VERSION)}(\.\d+)?(-|$)", spec["image"])
    assert "job" not in spec  # a session cluster: the job comes from submit-job.yaml
    for key in ("jobManager", "taskManager", "serviceAccount", "flinkConfiguration"):
        assert key in spec
    assert "flink-main-container" in _containers(spec["podTemplate"])


def test_task_managers_carry_a_worker_pool_sidecar_on_the_port_the_job_uses(deployment, submit):
    tm = deployment["spec"]["taskManager"]
    containers = _containers(tm["podTemplate"])
    assert "flink-main-container" in containers
    (pool,) = [c for c in containers.values() if "viewcounts.local.worker_pool" in c.get("command", [])]
    port = int(_flag(pool["args"], "service_port"))
    assert port in {p["containerPort"] for p in pool["ports"]}
    args = _submit_args(submit)
    assert _flag(args, "environment_type") == "EXTERNAL"
    assert _flag(args, "environment_config") == f"localhost:{port}"  # the sidecar in the task manager's pod
    assert pool["image"] == submit["spec"]["template"]["spec"]["containers"][0]["image"]  # the project's image


def test_the_cluster_has_slots_for_the_job_and_its_rescale(deployment, submit):
    spec = deployment["spec"]
    slots = int(spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"]) * spec["taskManager"]["replicas"]
    parallelism = int(_flag(_submit_args(submit), "parallelism"))
    assert parallelism == 2 and spec["taskManager"]["replicas"] >= 2 and slots >= 4


def test_checkpoints_go_where_the_cluster_keeps_them_and_survive_the_job(deployment, submit, tmp_path):
    conf = deployment["spec"]["flinkConfiguration"]
    args = _submit_args(submit)
    storage = _flag(args, "state_backend_storage_path")
    assert storage == conf["state.checkpoints.dir"] and storage.startswith("gs://")
    assert conf["high-availability.type"] == "kubernetes" and conf["high-availability.storageDir"].startswith("gs://")
    assert "flink-gs-fs-hadoop" in str(_containers(deployment["spec"]["podTemplate"])["flink-main-container"]["env"])
    # offline: the same flags with a local folder (prepare looks for a checkpoint to resume from)
    options = PipelineOptions(
        [
            a
            if not a.startswith("--state_backend_storage_path=")
            else f"--state_backend_storage_path=file://{tmp_path}"
            for a in args
        ]
    )
    prepare(options)
    flink = options.view_as(FlinkJobOptions)
    assert flink.externalized_checkpoints_enabled and flink.retain_externalized_checkpoints_on_cancellation
    assert flink.finish_bundle_before_checkpointing and flink.checkpointing_interval > 0


def test_submit_flags_agree_with_runner_flags_and_run_detached(deployment, submit):
    args = _submit_args(submit)
    master = _flag(args, "flink_master")
    assert master == f"{deployment['metadata']['name']}-rest:8081"  # the operator's REST service
    rest_url, name = check_submittable(args)
    assert rest_url == f"http://{master}" and name == _flag(args, "job_name")
    if os.path.exists(FLINK_JOB_SERVER_JAR):
        given = runner_flags("flink", flink_master=master, parallelism=2, worker_pool=_flag(args, "environment_config"))
        for name in ("runner", "flink_master", "parallelism", "environment_type", "environment_config"):
            assert _flag(args, name) == _flag(given, name), name
    options = PipelineOptions(args)
    assert options.view_as(FlinkRunnerOptions).parallelism == 2
    assert options.view_as(PortableOptions).environment_type == "EXTERNAL"
    for required in ("input_subscription", "archive_path", "dead_letter_path", "bigtable_project"):
        assert _flag(args, required), required


def test_the_image_holds_what_the_manifests_run():
    """The project installed (tests/test_images.py), Java, and the job server a stage assembles
    from infra/flink/job-server/pom.xml at the apache-beam pin, where pipelines.runners looks."""
    job_server, final = stages(os.path.join(K8S, "Dockerfile"))
    assert job_server[0][1].endswith(" AS job-server")
    assert ("COPY", "requirements.lock infra/flink/job-server/pom.xml ./") in job_server
    [mvn] = [rest for op, rest in job_server if op == "RUN"]
    assert "-Dbeam.version=\"$(sed -n 's/^apache-beam==//p' requirements.lock)\"" in mvn
    [out] = re.findall(r"-Dbuild\.dir=(\S+)", mvn)
    assert ("RUN", PROJECT_INSTALL) in final
    assert any(op == "RUN" and "openjdk-17-jre-headless" in rest for op, rest in final)  # the submitter's Java
    env = dict(rest.split("=", 1) for op, rest in final if op == "ENV")
    jar = os.path.join(env["VIEWCOUNTS_BUILD_DIR"], os.path.relpath(FLINK_JOB_SERVER_JAR, BUILD_DIR))
    copied = {shlex.split(rest)[-1]: shlex.split(rest)[1] for op, rest in final if op == "COPY" and "--from=" in rest}
    assert copied == {jar: f"{out}/flink-job-server.jar", os.path.join(os.path.dirname(jar), "lib"): f"{out}/lib"}
