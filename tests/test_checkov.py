"""checkov (``make checkov``: build/checkov-venv, pinned by requirements-checkov.lock) over
infra/terraform: no failed check, every skip justified inline, and every skip still needed
(the same tree without its skip comments fails exactly the checks they skip)."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

TF_DIR = os.path.join(REPO, "infra", "terraform")
CHECKOV = os.path.join(REPO, "build", "checkov-venv", "bin", "checkov")
# one skip comment: the check id, then a reason of at least a few words
SKIP = re.compile(r"^\s*#checkov:skip=(CKV2?_[A-Z0-9]+_\d+)(?::(.*))?$")

pytestmark = pytest.mark.skipif(not os.access(CHECKOV, os.X_OK), reason="no checkov here: run make checkov")


def _checkov(directory: str) -> dict:
    """checkov's JSON report of the Terraform files in ``directory``: offline (``--skip-download``:
    no policy metadata fetched), Terraform checks only. Raises on a parse error or no report."""
    r = subprocess.run(
        [CHECKOV, "-d", directory, "--framework", "terraform", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(r.stdout)
    assert report["summary"]["parsing_errors"] == 0, report
    return report


def _ids(report: dict, kind: str) -> list[tuple[str, str]]:
    return sorted((c["check_id"], c["resource"]) for c in report["results"][kind])


def _skip_comments() -> list[tuple[str, str, str]]:
    """``(file, check id, reason)`` of every skip comment in infra/terraform."""
    out = []
    for name in sorted(os.listdir(TF_DIR)):
        if name.endswith(".tf"):
            with open(os.path.join(TF_DIR, name)) as f:
                for line in f:
                    if "checkov:skip" in line:
                        m = SKIP.match(line)
                        assert m, f"{name}: malformed skip comment: {line!r}"
                        out.append((name, m.group(1), (m.group(2) or "").strip()))
    return out


@pytest.fixture(scope="module")
def report() -> dict:
    return _checkov(TF_DIR)


def test_checkov_passes_and_every_skip_says_why(report):
    assert _ids(report, "failed_checks") == []
    assert report["summary"]["passed"] > 0
    skips = _skip_comments()
    assert [s for s in skips if len(s[2].split()) < 5] == [], "every skip needs a reason"
    # each skip comment is one skipped check of one resource block (of each of its instances,
    # for one with for_each: `google_pubsub_topic.viewcounts["events"]`)
    blocks = {(check, re.sub(r"\[[^]]*\]$", "", resource)) for check, resource in _ids(report, "skipped_checks")}
    assert len(blocks) == len(skips)
    assert {c for c, _ in _ids(report, "skipped_checks")} == {c for _, c, _ in skips}


def test_without_the_skip_comments_exactly_the_skipped_checks_fail(report, tmp_path):
    """The skips are live: stripped, checkov fails each check they name on its resource (so a
    skip left behind for a check that now passes, or a check checkov no longer has, shows)."""
    skipped = _ids(report, "skipped_checks")
    for name in os.listdir(TF_DIR):
        if name.endswith(".tf"):
            with open(os.path.join(TF_DIR, name)) as f:
                kept = [line for line in f if "checkov:skip" not in line]
            (tmp_path / name).write_text("".join(kept))
    stripped = _checkov(str(tmp_path))
    assert _ids(stripped, "failed_checks") == skipped
    assert _ids(stripped, "skipped_checks") == []


def test_checkov_fails_a_public_bucket(tmp_path):
    """The run can fail: the same tree with the archive bucket's public access prevention off."""
    for name in os.listdir(TF_DIR):
        if name.endswith(".tf"):
            shutil.copy(os.path.join(TF_DIR, name), tmp_path / name)
    main = tmp_path / "main.tf"
    text = main.read_text()
    assert text.count('public_access_prevention    = "enforced"') == 1
    main.write_text(
        text.replace('public_access_prevention    = "enforced"', 'public_access_prevention    = "inherited"')
    )
    assert [r for _, r in _ids(_checkov(str(tmp_path)), "failed_checks")] == ["google_storage_bucket.archive"]
