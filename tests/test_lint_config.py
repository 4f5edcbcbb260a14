"""The ruff configuration (pyproject.toml ``[tool.ruff]``, ``make lint``) and a guard of
``viewcounts.cli._COMMANDS``.

``B008`` (a call in an argument default, evaluated once when the module is imported) is on: a
clock read or a random token made once at import and shared by every call is refused, while
Beam's ``beam.DoFn.StateParam(...)``-style parameters are allowed by name
(``lint.flake8-bugbear.extend-immutable-calls``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"

# calls whose value must not be frozen at import: a default made of one is a bug (a fresh container,
# ``dict()``, is B006, which is on)
IMPORT_TIME_DEFAULTS = ("time.time()", "time.time_ns() // 1000", "uuid.uuid4().hex", "wall_clock_ms()")
SOURCE = """import time
import uuid

from schemas.storage import wall_clock_ms


def stamp(element, now={default}):
    return element, now
"""


def _ruff(source: str, as_path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(RUFF),
            "check",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--output-format",
            "concise",
            "--stdin-filename",
            as_path,
            "-",
        ],
        input=source,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize("default", IMPORT_TIME_DEFAULTS)
def test_lint_refuses_a_default_evaluated_at_import(default):
    r = _ruff(SOURCE.format(default=default), "transforms/stamping.py")
    assert "B008" in r.stdout, r.stdout + r.stderr  # (the unused imports are F401s beside it)


def test_lint_accepts_beams_dofn_parameters():
    """Beam's state and timer parameters stay allowed (``extend-immutable-calls``)."""
    source = (
        "import apache_beam as beam\n\n\n"
        "class F(beam.DoFn):\n"
        "    S = beam.transforms.userstate.ReadModifyWriteStateSpec('s', beam.coders.BytesCoder())\n\n"
        "    def process(self, element, s=beam.DoFn.StateParam(S), key=beam.DoFn.KeyParam):\n"
        "        yield element\n"
    )
    r = _ruff(source, "transforms/stateful.py")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_command_target_resolves():
    """Each ``_COMMANDS`` entry's ``add_args`` and ``run`` name an importable function (the
    ``--help`` tests resolve ``add_args`` only; a wrong ``run`` path fails when the command runs)."""
    from viewcounts.cli import _COMMANDS, _resolve

    for name, command in _COMMANDS.items():
        for target in (command.add_args, command.run):
            assert callable(_resolve(target)), (name, target)
