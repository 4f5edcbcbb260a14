"""The streaming job and the batch recompute as Dataflow receives them, and the Flex Template
that launches the streaming job; offline.

The job is built through the Flex Template launcher (``infra/dataflow/flex-template/main.py``,
which selects the DataflowRunner) with ``--dry_run=True``: the runner translates the job
(Dataflow overrides, portable proto, job type) and stops before any Google Cloud call. Beam's
own ``DataflowApplicationClient`` then fills in the job request as ``create_job`` would,
with ``stage_file`` keeping the staged files in memory instead of uploading them to GCS, and
``--no_auth`` so it looks for no credentials. Nothing is submitted.

The Flex Template's image is checked against the repository: it holds the launcher and the
sources setup.py ships (what every image installs, and from what: ``tests/test_images.py``). Its parameters and the job update: ``tests/test_flex_template.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import tarfile

import pytest
import yaml
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

from pipelines.options import DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_SUBSCRIPTION, CountingOptions
from schemas import storage
from tests.conftest import REPO
from tests.test_images import context_files, copy_context, setup_packages, stages

FLEX_TEMPLATE = os.path.join(REPO, "infra", "dataflow", "flex-template")
PROJECT = "viewcounts-test"
BUCKET = "viewcounts-archive"  # any name (infra/terraform: PROJECT-viewcounts unless var.archive_bucket)
# One valid value per template parameter (every flag of CountingOptions: test_flex_template), in
# infra/terraform's names; passed to the launcher as Dataflow passes parameters (``--name=value``).
PARAMETERS = {
    "input_subscription": f"projects/{PROJECT}/subscriptions/{DEFAULT_SUBSCRIPTION}",
    "dead_letter_topic": f"projects/{PROJECT}/topics/{DEFAULT_DEAD_LETTER_TOPIC}",
    "dead_letter_path": f"gs://{BUCKET}/dead-letters",
    "archive_path": f"gs://{BUCKET}/archive",
    "bigtable_project": PROJECT,
    "bigtable_instance": storage.DEFAULT_INSTANCE,
    "bigtable_table": storage.DEFAULT_TABLE,
    "bigtable_write_budget_s": "90.5",
    "bigtable_attempt_timeout_s": "15",
    "metadata_path": f"gs://{BUCKET}/metadata/videos.jsonl",
    "metadata_refresh_s": "300",
    "allowed_lateness_s": "900",
    "max_future_skew_s": "120",
    "max_event_age_s": "86400",
    "no_event_age_check": "true",
    "early_firing_s": "20",
    "timestamp_attribute": "ts",
    "source_readers": "1",
    "dedup_shards": "8",
}
DATAFLOW_FLAGS = [
    f"--project={PROJECT}",
    "--region=us-central1",
    f"--temp_location=gs://{BUCKET}/dataflow/tmp",
    "--no_auth",
    "--dry_run=True",
]


def counting_parser() -> argparse.ArgumentParser:
    """An argparse parser of ``CountingOptions``' flags alone: the streaming job's own flags."""
    parser = argparse.ArgumentParser()
    CountingOptions._add_argparse_args(parser)
    return parser


def file_module(path: str):
    """The Python file at ``path`` as a module (its folder is no package: ``infra/dataflow``)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launcher():
    """The Flex Template's launcher, ``main.py``."""
    return file_module(os.path.join(FLEX_TEMPLATE, "main.py"))


def parameter_flags(parameters: dict[str, str]) -> list[str]:
    """``parameters`` as Dataflow hands them to the launcher: ``--name=value``."""
    return [f"--{k}={v}" for k, v in parameters.items()]


def _source(tmp_path_factory):
    """A copy of the images' build context, as the launcher image holds it (the sdist writes an
    egg-info next to setup.py: not in the checkout); returns its setup.py."""
    return os.path.join(copy_context(str(tmp_path_factory.mktemp("source"))), "setup.py")


def _request(job) -> tuple[dict, dict]:
    """``(job, staged)`` of a translated job (``--dry_run``): the Dataflow ``Job`` message as
    JSON and the files staging would upload, ``{file name: bytes}``."""
    staged = {}

    def stage_file(self, folder, name, stream, mime_type=None, total_size=None):
        staged[name] = stream.read()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apiclient.DataflowApplicationClient, "stage_file", stage_file)
        apiclient.DataflowApplicationClient(job.options).create_job_description(job)
    return json.loads(job.json()), staged


@pytest.fixture(scope="module")
def job_request(tmp_path_factory):
    """``_request`` of the streaming job launched through the Flex Template."""
    flags = parameter_flags(PARAMETERS) + DATAFLOW_FLAGS + [f"--setup_file={_source(tmp_path_factory)}"]
    return _request(launcher().launch(flags).job)


def test_the_batch_recompute_translates_to_a_dataflow_batch_job(tmp_path_factory):
    from pipelines import batch_recompute
    from pipelines.runners import runner_flags

    pipeline = batch_recompute.build_pipeline(
        runner_flags("dataflow")
        + DATAFLOW_FLAGS
        + [
            f"--archive_path=gs://{BUCKET}/archive",
            "--start=2024-05-14T00:00:00Z",
            "--end=2024-05-15T00:00:00Z",
            f"--bigtable_project={PROJECT}",
            f"--metadata_path=gs://{BUCKET}/metadata/videos.jsonl",
            f"--setup_file={_source(tmp_path_factory)}",
        ]
    )
    job, staged = _request(pipeline.run().job)
    assert job["type"] == "JOB_TYPE_BATCH"
    assert job["environment"]["sdkPipelineOptions"]["options"]["streaming"] is False
    proto = beam_runner_api_pb2.Pipeline.FromString(staged["pipeline.pb"])
    steps = {t.unique_name for t in proto.components.transforms.values()}
    assert {
        "count archive/parse files",
        "count archive/group by shard",
        "count archive/dedup per shard",
        "count archive/merge per entity",
        "count archive/rows",
        "write to Bigtable",
        "dead letters/files",
    } <= steps
    assert all(pc.is_bounded == beam_runner_api_pb2.IsBounded.BOUNDED for pc in proto.components.pcollections.values())


def test_the_job_request_is_a_streaming_job_with_the_template_parameters(job_request):
    job, staged = job_request
    assert job["type"] == "JOB_TYPE_STREAMING"
    environment = job["environment"]
    assert environment["version"]["job_type"] == "FNAPI_STREAMING"
    options = environment["sdkPipelineOptions"]["options"]
    assert options["runner"] == "DataflowRunner" and options["streaming"] is True
    # each parameter reached the job as the job's own parser reads the launcher's flags
    expected = vars(counting_parser().parse_args(launcher().job_flags(parameter_flags(PARAMETERS))))
    assert {dest: options[dest] for dest in expected} == expected
    assert os.path.basename(options["pipelineUrl"]) in staged


def test_the_staged_pipeline_reads_pubsub_natively_and_has_every_step(job_request):
    _, staged = job_request
    pipeline = beam_runner_api_pb2.Pipeline.FromString(staged["pipeline.pb"])
    transforms = pipeline.components.transforms.values()
    [read] = [t for t in transforms if t.spec.urn == common_urns.composites.PUBSUB_READ.urn]
    payload = beam_runner_api_pb2.PubSubReadPayload.FromString(read.spec.payload)
    assert (payload.subscription, payload.timestamp_attribute) == (PARAMETERS["input_subscription"], "ts")
    [events] = read.outputs.values()
    assert pipeline.components.pcollections[events].is_bounded == beam_runner_api_pb2.IsBounded.UNBOUNDED
    steps = {t.unique_name for t in transforms}
    assert {
        "read Pub/Sub",
        "count events/validate",
        "count events/dedup and lateness",
        "count events/windows",
        "metadata refresh",
        "enrich",
        "write to Bigtable",
        "dead letters/to Pub/Sub",
        "dead letters/files",
        "raw archive files",
        "record a start without state",
    } <= steps


def test_workers_get_the_packages_setup_py_ships(job_request):
    job, staged = job_request
    [pool] = job["environment"]["workerPools"]
    assert "workflow.tar.gz" in {p["name"] for p in pool["packages"]}
    with tarfile.open(fileobj=io.BytesIO(staged["workflow.tar.gz"])) as sdist:
        files = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {f"{p.replace('.', '/')}/__init__.py" for p in setup_packages()} <= files


def test_flex_template_image_holds_the_launcher_and_the_sources_setup_py_ships():
    """The launcher image: the build context (``tests/test_images.py``) copied into its working
    folder, so the template's main.py and setup.py are there, beside the packages the sdist ships."""
    [final] = stages(os.path.join(FLEX_TEMPLATE, "Dockerfile"))
    [workdir] = [rest.split("=", 1)[1] for op, rest in final if op == "ARG" and rest.startswith("WORKDIR=")]
    assert ("WORKDIR", "${WORKDIR}") in final and ("COPY", ". .") in final
    env = dict(rest.replace("${WORKDIR}", workdir).replace('"', "").split("=", 1) for op, rest in final if op == "ENV")
    in_image = {os.path.join(workdir, path) for path in context_files()}
    assert env["FLEX_TEMPLATE_PYTHON_PY_FILE"] == os.path.join(workdir, "infra/dataflow/flex-template/main.py")
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == os.path.join(workdir, "setup.py")
    assert {env["FLEX_TEMPLATE_PYTHON_PY_FILE"], env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]} <= in_image
    assert os.path.join(workdir, "pyproject.toml") in in_image  # setup.py's metadata
    assert {os.path.join(workdir, p.replace(".", "/"), "__init__.py") for p in setup_packages()} <= in_image
    with open(os.path.join(FLEX_TEMPLATE, "cloudbuild.yaml")) as f:
        [build] = yaml.safe_load(f)["steps"]
    assert os.path.exists(os.path.join(REPO, build["args"][build["args"].index("-f") + 1]))
