"""Break of "docs/runners.md's Capabilities table states the same" (``pipelines/runners.py``, the
capability matrix's comment): the matrix has five columns, the four runners and any other
(portable) runner (``PORTABLE``, what a runner outside the four gets), but the documented table
has the four only, and ``tests/test_runner_home.py`` compares those four; ``PORTABLE``'s
capabilities (stamped watermark, periodic impulse, triggered side inputs ... on) are stated
nowhere in the docs, so a change of that column goes unseen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines import runners

DOC = Path(__file__).resolve().parents[1] / "docs" / "runners.md"


def _capability_table() -> tuple[list[str], dict[str, list[str]]]:
    """The header and ``{field: cells}`` of the first table under "## Capabilities"."""
    lines = DOC.read_text().split("\n## Capabilities\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return header, {r[0].strip("`"): r for r in body}


def test_the_table_has_a_row_per_capability():
    _, rows = _capability_table()
    assert set(rows) == {f.name for f in dataclasses.fields(runners.RunnerProfile)} - {"beam_runner"}


@pytest.mark.xfail(
    strict=True,
    reason="docs/runners.md's Capabilities table has no column for a runner outside the four (PORTABLE), "
    "which pipelines/runners.py's matrix has and says the table states",
)
def test_the_table_states_what_any_other_runner_gets():
    header, rows = _capability_table()
    known = set(runners.RUNNERS) | {"field", "what the builder does with it"}
    other = [i for i, h in enumerate(header) if h not in known]
    assert other, f"no column for any other runner in {header}"
    (column,) = other
    for field, cells in rows.items():
        assert cells[column] == ("yes" if getattr(runners.PORTABLE, field) else "no"), field
