"""infra/terraform checked offline: the names the pipeline uses exist there and vice versa; the
outputs give every flag the job needs; the workers' account holds one role per resource it uses
and the stats service's account reads Bigtable and nothing more; every resource waits for its
API; the alert policies watch the job's own counters; and the Cloud Run service runs the image
of infra/service/Dockerfile with the settings that image's command reads (the command itself
run here, from the checkout, against the Bigtable emulator). checkov: tests/test_checkov.py."""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import hcl2
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.options import (
    DEFAULT_DEAD_LETTER_TOPIC,
    DEFAULT_SUBSCRIPTION,
    DEFAULT_TOPIC,
    CountingOptions,
    default_dead_letter_path,
)
from pipelines.redrive import default_redrive_path
from query import dashboard
from query.service import add_serve_args
from schemas import storage
from schemas.parquet_archive import STAGING_FOLDER, hour_partition
from tests.conftest import REPO
from tests.test_images import PROJECT_INSTALL, stages
from transforms import metrics
from viewcounts.commands.demo import DEAD_LETTER_SUBSCRIPTION
from viewcounts.local import provision

TF_DIR = os.path.join(REPO, "infra", "terraform")
SERVICE_DOCKERFILE = os.path.join(REPO, "infra", "service", "Dockerfile")
TEMPLATE_METADATA = os.path.join(REPO, "infra", "dataflow", "flex-template", "metadata.json")


def _unquote(v):
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, dict):
        return {_unquote(k): _unquote(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, list):
        return [_unquote(x) for x in v]
    return v


@pytest.fixture(scope="module")
def tf():
    merged = {"resource": {}, "variable": {}, "output": {}, "locals": {}}
    for path in glob.glob(os.path.join(TF_DIR, "*.tf")):
        with open(path) as f:
            doc = _unquote(hcl2.load(f))
        for kind in merged:
            for block in doc.get(kind, []):
                for name, body in block.items():
                    if kind == "resource":
                        for rname, rbody in body.items():
                            assert rname not in merged["resource"].get(name, {}), (name, rname)
                            merged["resource"].setdefault(name, {})[rname] = rbody
                    else:
                        assert name not in merged[kind], (kind, name)
                        merged[kind][name] = body
    return merged


def _resolve(tf, value):
    """``${var.x}`` -> the variable's default."""
    if isinstance(value, str) and value.startswith("${var.") and value.endswith("}"):
        return tf["variable"][value[6:-1]]["default"]
    return value


def _instances(tf, body: dict) -> list[dict]:
    """A resource's body once per instance: for a ``for_each`` over a local map or a literal
    ``toset([...])``, with ``${each.key}``, ``${each.value}`` and ``${each.value.NAME}`` replaced
    by the instance's values; else the body itself."""
    if "for_each" not in body:
        return [body]
    if m := re.fullmatch(r"\$\{local\.(\w+)\}", body["for_each"]):
        items = list(tf["locals"][m.group(1)].items())
    else:
        m = re.fullmatch(r"\$\{toset\((\[.*\])\)\}", body["for_each"])
        assert m, f"for_each of no literal keys: {body['for_each']}"
        items = [(v, v) for v in json.loads(m.group(1))]

    def each(v, key, value):
        if v == "${each.key}":
            return key
        if v == "${each.value}":
            return value
        m = re.fullmatch(r"\$\{each\.value\.(\w+)\}", v) if isinstance(v, str) else None
        return value[m.group(1)] if m else v

    return [{k: each(v, key, value) for k, v in body.items() if k != "for_each"} for key, value in items]


def _names(tf, rtype):
    return {_resolve(tf, i["name"]) for r in tf["resource"].get(rtype, {}).values() for i in _instances(tf, r)}


def _instance_keys(tf, body: dict) -> list[str | None]:
    """The instance keys of a resource: None for one without ``for_each``."""
    if "for_each" not in body:
        return [None]
    if m := re.fullmatch(r"\$\{local\.(\w+)\}", body["for_each"]):
        return list(tf["locals"][m.group(1)])
    if m := re.fullmatch(r"\$\{toset\(var\.(\w+)\)\}", body["for_each"]):
        return list(tf["variable"][m.group(1)].get("default") or [])
    return json.loads(re.fullmatch(r"\$\{toset\((\[.*\])\)\}", body["for_each"]).group(1))


def _moves() -> list[tuple[str, str]]:
    moves = []
    for path in glob.glob(os.path.join(TF_DIR, "*.tf")):
        with open(path) as f:
            moves += [(m["from"][2:-1], m["to"][2:-1]) for m in hcl2.load(f).get("moved", [])]
    return moves


def test_moved_blocks_lead_from_a_gone_address_to_an_existing_instance(tf):
    """A state applied before a resource was renamed or turned into a ``for_each`` keeps its
    objects: every ``moved`` leads from an address the configuration no longer has to an
    instance it has, so ``terraform apply`` moves rather than destroys and recreates."""
    addresses = {
        f"{rtype}.{name}" + ("" if key is None else f'["{key}"]')
        for rtype, resources in tf["resource"].items()
        for name, body in resources.items()
        for key in _instance_keys(tf, body)
    }
    moves = _moves()
    assert moves, "no moved blocks: the Pub/Sub and subscription-role renames need them"
    for src, dst in moves:
        assert src not in addresses, f"moved from {src}, which the configuration still has"
        assert dst in addresses, f"moved to {dst}, which the configuration does not have"


def test_pubsub_names_match_the_pipeline_both_ways(tf):
    assert _names(tf, "google_pubsub_topic") == {DEFAULT_TOPIC, DEFAULT_DEAD_LETTER_TOPIC}
    assert _names(tf, "google_pubsub_subscription") == {DEFAULT_SUBSCRIPTION, DEAD_LETTER_SUBSCRIPTION}


def test_events_subscription_keeps_messages_for_replay(tf):
    [sub] = [
        s
        for s in _instances(tf, tf["resource"]["google_pubsub_subscription"]["viewcounts"])
        if _resolve(tf, s["name"]) == DEFAULT_SUBSCRIPTION
    ]
    assert sub["retain_acked_messages"] is True
    assert _resolve(tf, sub["message_retention_duration"]).endswith("s")


def test_bigtable_names_family_and_gc_rule_match_the_storage_layout(tf):
    assert _names(tf, "google_bigtable_instance") == {storage.DEFAULT_INSTANCE}
    assert _names(tf, "google_bigtable_table") == {storage.DEFAULT_TABLE}
    table = tf["resource"]["google_bigtable_table"]["aggregates"]
    assert [cf["family"] for cf in table["column_family"]] == [storage.FAMILY]
    gc = tf["resource"]["google_bigtable_gc_policy"]["aggregates"]
    assert gc["column_family"] == storage.FAMILY and gc["mode"] == "UNION"
    assert gc["max_version"][0]["number"] == 1
    assert "aggregate_retention_days" in gc["max_age"][0]["duration"]
    assert tf["variable"]["aggregate_retention_days"]["default"] == provision.AGGREGATE_RETENTION_DAYS


def test_archive_bucket_purges_raw_events_after_configurable_days(tf):
    bucket = tf["resource"]["google_storage_bucket"]["archive"]
    rule = bucket["lifecycle_rule"][0]
    assert rule["action"][0]["type"] == "Delete"
    assert rule["condition"][0]["age"] == "${var.raw_retention_days}"
    assert isinstance(tf["variable"]["raw_retention_days"]["default"], int)


def _rule(bucket, *prefixes):
    [rule] = [r for r in bucket["lifecycle_rule"] if r["condition"][0].get("matches_prefix") == list(prefixes)]
    return rule


def test_parquet_archive_has_its_own_retention_beside_the_raw_archive(tf):
    bucket = tf["resource"]["google_storage_bucket"]["archive"]
    parquet = _rule(bucket, "parquet/")
    assert parquet["action"][0]["type"] == "Delete"
    assert parquet["condition"][0]["age"] == "${var.parquet_retention_days}"
    assert _rule(bucket, "archive/")["condition"][0]["age"] == "${var.raw_retention_days}"
    # the analysts' copy outlives the raw one it is compacted from
    assert tf["variable"]["parquet_retention_days"]["default"] > tf["variable"]["raw_retention_days"]["default"]
    assert tf["output"]["parquet_path"]["value"] == "${local.bucket_url}/parquet"
    assert tf["locals"]["bucket_url"] == "gs://${google_storage_bucket.archive.name}"


def test_bigquery_external_table_reads_the_parquet_layout_compaction_writes(tf):
    table = tf["resource"]["google_bigquery_table"]["events"]
    assert table["dataset_id"] == "${google_bigquery_dataset.archive.dataset_id}"
    ext = table["external_data_configuration"][0]
    parquet_path = tf["output"]["parquet_path"]["value"].replace("${local.bucket_url}", tf["locals"]["bucket_url"])
    assert ext["source_format"] == "PARQUET"
    # only dt= folders: files being written wait under _staging/, outside them
    assert ext["source_uris"] == [f"{parquet_path}/dt=*"]
    assert not STAGING_FOLDER.startswith("dt=")
    hive = ext["hive_partitioning_options"][0]
    assert hive["mode"] == "CUSTOM"
    # the partition keys are those of schemas.parquet_archive's folders, in their order
    prefix, keys = hive["source_uri_prefix"].split("/{", 1)
    assert prefix == parquet_path
    names = [k.split(":")[0] for k in ("{" + keys).strip("{}").split("}/{")]
    folders = hour_partition(parquet_path, 1_715_680_800)[len(parquet_path) + 1 :].split("/")
    assert names == [f.split("=")[0] for f in folders] == ["dt", "hour"]
    assert "{dt:DATE}" in hive["source_uri_prefix"] and "{hour:INTEGER}" in hive["source_uri_prefix"]


def test_dead_letter_files_have_their_own_retention_and_deleted_objects_a_grace(tf):
    bucket = tf["resource"]["google_storage_bucket"]["archive"]
    # the folders the job and the redrive write dead letters to by default
    folder = default_dead_letter_path("gs://b/archive")[len("gs://b/") :]
    redrive = default_redrive_path(f"gs://b/{folder}/**")[len("gs://b/") :]
    rule = _rule(bucket, f"{folder}/", f"{redrive}/")
    assert rule["action"][0]["type"] == "Delete"
    assert rule["condition"][0]["age"] == "${var.dead_letter_retention_days}"
    assert tf["variable"]["dead_letter_retention_days"]["default"] > 0
    # versioned: what a rule or a person deletes stays restorable for a while, then goes
    assert bucket["versioning"] == [{"enabled": True}]
    [noncurrent] = [r for r in bucket["lifecycle_rule"] if "days_since_noncurrent_time" in r["condition"][0]]
    assert noncurrent["condition"][0] == {
        "days_since_noncurrent_time": "${var.noncurrent_retention_days}",
        "with_state": "ARCHIVED",
    }
    # every other rule deletes live objects under one of its prefixes only
    assert all(r["condition"][0]["matches_prefix"] for r in bucket["lifecycle_rule"] if r is not noncurrent)


def test_bucket_name_comes_from_the_project_unless_given(tf):
    bucket = tf["resource"]["google_storage_bucket"]["archive"]
    assert bucket["name"] == "${local.archive_bucket}"
    assert tf["locals"]["archive_bucket"] == '${coalesce(var.archive_bucket, "${var.project}-viewcounts")}'
    assert tf["variable"]["archive_bucket"]["default"] is None


def test_bigtable_deletion_protection_is_a_variable_on_by_default(tf):
    assert tf["variable"]["bigtable_deletion_protection"]["default"] is True
    instance = tf["resource"]["google_bigtable_instance"]["counts"]
    table = tf["resource"]["google_bigtable_table"]["aggregates"]
    assert instance["deletion_protection"] == "${var.bigtable_deletion_protection}"
    assert table["deletion_protection"] == '${var.bigtable_deletion_protection ? "PROTECTED" : "UNPROTECTED"}'


# Flags of the streaming job (pipelines/options.py) that no output gives, and why.
NOT_FROM_TERRAFORM = {
    "metadata_refresh_s": "how often to re-read the snapshot: the operator's choice (README: 300)",
    "bigtable_write_budget_s": "tuning, the job's default holds",
    "bigtable_attempt_timeout_s": "tuning, the job's default holds",
    "timestamp_attribute": "set by the publishers, the job's default (ts) is theirs",
    "allowed_lateness_s": "docs/contract.md, Acceptance: its value is the job's default",
    "max_future_skew_s": "docs/contract.md, Acceptance: its value is the job's default",
    "max_event_age_s": "docs/contract.md, Acceptance: its value is the job's default",
    "no_event_age_check": "for replays of historical data only",
    "early_firing_s": "tuning, the job's default holds",
    "source_readers": "Prism and Flink only",
    "dedup_shards": "the runner's default; fixed across restores, so never from the environment",
}


def _parser_flags(options_class) -> set[str]:
    parser = argparse.ArgumentParser()
    options_class._add_argparse_args(parser)
    return {o[2:] for a in parser._actions if a.dest != "help" for o in a.option_strings if o.startswith("--")}


def test_outputs_give_every_flag_the_job_needs(tf):
    assert set(tf["output"]) == {
        "job_flags",
        "dataflow_flags",
        "job_args",
        "template_parameters",
        "parquet_path",
        "bigquery_events_table",
        "stats_service_url",
    }
    job_flags, dataflow_flags = tf["locals"]["job_flags"], tf["locals"]["dataflow_flags"]
    assert tf["output"]["job_flags"]["value"] == "${local.job_flags}"
    assert tf["output"]["dataflow_flags"]["value"] == "${local.dataflow_flags}"
    # every flag of the job is an output or has its reason above, not both
    assert set(job_flags) | set(NOT_FROM_TERRAFORM) == _parser_flags(CountingOptions)
    assert not set(job_flags) & set(NOT_FROM_TERRAFORM)
    # so is every parameter of the Flex Template
    with open(TEMPLATE_METADATA) as f:
        params = {p["name"] for p in json.load(f)["parameters"]}
    assert params <= set(job_flags) | set(NOT_FROM_TERRAFORM)
    # Dataflow's flags are Beam's GoogleCloudOptions, the worker account among them
    assert set(dataflow_flags) <= _parser_flags(GoogleCloudOptions)
    assert dataflow_flags["service_account_email"] == "${google_service_account.worker.email}"
    assert {dataflow_flags[k] for k in ("temp_location", "staging_location")} <= {
        f"${{local.bucket_url}}/dataflow/{d}" for d in ("tmp", "staging")
    }
    # the job's names are the resources', and dead letters go where the job would put them
    assert job_flags["input_subscription"] == '${google_pubsub_subscription.viewcounts["events"].id}'
    assert job_flags["dead_letter_topic"] == '${google_pubsub_topic.viewcounts["dead_letters"].id}'
    archive = job_flags["archive_path"]
    assert archive == "${local.bucket_url}/archive" and _rule(
        tf["resource"]["google_storage_bucket"]["archive"], "archive/"
    )
    assert job_flags["dead_letter_path"] == default_dead_letter_path(archive)
    assert tf["output"]["job_args"]["value"] == (
        '${join(" ", [for flag, value in merge(local.job_flags, local.dataflow_flags) : "--${flag}=${value}"])}'
    )
    assert tf["output"]["template_parameters"]["value"] == (
        '${join(",", [for flag, value in local.job_flags : "${flag}=${value}"])}'
    )


WORKER_SA = "google_service_account.worker"


def test_worker_account_holds_one_role_per_resource_it_uses(tf):
    assert tf["locals"]["worker"] == f"serviceAccount:${{{WORKER_SA}.email}}"
    grants = sorted(
        (
            rtype,
            body["role"],
            next((body[k] for k in ("subscription", "topic", "table", "bucket", "project") if k in body), None),
        )
        for rtype, grant in _grants(tf)
        if grant["member"] == "${local.worker}"
        for body in _instances(tf, grant)
    )
    assert grants == [
        ("google_bigtable_table_iam_member", "roles/bigtable.user", "${google_bigtable_table.aggregates.name}"),
        ("google_project_iam_member", "roles/dataflow.worker", "${var.project}"),
        (
            "google_pubsub_subscription_iam_member",
            "roles/pubsub.subscriber",
            '${google_pubsub_subscription.viewcounts["events"].name}',
        ),
        (
            "google_pubsub_subscription_iam_member",
            "roles/pubsub.viewer",
            '${google_pubsub_subscription.viewcounts["events"].name}',
        ),
        (
            "google_pubsub_topic_iam_member",
            "roles/pubsub.publisher",
            '${google_pubsub_topic.viewcounts["dead_letters"].name}',
        ),
        ("google_storage_bucket_iam_member", "roles/storage.objectAdmin", "${google_storage_bucket.archive.name}"),
    ]
    table_grant = tf["resource"]["google_bigtable_table_iam_member"]["worker_aggregates_user"]
    assert table_grant["instance_name"] == "${google_bigtable_instance.counts.name}"
    # who may act as it: only those listed, none by default
    launchers = tf["resource"]["google_service_account_iam_member"]["worker_launchers"]
    assert launchers["role"] == "roles/iam.serviceAccountUser" and launchers["member"] == "${each.value}"
    assert launchers["service_account_id"] == f"${{{WORKER_SA}.name}}"
    assert tf["variable"]["job_launchers"]["default"] == []


def _references(tf, value) -> set[str]:
    """``type.name`` of every resource an expression (or block) refers to, through the locals it uses."""
    text = json.dumps(value)
    refs = set(re.findall(r"\b(google_[a-z0-9_]+\.[a-z0-9_]+)", text))
    for name in set(re.findall(r"\blocal\.([a-z0-9_]+)", text)):
        refs |= _references(tf, tf["locals"][name])
    return refs


# the API each kind of resource is created through
API_OF = {
    "google_pubsub_": "pubsub",
    "google_bigtable_": "bigtableadmin",
    "google_storage_": "storage",
    "google_bigquery_": "bigquery",
    "google_cloud_run_": "run",
    "google_service_account": "iam",
    "google_monitoring_": "monitoring",
    "google_project_iam_": "cloudresourcemanager",
}


def test_every_resource_waits_for_the_apis_and_its_api_is_enabled(tf):
    apis = set(re.findall(r'"([a-z]+)\.googleapis\.com"', tf["locals"]["apis"]))
    assert tf["resource"]["google_project_service"]["apis"] == {
        "for_each": "${local.apis}",
        "service": "${each.value}",
        "disable_on_destroy": False,
    }
    # the job's own APIs: Dataflow on Compute Engine VMs, Bigtable's data API
    assert {"dataflow", "compute", "bigtable"} <= apis
    refs = {
        f"{rtype}.{name}": _references(tf, body) for rtype, rs in tf["resource"].items() for name, body in rs.items()
    }

    def waits(resource):  # Terraform refuses cycles, so this ends
        return "google_project_service.apis" in refs[resource] or any(waits(r) for r in refs[resource])

    for resource in refs:
        rtype = resource.split(".")[0]
        if rtype != "google_project_service":
            assert waits(resource), resource
            [api] = [a for prefix, a in API_OF.items() if rtype.startswith(prefix)]
            assert api in apis, resource


def test_alert_policies_watch_lag_backlog_and_the_jobs_counters(tf):
    policies = tf["resource"]["google_monitoring_alert_policy"]
    assert set(policies) == {"gauge", "counter"}
    assert all(p["notification_channels"] == "${var.notification_channels}" for p in policies.values())
    assert tf["variable"]["notification_channels"]["default"] == []
    gauges = tf["locals"]["gauge_alerts"]
    assert policies["gauge"]["for_each"] == "${local.gauge_alerts}"
    [threshold] = policies["gauge"]["conditions"][0]["condition_threshold"]
    assert threshold["filter"] == "${each.value.filter}" and threshold["threshold_value"] == "${each.value.threshold}"
    assert set(gauges) == {"system_lag", "oldest_unacked"}
    for part in ('resource.type = \\"dataflow_job\\"', 'metric.type = \\"dataflow.googleapis.com/job/system_lag\\"'):
        assert part in gauges["system_lag"]["filter"], part
    assert gauges["system_lag"]["threshold"] == "${var.alert_system_lag_s}"
    for part in (
        'resource.type = \\"pubsub_subscription\\"',
        'resource.label.subscription_id = \\"${google_pubsub_subscription.viewcounts["events"].name}\\"',
        'metric.type = \\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\\"',
    ):
        assert part in gauges["oldest_unacked"]["filter"], part
    assert gauges["oldest_unacked"]["threshold"] == "${var.alert_oldest_unacked_s}"
    # the counters are the job's, by the names transforms/metrics.py gives them
    counters = policies["counter"]
    assert counters["for_each"] == "${local.counter_alerts}"
    assert set(tf["locals"]["counter_alerts"]) == {metrics.WRITE_FAILURES, metrics.DEAD_LETTERS}
    assert tf["locals"]["counter_alerts"][metrics.WRITE_FAILURES]["threshold"] == 0
    [promql] = counters["conditions"][0]["condition_prometheus_query_language"]
    assert "increase(dataflow_googleapis_com:job_user_counter{" in promql["query"]
    assert 'metric_name=\\"${each.key}\\"' in promql["query"]
    assert promql["query"].endswith("> ${each.value.threshold}")


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary on this machine")
def test_terraform_fmt_check():
    r = subprocess.run(["terraform", "fmt", "-check", "-diff", TF_DIR], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


STATS_SA = "google_service_account.stats_service"


def _grants(tf):
    """``(resource type, body)`` of every resource that names a ``member``."""
    return [(rtype, body) for rtype, rs in tf["resource"].items() for body in rs.values() if "member" in body]


def test_stats_service_account_only_reads_the_bigtable_instance(tf):
    assert STATS_SA.split(".")[1] in tf["resource"]["google_service_account"]
    grants = [(rtype, body) for rtype, body in _grants(tf) if STATS_SA in body["member"]]
    # one grant, read-only, on the instance of the aggregates: no project-wide role
    assert [(rtype, body["role"]) for rtype, body in grants] == [
        ("google_bigtable_instance_iam_member", "roles/bigtable.reader")
    ]
    assert grants[0][1]["instance"] == "${google_bigtable_instance.counts.name}"
    assert grants[0][1]["member"] == f"serviceAccount:${{{STATS_SA}.email}}"
    # the one role on the whole project is the workers' Dataflow role (worker.tf says why)
    project_grants = [
        (rtype, name, body["role"])
        for rtype, rs in tf["resource"].items()
        if rtype.startswith("google_project_iam")
        for name, body in rs.items()
    ]
    assert project_grants == [("google_project_iam_member", "worker_dataflow", "roles/dataflow.worker")]


def _container(tf) -> dict:
    [template] = tf["resource"]["google_cloud_run_v2_service"]["stats"]["template"]
    [container] = template["containers"]
    return container


def test_cloud_run_service_runs_as_the_reader_with_bounded_scaling(tf):
    service = tf["resource"]["google_cloud_run_v2_service"]["stats"]
    [template] = service["template"]
    assert template["service_account"] == f"${{{STATS_SA}.email}}"
    assert "${google_bigtable_instance_iam_member.stats_service_reader}" in service["depends_on"]
    [scaling] = template["scaling"]
    assert scaling == {
        "min_instance_count": "${var.service_min_instances}",
        "max_instance_count": "${var.service_max_instances}",
    }
    lo, hi = (tf["variable"][f"service_{k}_instances"]["default"] for k in ("min", "max"))
    assert 0 <= lo <= hi
    assert _container(tf)["image"] == "${var.service_image}" and "default" not in tf["variable"]["service_image"]
    # not public unless someone lists allUsers
    assert tf["variable"]["service_invokers"]["default"] == []
    assert tf["output"]["stats_service_url"]["value"] == "${google_cloud_run_v2_service.stats.uri}"


def test_cloud_run_env_names_the_bigtable_the_pipeline_writes(tf):
    env = {e["name"]: e["value"] for e in _container(tf)["env"]}
    assert env == {
        "BIGTABLE_PROJECT": "${var.project}",
        "BIGTABLE_INSTANCE": "${google_bigtable_instance.counts.name}",
        "BIGTABLE_TABLE": "${google_bigtable_table.aggregates.name}",
    }


def _service_cmd() -> tuple[list[str], dict[str, str]]:
    """The final stage's command as an argv (``sh -c`` script split) and its ``ENV`` values."""
    final = stages(SERVICE_DOCKERFILE)[-1]
    workdir = next(rest.split("=", 1)[1] for op, rest in final if op == "ARG" and rest.startswith("WORKDIR="))
    env = dict(rest.replace("${WORKDIR}", workdir).split("=", 1) for op, rest in final if op == "ENV")
    [cmd] = [json.loads(rest) for op, rest in final if op == "CMD"]
    assert cmd[:2] == ["sh", "-c"]
    return shlex.split(cmd[2]), {k: v.strip('"') for k, v in env.items()}


def test_service_image_installs_the_project_and_serves_the_built_dashboard():
    js, final = stages(SERVICE_DOCKERFILE)
    assert js[0][1].endswith(" AS js")
    assert ("RUN", "npm ci --no-audit --no-fund") in js
    js_copies = [shlex.split(rest) for op, rest in js if op == "COPY"]
    assert js_copies == [["query/dashboard/package.json", "query/dashboard/package-lock.json", "./"]]
    # the lock, then the project (tests/test_images.py), and from the js stage only uPlot
    assert ("RUN", PROJECT_INSTALL) in final
    copies = [shlex.split(rest) for op, rest in final if op == "COPY"]
    assert [c for c in copies if not c[0].startswith("--from")] == [["requirements.lock", "."]]
    [(source, target)] = [(c[1], c[2]) for c in copies if c[0] == "--from=js"]
    _, env = _service_cmd()
    # the served folder is where the js stage's npm ci put uPlot, at the path make js uses
    assert source == "/build/dashboard/node_modules/uplot/dist"
    assert env[dashboard.VENDOR_ENV] == os.path.join("/app", target)
    assert [rest for op, rest in final if op == "USER"] == ["65532:65532"]


def test_service_image_command_reads_what_cloud_run_sets(tf):
    argv, env = _service_cmd()
    assert argv[:4] == ["exec", "python", "-m", "query.service"]
    referenced = {a[1:] for a in argv if a.startswith("$")}
    cloud_run_env = {e["name"] for e in _container(tf)["env"]} | {"PORT"}
    assert referenced == cloud_run_env
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    # every flag is one viewcounts serve takes, each variable where a value of its kind goes
    values = {"PORT": env["PORT"], "BIGTABLE_PROJECT": "p", "BIGTABLE_INSTANCE": "i", "BIGTABLE_TABLE": "t"}
    args = parser.parse_args([values[a[1:]] if a.startswith("$") else a for a in argv[4:]])
    assert (args.host, args.port, args.project, args.instance, args.table) == ("0.0.0.0", 8080, "p", "i", "t")
    [port] = _container(tf)["ports"]
    assert str(port["container_port"]) == env["PORT"]
    probes = [_container(tf)[p][0]["http_get"][0]["path"] for p in ("startup_probe", "liveness_probe")]
    assert probes == ["/healthz", "/healthz"]


@pytest.mark.emulator
def test_service_image_command_serves_health_and_dashboard_from_the_checkout(bigtable_host, tmp_path):
    """The image's command, run as its ``sh -c`` script from the checkout with the variables
    Cloud Run and Terraform set (the vendor folder pointed at this checkout's build)."""
    import httpx

    from viewcounts.local.emulators import free_port

    table = f"svc-{os.urandom(5).hex()}"
    provision.create_table("test-project", "test-instance", table)
    final = stages(SERVICE_DOCKERFILE)[-1]
    [cmd] = [json.loads(rest) for op, rest in final if op == "CMD"]
    port = free_port()
    vendor = dashboard.vendor_dir() if not dashboard.missing_vendor_files() else str(tmp_path)
    env = {
        **os.environ,
        "PORT": str(port),
        "BIGTABLE_PROJECT": "test-project",
        "BIGTABLE_INSTANCE": "test-instance",
        "BIGTABLE_TABLE": table,
        dashboard.VENDOR_ENV: vendor,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    }
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["ok"] is True
        page = httpx.get(f"{url}/")
        assert page.status_code == (503 if vendor == str(tmp_path) else 200)
        stats = httpx.get(
            f"{url}/v1/stats",
            params={
                "video_id": "v",
                "event_type": "view",
                "function": "count",
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-01-01T01:00:00Z",
                "granularity": "hour",
            },
        )
        assert stats.status_code == 200 and stats.json()["series"][0]["value"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# What `terraform validate` would check, offline: every argument and block of every resource
# (and of the provider block) is one the google provider's schema has, and every required one
# is given. The provider binary comes only from the Terraform registry, which this workplace
# cannot reach; `make tf-schema` fetches the same schema from the npm registry: the jsii
# assembly of the provider's prebuilt CDKTF bindings, at the version in
# infra/terraform/provider-schema/package.json (hashicorp/google 6.50.0).
PROVIDER_JSII = os.path.join(
    REPO, "build", "terraform-provider-schema", "node_modules", "@cdktf", "provider-google", ".jsii"
)
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle"}
_DOC_ANCHOR = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/google/([0-9.]+)/docs"
    r"(?:/resources/([a-z0-9_]+))?#([a-z0-9_]+)"
)


def _argument_name(prop: dict) -> str:
    """A jsii property's Terraform name: the anchor of its registry link, else its camelCase
    name in snake_case (a few properties have no link)."""
    m = _DOC_ANCHOR.search(prop["docs"].get("summary", "") + " " + prop["docs"].get("remarks", ""))
    return m.group(3) if m else re.sub(r"(?<!^)([A-Z])", r"_\1", prop["name"]).lower()


def _nested(jsii_type: dict) -> str | None:
    """The provider struct a property's type holds (one block or a list of them), else None."""
    fqns = re.findall(r'"fqn": "(@cdktf/provider-google\.[^"]+)"', json.dumps(jsii_type))
    return fqns[0] if fqns else None


@pytest.fixture(scope="module")
def provider_schema() -> dict:
    """``{"version": provider version, "resources": {type: struct}, "provider": struct,
    "structs": {struct: {argument: (required, nested struct or None)}}}``."""
    if not os.path.exists(PROVIDER_JSII):
        pytest.skip("no provider schema here: run make tf-schema")
    with open(PROVIDER_JSII, "rb") as f:
        types = json.load(f)["types"]
    structs, resources, versions = {}, {}, set()
    for fqn, t in types.items():
        if t["kind"] != "interface" or not t.get("datatype"):
            continue
        structs[fqn] = {
            _argument_name(p): (not p.get("optional", False), _nested(p["type"])) for p in t.get("properties", [])
        }
        if "cdktf.TerraformMetaArguments" in t.get("interfaces", []) and fqn.endswith("Config"):
            links = [m for p in t.get("properties", []) if (m := _DOC_ANCHOR.search(json.dumps(p["docs"])))]
            versions |= {m.group(1) for m in links}
            if links and links[0].group(2):
                resources[f"google_{links[0].group(2)}"] = fqn
    [version] = versions
    return {
        "version": version,
        "resources": resources,
        "structs": structs,
        "provider": "@cdktf/provider-google.provider.GoogleProviderConfig",
    }


def _schema_errors(schema: dict, struct: str, body: dict, where: str, top: bool = False) -> list[str]:
    """What `terraform validate` would refuse in ``body`` (a parsed block) against ``struct``:
    unknown arguments or blocks, missing required ones, each as ``where.name: why``."""
    args = schema["structs"][struct]
    errors = [f"{where}.{k}: no such argument" for k in body if k not in args and not (top and k in META_ARGUMENTS)]
    errors += [f"{where}.{k}: required" for k, (required, _) in args.items() if required and k not in body]
    for k, value in body.items():
        nested = args.get(k, (False, None))[1]
        if nested:
            for i, block in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(block, dict):
                    errors += _schema_errors(schema, nested, block, f"{where}.{k}[{i}]")
    return errors


def _all_schema_errors(schema: dict, tf: dict, provider: dict) -> list[str]:
    errors = []
    for rtype, rs in tf["resource"].items():
        if rtype not in schema["resources"]:
            errors.append(f"{rtype}: no such resource type")
            continue
        for name, body in rs.items():
            errors += _schema_errors(schema, schema["resources"][rtype], body, f"{rtype}.{name}", top=True)
    return errors + _schema_errors(schema, schema["provider"], provider, "provider.google")


def _provider_block() -> dict:
    with open(os.path.join(TF_DIR, "versions.tf")) as f:
        doc = _unquote(hcl2.load(f))
    [block] = doc["provider"]
    return block["google"]


def test_every_argument_is_in_the_provider_schema_and_every_required_one_given(tf, provider_schema):
    # the schema is of a version versions.tf accepts (~> 6.0: 6.x)
    with open(os.path.join(TF_DIR, "versions.tf")) as f:
        constraint = _unquote(hcl2.load(f))["terraform"][0]["required_providers"][0]["google"]["version"]
    assert constraint == "~> 6.0" and provider_schema["version"].split(".")[0] == "6"
    assert _all_schema_errors(provider_schema, tf, _provider_block()) == []


_identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=24)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_schema_check_finds_an_unknown_or_a_missing_argument(tf, provider_schema, data):
    """The check can fail: an argument the resource type lacks (a typo, an argument of another
    version), or a required one left out, anywhere in the files, is reported there."""
    rtype = data.draw(st.sampled_from(sorted(tf["resource"])))
    name = data.draw(st.sampled_from(sorted(tf["resource"][rtype])))
    body = dict(tf["resource"][rtype][name])
    args = provider_schema["structs"][provider_schema["resources"][rtype]]
    required = sorted(k for k, (req, _) in args.items() if req and k in body)
    if required and data.draw(st.booleans()):
        gone = data.draw(st.sampled_from(required))
        del body[gone]
        expected = f"{rtype}.{name}.{gone}: required"
    else:
        bad = data.draw(_identifiers.filter(lambda k: k not in args and k not in META_ARGUMENTS))
        body[bad] = "x"
        expected = f"{rtype}.{name}.{bad}: no such argument"
    mutated = {**tf, "resource": {**tf["resource"], rtype: {**tf["resource"][rtype], name: body}}}
    assert _all_schema_errors(provider_schema, mutated, _provider_block()) == [expected]
