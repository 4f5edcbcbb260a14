"""Break of "the entry points start quiet" (``tests/test_entry_points_quiet.py`` runs each one
with ``--help`` only): ``infra/dataflow/step_names.py check``, the command
``infra/dataflow/README.md`` has an operator run before every update, builds the job's graph and
prints Beam's warnings on stderr (``yield`` and ``return`` in ``DedupAndJudgeLateness.process`` and
in Beam's ``ImpulseSeqGenDoFn``, a possibly nondeterministic ``FastPrimitivesCoder`` key for
``FirePanes``' state) above its one-line verdict."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.xfail(
    strict=True,
    reason="step_names.py check prints Beam's WARNING lines (yield and return in "
    "DedupAndJudgeLateness.process, a nondeterministic key coder for FirePanes) on stderr",
)
def test_the_update_check_is_quiet():
    r = subprocess.run(
        [sys.executable, "infra/dataflow/step_names.py", "check"], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr == "", r.stderr[:1500]
