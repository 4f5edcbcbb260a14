"""Every scenario case in ../shared/cases (docs/contract.md, Scenario cases), through the real pipeline and emulator,
on the local runner, on Prism and on an embedded Flink at parallelism 2 (``FLINK_PARALLELISM``).

The cases are read where they are, never copied or edited. A case that changes metadata
mid-stream needs a triggered side input fed by the case's stream, which Prism does not
have (Beam issue 31438) and Flink cannot be fed (one TestStream output only): there the
scenario runner must refuse it, not store stale titles.
"""

import glob
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_CASES
from viewcounts.commands.scenario import (
    UnsupportedOnRunner,
    changes_metadata_mid_stream,
    check_case,
    load_case,
    run_case,
)

CASES = sorted(glob.glob(os.path.join(SHARED_CASES, "*.json")))
pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def test_the_shared_cases_are_there():
    assert CASES, f"no case files under {SHARED_CASES}"


FLINK_PARALLELISM = 2


@pytest.mark.parametrize(
    "runner", ["local", pytest.param("prism", marks=pytest.mark.prism), pytest.param("flink", marks=pytest.mark.flink)]
)
@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(c) for c in CASES])
def test_case(path, runner, bigtable_host):
    case = load_case(path)
    parallelism = FLINK_PARALLELISM if runner == "flink" else 1
    if runner != "local" and changes_metadata_mid_stream(case):
        with pytest.raises(UnsupportedOnRunner):
            run_case(case, runner, parallelism)
        return
    assert check_case(case, run_case(case, runner, parallelism)) == []


def test_check_fails_on_a_wrong_expectation(bigtable_host):
    case = load_case(os.path.join(SHARED_CASES, "03-avg-from-sums.json"))
    result = run_case(case)
    case["expect"]["rows"][0]["count"] += 1
    case["expect"]["metrics"]["events_in"] = 999
    case["expect"]["queries"][0]["value"] = -1
    problems = check_case(case, result)
    assert len(problems) == 3, problems


def test_scenario_command_exit_codes(bigtable_host, tmp_path):
    case = os.path.join(SHARED_CASES, "02-duplicates-dedup.json")
    cmd = [sys.executable, "-m", "viewcounts.cli", "scenario"]
    ok = subprocess.run(cmd + ["check", case], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    run = subprocess.run(cmd + ["run", case], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and '"too_late": 3' in run.stdout
    broken = load_case(case)
    broken["expect"]["dead_letters"]["too_late"] = 2
    bad = tmp_path / "bad.json"
    bad.write_text(__import__("json").dumps(broken))
    fail = subprocess.run(cmd + ["check", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert fail.returncode == 1 and "too_late" in fail.stdout
