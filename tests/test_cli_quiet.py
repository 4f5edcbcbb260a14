"""The ``viewcounts`` command is quiet and light: ``--help`` of the command and of every subcommand
exits 0 with its help on stdout and nothing on stderr (no third-party warnings), and the command's
own ``--help`` imports none of the heavy libraries (they load inside the subcommand that needs them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from viewcounts.cli import _COMMANDS

VIEWCOUNTS = Path(sys.executable).parent / "viewcounts"  # the console script `make venv` installs

HEAVY = (
    "apache_beam",
    "google.api_core",
    "google.cloud.bigtable",
    "google.pubsub_v1",
    "grpc",
    "pyarrow",
    "duckdb",
    "polars",
    "numpy",
    "fastapi",
    "rich",
)


@pytest.mark.parametrize(
    "argv", [["--help"]] + [[name, "--help"] for name in _COMMANDS], ids=lambda argv: " ".join(argv)
)
def test_help_exits_0_and_prints_nothing_on_stderr(argv):
    assert VIEWCOUNTS.exists(), f"no console script at {VIEWCOUNTS}: `make venv` installs it"
    r = subprocess.run([str(VIEWCOUNTS), *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(f"usage: viewcounts {argv[0] if argv[0] in _COMMANDS else ''}".rstrip())


def test_top_level_help_lists_every_command_and_imports_no_heavy_library():
    probe = (
        "import sys\n"
        "from viewcounts.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        f"print(sorted(m for m in sys.modules for h in {HEAVY!r} if m == h or m.startswith(h + '.')))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    *help_lines, loaded = r.stdout.rstrip("\n").split("\n")
    assert loaded == "[]"
    help_text = "\n".join(help_lines)
    for name in _COMMANDS:
        assert f"    {name}" in help_text
