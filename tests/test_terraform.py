"""infra/terraform checked offline: the names the pipeline uses exist there and vice versa."""
import glob
import os
import shutil
import subprocess

import hcl2
import pytest

from pipelines.options import DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_SUBSCRIPTION, DEFAULT_TOPIC
from schemas import storage
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


def test_outputs_name_the_pipeline_flags(tf):
    assert set(tf["output"]) == {"input_subscription", "dead_letter_topic", "archive_path", "bigtable"}


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary on this machine")
def test_terraform_fmt_check():
    r = subprocess.run(["terraform", "fmt", "-check", "-diff", TF_DIR], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
