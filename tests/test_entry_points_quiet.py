"""The entry points start quiet (pipelines/__init__.py hides the grpcio FutureWarning
for whatever imports ``pipelines`` first): every ``python -m MODULE`` the repository's documents,
manifests and images run, and the scripts they run by path, exit 0 on ``--help`` with nothing on
stderr. The list is read from the repository, so a new entry point is checked too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = Path(__file__).resolve().parents[1]
RUN_BY = ("*.md", "docs/*.md", "infra/**/*.md", "infra/**/*.yaml", "infra/**/Dockerfile", "Makefile")


def _modules_run() -> list[str]:
    found = set()
    for pattern in RUN_BY:
        for path in ROOT.glob(pattern):
            found |= set(
                re.findall(r"python3? -m ((?:pipelines|query|viewcounts|transforms|schemas)[a-z_.]*)", path.read_text())
            )
            if path.name == "Dockerfile":
                found |= set(re.findall(r'"python", "-m", "([a-z_.]+)"', path.read_text()))
    return sorted(found)


def _yaml_commands() -> set[str]:
    found = set()
    for path in ROOT.glob("infra/**/*.yaml"):
        found |= set(re.findall(r'command: \["python", "-m", "([a-z_.]+)"\]', path.read_text()))
    return found


# the scripts run by path (not ``python -m``), and who reads their stderr
SCRIPTS = {
    "infra/dataflow/flex-template/main.py": "the Flex Template launcher's log (imported as the launcher does)",
    "infra/dataflow/step_names.py": "infra/dataflow/README.md's update steps",
}


def _quiet(argv: list[str], cwd: Path) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr == "", r.stderr[:600]


def test_the_entry_points_are_found():
    modules = _modules_run()
    assert {"pipelines.streaming", "query.service", "viewcounts.local.worker_pool"} <= set(modules), modules
    assert _yaml_commands() <= set(modules)


@pytest.mark.parametrize("module", _modules_run())
def test_python_m_help_is_quiet(module):
    _quiet([sys.executable, "-m", module, "--help"], ROOT)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_is_quiet(script):
    path = ROOT / script
    if path.name == "main.py":  # the launcher imports main.py from its folder, the packages beside it
        probe = f"import sys; sys.path[:0] = [{str(path.parent)!r}, {str(ROOT)!r}]; import main"
        _quiet([sys.executable, "-c", probe], ROOT)
    else:
        _quiet([sys.executable, str(path), "--help"], ROOT)


def test_the_update_check_is_quiet():
    """``infra/dataflow/step_names.py check`` (run before every update) builds the job's graph and
    prints its verdict only: no Beam lint on stderr."""
    r = subprocess.run(
        [sys.executable, "infra/dataflow/step_names.py", "check"], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr == "", r.stderr[:1500]
