"""One home for the acceptance defaults (``schemas.acceptance``) and the close rule
(``schemas.closed_windows.closes_at_s``): no other product module binds a number under an
acceptance knob's name (a flag default, a keyword, an assignment, a parameter default), and no
other sums a lateness and a margin. Read from the syntax tree of every product module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PRODUCT = ("schemas", "transforms", "pipelines", "query", "viewcounts", "infra")
KNOB = re.compile(r"allowed.lateness|future.skew|event.age", re.I)


def _modules():
    root = Path(REPO)
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            yield path.relative_to(root).as_posix(), ast.parse(path.read_text())


def _named_values(node: ast.AST):
    """``(name, value node)`` of what ``node`` binds or passes by name: keywords (an argparse
    ``default=`` under its flag), assignments and parameter defaults."""
    if isinstance(node, ast.Call):
        flag = next((a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)), None)
        for kw in node.keywords:
            yield (flag if kw.arg == "default" else kw.arg), kw.value
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Name):
                yield target.id, node.value
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        yield node.target.id, node.value
    elif isinstance(node, ast.arguments):
        positional = node.posonlyargs + node.args
        yield from ((a.arg, d) for a, d in zip(positional[len(positional) - len(node.defaults) :], node.defaults))
        yield from ((a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None)


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _names(node: ast.AST) -> set[str]:
    return {
        n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))
    }


def knob_literals() -> list[tuple[str, int, str, float]]:
    """``(path, line, name, value)`` of every number the product code binds or passes under an
    acceptance knob's name."""
    return [
        (path, value.lineno, name, value.value)
        for path, tree in _modules()
        for node in ast.walk(tree)
        for name, value in _named_values(node)
        if name and KNOB.search(name) and _number(value)
    ]


def close_rule_sums() -> list[str]:
    """``path:line`` of every ``+`` whose operands name both a lateness and a margin."""
    return [
        f"{path}:{node.lineno}"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and any("lateness" in n for n in _names(node))
        and any("margin" in n for n in _names(node))
    ]


def test_the_scans_see_the_homes():
    """The scans find the literals and the sum where they belong (they can find them at all)."""
    assert {
        ("schemas/acceptance.py", "DEFAULT_ALLOWED_LATENESS_S"),
        ("schemas/acceptance.py", "DEFAULT_MAX_FUTURE_SKEW_S"),
    } <= {(path, name) for path, _, name, _ in knob_literals()}
    assert any(s.startswith("schemas/closed_windows.py:") for s in close_rule_sums())


def test_acceptance_knobs_have_no_literal_outside_their_home():
    elsewhere = [f"{p}:{line}: {name} = {v}" for p, line, name, v in knob_literals() if p != "schemas/acceptance.py"]
    assert elsewhere == []


def test_the_close_rule_is_summed_only_in_its_home():
    assert [s for s in close_rule_sums() if not s.startswith("schemas/closed_windows.py:")] == []
