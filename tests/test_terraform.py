"""infra/terraform checked offline: the names the pipeline uses exist there and vice versa."""
import glob
import os
import shutil
import subprocess

import hcl2
import pytest

from pipelines.options import DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_SUBSCRIPTION, DEFAULT_TOPIC
from schemas import storage
from schemas.parquet_archive import STAGING_FOLDER, hour_partition
from tests.conftest import REPO
from viewcounts import provision
from viewcounts.demo import DEAD_LETTER_SUBSCRIPTION

TF_DIR = os.path.join(REPO, "infra", "terraform")


def _unquote(v):
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, dict):
        return {_unquote(k): _unquote(x) for k, x in v.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(v, list):
        return [_unquote(x) for x in v]
    return v


@pytest.fixture(scope="module")
def tf():
    merged = {"resource": {}, "variable": {}, "output": {}}
    for path in glob.glob(os.path.join(TF_DIR, "*.tf")):
        with open(path) as f:
            doc = _unquote(hcl2.load(f))
        for kind in merged:
            for block in doc.get(kind, []):
                for name, body in block.items():
                    if kind == "resource":
                        for rname, rbody in body.items():
                            merged["resource"].setdefault(name, {})[rname] = rbody
                    else:
                        merged[kind][name] = body
    return merged


def _resolve(tf, value):
    """``${var.x}`` -> the variable's default."""
    if isinstance(value, str) and value.startswith("${var.") and value.endswith("}"):
        return tf["variable"][value[6:-1]]["default"]
    return value


def _names(tf, rtype):
    return {_resolve(tf, r["name"]) for r in tf["resource"].get(rtype, {}).values()}


def test_pubsub_names_match_the_pipeline_both_ways(tf):
    assert _names(tf, "google_pubsub_topic") == {DEFAULT_TOPIC, DEFAULT_DEAD_LETTER_TOPIC}
    assert _names(tf, "google_pubsub_subscription") == {DEFAULT_SUBSCRIPTION, DEAD_LETTER_SUBSCRIPTION}


def test_events_subscription_keeps_messages_for_replay(tf):
    sub = tf["resource"]["google_pubsub_subscription"]["events"]
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


def _rule(bucket, prefix):
    [rule] = [r for r in bucket["lifecycle_rule"] if r["condition"][0]["matches_prefix"] == [prefix]]
    return rule


def test_parquet_archive_has_its_own_retention_beside_the_raw_archive(tf):
    bucket = tf["resource"]["google_storage_bucket"]["archive"]
    parquet = _rule(bucket, "parquet/")
    assert parquet["action"][0]["type"] == "Delete"
    assert parquet["condition"][0]["age"] == "${var.parquet_retention_days}"
    assert _rule(bucket, "archive/")["condition"][0]["age"] == "${var.raw_retention_days}"
    # the analysts' copy outlives the raw one it is compacted from
    assert tf["variable"]["parquet_retention_days"]["default"] > tf["variable"]["raw_retention_days"]["default"]
    assert tf["output"]["parquet_path"]["value"] == "gs://${google_storage_bucket.archive.name}/parquet"


def test_bigquery_external_table_reads_the_parquet_layout_compaction_writes(tf):
    table = tf["resource"]["google_bigquery_table"]["events"]
    assert table["dataset_id"] == "${google_bigquery_dataset.archive.dataset_id}"
    ext = table["external_data_configuration"][0]
    parquet_path = tf["output"]["parquet_path"]["value"]
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
    folders = hour_partition(parquet_path, 1_715_680_800)[len(parquet_path) + 1:].split("/")
    assert names == [f.split("=")[0] for f in folders] == ["dt", "hour"]
    assert "{dt:DATE}" in hive["source_uri_prefix"] and "{hour:INTEGER}" in hive["source_uri_prefix"]


def test_outputs_name_the_pipeline_flags(tf):
    assert set(tf["output"]) == {"input_subscription", "dead_letter_topic", "archive_path", "parquet_path",
                                 "bigquery_events_table", "bigtable"}


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary on this machine")
def test_terraform_fmt_check():
    r = subprocess.run(["terraform", "fmt", "-check", "-diff", TF_DIR], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
