"""The documents say what the code does, both ways, with every list generated from the code.

* dead-letter codes: the codes ``schemas.event`` defines (its public string constants, read
  from the imported module) against the table of ``docs/contract.md``'s "Dead letters", both
  ways; and every reason the product code can give a dead letter, read from its syntax tree
  (every argument passed as ``reason`` to a callable that takes one: ``_reject``,
  ``Rejection``, ``DeadLetter``, ``DeadLetterCounters.inc``..., through conditionals, lookups
  and concatenations), is one of them: a reason the reader cannot tell fails the check;
* metrics: every metric the product code makes with one of Beam's ``Metrics`` kinds (read from
  ``apache_beam.metrics.Metrics``) or the project's wrappers of them, its name positional or by
  keyword (through module constants, f-strings such as ``dead_letters_<code>``, and parameters
  such as the Bigtable sink's ``written_counter``), and every metric name ``transforms.metrics``
  defines, against the "Metrics" table, kinds included;
* the HTTP service's routes: the FastAPI app's own routes, against the service's table;
* the storage layout: row keys made by ``schemas.storage``, the column family, a column
  qualifier, the fields of an encoded cell, of a dead-letter file line and of the Parquet
  archive's schema, against the "Storage layout" tables;
* the CLI: every ``viewcounts <command>`` the README names is a subcommand, and every
  subcommand is in its "Commands" table;
* the README's pointers: no path outside the repository, no tracker note, and its links to
  Markdown files in the repository resolve, anchors included.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import inspect
import io
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import orjson
import pytest
from apache_beam.metrics import Metrics

from schemas import parquet_archive, storage
from schemas.archive import DeadLetter

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "contract.md"
README = ROOT / "README.md"
PRODUCT_PACKAGES = ("schemas", "transforms", "pipelines", "query", "viewcounts")
# Beam's metric kinds: the methods of ``Metrics`` that make a metric from a namespace and a name
METRIC_CONSTRUCTORS = frozenset(
    name
    for name, method in vars(Metrics).items()
    if isinstance(method, staticmethod) and {"namespace", "name"} <= set(inspect.signature(method).parameters)
)
PLACEHOLDER = re.compile(r"<[^<>]+>")


# ---- the documents -------------------------------------------------------------------------


def section(markdown: str, title: str) -> str:
    """The text under the heading ``title`` (any level) up to the next heading of the same
    level or above. Fails the test when the heading is missing."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*?)\s*$", line)
        if m and m.group(2) == title:
            level = len(m.group(1))
            end = next(
                (
                    j
                    for j in range(i + 1, len(lines))
                    if (h := re.match(r"(#+) ", lines[j])) and len(h.group(1)) <= level
                ),
                len(lines),
            )
            return "\n".join(lines[i + 1 : end])
    pytest.fail(f"no heading {title!r}")


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: each a list of rows (header and separator left out),
    each row its cells' text."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            found.append(current[2:])
            current = []
    return found


def first_column(text: str, table: int = 0) -> list[str]:
    """The code-formatted name opening each row of the ``table``-th table of ``text``."""
    names = []
    for row in tables(text)[table]:
        m = re.match(r"`([^`]+)`", row[0])
        assert m, f"row without a `name` first: {row}"
        names.append(m.group(1))
    return names


@functools.cache
def contract() -> str:
    return CONTRACT.read_text()


# ---- the product code's syntax trees -------------------------------------------------------


class Module:
    """One product module: its tree, its module-level string constants and what it imports."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        self.tree = ast.parse(path.read_text(), str(path))
        self.constants: dict[str, str] = {}
        self.imports: dict[str, tuple[str, str | None]] = {}  # local name -> (module, name or None)
        for node in self.tree.body:
            if (
                isinstance(node, (ast.Assign, ast.AnnAssign))
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        self.constants[target.id] = node.value.value
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.imports[a.asname or a.name] = (node.module, a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    self.imports[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0],
                        None,
                    )


@functools.cache
def modules() -> dict[str, Module]:
    found = {}
    for package in PRODUCT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = Module(name, path)
    return found


def constant(module: str, name: str, depth: int = 0) -> str | None:
    """The string constant ``name`` of ``module``, following ``from x import name``."""
    mod = modules().get(module)
    if mod is None or depth > 5:
        return None
    if name in mod.constants:
        return mod.constants[name]
    if name in mod.imports and mod.imports[name][1] is not None:
        return constant(*mod.imports[name], depth + 1)
    return None


def walk_with_scope(tree: ast.AST):
    """``(node, enclosing function or None, enclosing class or None)`` for every node."""

    def visit(node, function, cls):
        yield node, function, cls
        for child in ast.iter_child_nodes(node):
            yield from visit(
                child,
                child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function,
                child if isinstance(child, ast.ClassDef) else cls,
            )

    yield from visit(tree, None, None)


def callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


class Definition(NamedTuple):
    """A function, method or class of the product code as a call sees it: its module, the class
    a method belongs to (None for a module-level function or a class), its parameters as a
    call passes them (``self`` left out; a class: its ``__init__``'s, or its annotated fields
    for a NamedTuple or dataclass) and their defaults."""

    module: Module
    owner: str | None
    parameters: list[str]
    defaults: dict[str, ast.expr]
    is_class: bool = False


@functools.cache
def definitions() -> dict[str, list[Definition]]:
    """``{name: [Definition, ...]}`` of every function, method and class of the product code."""
    found: dict[str, list] = {}
    for mod in modules().values():
        for node, _, cls in walk_with_scope(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                owner = cls.name if cls is not None and node in cls.body else None
                found.setdefault(node.name, []).append(Definition(mod, owner, *_signature(node)))
            elif isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:
                    found.setdefault(node.name, []).append(Definition(mod, None, *_signature(init), is_class=True))
                else:
                    fields = [
                        n.target.id
                        for n in node.body
                        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                    ]
                    found.setdefault(node.name, []).append(Definition(mod, None, fields, {}, is_class=True))
    return found


@functools.cache
def calls() -> dict[str, list[tuple[Module, ast.Call, ast.AST | None, ast.ClassDef | None]]]:
    """``{callee name: [(module, call, enclosing function, enclosing class), ...]}``."""
    found: dict[str, list] = {}
    for mod in modules().values():
        for node, fn, cls in walk_with_scope(mod.tree):
            if isinstance(node, ast.Call) and callee(node):
                found.setdefault(callee(node), []).append((mod, node, fn, cls))
    return found


def _signature(fn) -> tuple[list[str], dict[str, ast.expr]]:
    args = fn.args.posonlyargs + fn.args.args
    names = [a.arg for a in args]
    defaults = dict(zip(names[len(names) - len(fn.args.defaults) :], fn.args.defaults))
    defaults.update({a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None})
    names += [a.arg for a in fn.args.kwonlyargs]
    return (names[1:] if names[:1] in (["self"], ["cls"]) else names), defaults


def _classes(expr: ast.expr, fn, cls, depth: int = 0) -> set[str]:
    """The names of the classes an object ``expr`` (a call's receiver) can be an instance of, as
    far as the code shows it: ``self`` in a method, a class named directly, a call's result,
    and a local or ``self.x`` assigned from one of those; empty when it cannot tell (a
    parameter, an item of a container)."""
    if depth > 4:
        return set()
    if isinstance(expr, ast.Call):
        return {callee(expr)} - {None}
    if isinstance(expr, ast.Name) and expr.id in ("self", "cls"):
        return {cls.name} if cls is not None else set()
    if isinstance(expr, ast.Name) and any(d.is_class for d in definitions().get(expr.id, [])):
        return {expr.id}
    scope = fn if isinstance(expr, ast.Name) else cls
    if scope is None or not isinstance(expr, (ast.Name, ast.Attribute)):
        return set()
    found = set()
    for node, inner_fn, _ in walk_with_scope(scope):
        if isinstance(node, ast.Assign) and any(ast.unparse(t) == ast.unparse(expr) for t in node.targets):
            found |= _classes(node.value, inner_fn if scope is cls else fn, cls, depth + 1)
    return found


def _module_named(mod: Module, alias: str) -> str | None:
    """The module that ``alias`` names in ``mod`` (``import a.b as alias``, ``from a import b``)."""
    module, name = mod.imports.get(alias, (None, None))
    return module if name is None else f"{module}.{name}"


def calls_definition(definition: Definition, mod: Module, call: ast.Call, fn, cls) -> bool | None:
    """Whether ``call`` (in ``mod``, inside ``fn`` and ``cls``) can be a call of ``definition``:
    a function or class called by its name in its module or where it is imported, or through
    its module (``metrics.counter``); a method called on an object of its class (``_classes``).
    A call of a same-named callable of another class or library is not. None (perhaps) for a
    method called on an object whose class ``_classes`` cannot tell."""
    f = call.func
    name = callee(call)
    if isinstance(f, ast.Name):
        return definition.owner is None and (
            mod is definition.module or mod.imports.get(name) == (definition.module.name, name)
        )
    if definition.owner is None:
        return isinstance(f.value, ast.Name) and _module_named(mod, f.value.id) == definition.module.name
    classes = _classes(f.value, fn, cls)
    return definition.owner in classes if classes else None


def bound(call: ast.Call, parameters: list[str], parameter: str) -> ast.expr | None:
    """The expression ``call`` passes as ``parameter`` of a callable taking ``parameters``:
    positionally, by keyword or in a ``**{...}`` literal; None when it passes none."""
    index = parameters.index(parameter)
    if index < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[: index + 1]):
        return call.args[index]
    for kw in call.keywords:
        if kw.arg == parameter:
            return kw.value
        if kw.arg is None:
            for d in ast.walk(kw.value):
                if isinstance(d, ast.Dict):
                    for k, v in zip(d.keys, d.values):
                        if isinstance(k, ast.Constant) and k.value == parameter:
                            return v
    return None


def arguments(function: str, parameter: str):
    """``(module, expression, enclosing function, enclosing class, certain)`` of every value the
    product code passes as ``parameter`` to a callable called ``function``, and of its
    defaults; ``certain`` is False for a call that only perhaps calls it (``calls_definition``)."""
    for definition in definitions().get(function, []):
        if parameter not in definition.parameters:
            continue
        if parameter in definition.defaults:
            yield definition.module, definition.defaults[parameter], None, None, True
        for mod, node, fn, cls in calls().get(function, []):
            value = bound(node, definition.parameters, parameter)
            match = None if value is None else calls_definition(definition, mod, node, fn, cls)
            if match is not False and value is not None:
                yield mod, value, fn, cls, bool(match)


def passed(function: str, parameter: str, read) -> set[str]:
    """The union of ``read(module, expression, function, class)`` over ``arguments(function,
    parameter)``; a value ``read`` cannot tell (``Unresolved``) is skipped where the call only
    perhaps calls ``function``, and raised where it certainly does."""
    values = set()
    for mod, expr, fn, cls, certain in arguments(function, parameter):
        try:
            values |= read(mod, expr, fn, cls)
        except Unresolved:
            if certain:
                raise
    return values


class Unresolved(Exception):
    pass


def resolve(mod: Module | None, expr: ast.expr, fn, cls, depth: int = 0, forwarded: str | None = None) -> set[str]:
    """The strings ``expr`` can be: a literal; a module constant (by name, by ``module.NAME``,
    or imported); an f-string (an unresolved part becomes ``<name>``); either branch of a
    conditional; any value of a dict literal it is looked up in; the concatenations of a
    ``+``; a parameter of the enclosing function, or an attribute ``self.x`` set from one in
    ``__init__`` (the values every caller passes, and the default). ``None`` defaults are left
    out, and so is ``x.<forwarded>`` (a value passed on from an object made elsewhere, whose
    making is read on its own). Raises ``Unresolved`` for anything else."""

    def again(e, f=fn, c=cls, m=mod):
        return resolve(m, e, f, c, depth + 1, forwarded)

    if depth > 6:
        raise Unresolved(ast.unparse(expr))
    if isinstance(expr, ast.Constant):
        if expr.value is None:
            return set()
        if isinstance(expr.value, str):
            return {expr.value}
    if isinstance(expr, ast.IfExp):
        return again(expr.body) | again(expr.orelse)
    if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Dict):
        return set().union(*(again(v) for v in expr.value.values))
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return {a + b for a in again(expr.left) for b in again(expr.right)}
    if isinstance(expr, ast.Attribute) and expr.attr == forwarded:
        return set()
    if mod is not None and isinstance(expr, ast.Name):
        value = constant(mod.name, expr.id)
        if value is not None:
            return {value}
        if fn is not None and expr.id in [a.arg for a in fn.args.args + fn.args.kwonlyargs]:
            name = cls.name if fn.name == "__init__" and cls is not None else fn.name
            return passed(name, expr.id, lambda m, e, f, c: again(e, f, c, m))
    if mod is not None and isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        owner = expr.value.id
        if owner in mod.imports:
            module, name = mod.imports[owner]
            value = constant(module if name is None else f"{module}.{name}", expr.attr)
            if value is not None:
                return {value}
        if owner == "self" and cls is not None:
            for node in ast.walk(cls):
                if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                    for a in ast.walk(node):
                        if isinstance(a, ast.Assign) and any(
                            isinstance(t, ast.Attribute) and t.attr == expr.attr for t in a.targets
                        ):
                            return again(a.value, node)
    if isinstance(expr, ast.JoinedStr):
        out = {""}
        for part in expr.values:
            if isinstance(part, ast.Constant):
                options = {str(part.value)}
            else:
                try:
                    options = again(part.value)
                except Unresolved:
                    options = {f"<{ast.unparse(part.value)}>"}
            out = {a + b for a in out for b in options}
        return out
    raise Unresolved(ast.unparse(expr))


def where(mod: Module, node: ast.AST) -> str:
    return f"{mod.path.relative_to(ROOT)}:{node.lineno}"


def product_module(name: str) -> ModuleType:
    """The product module ``name`` (dotted) run from its file under ``ROOT``, apart from the one
    ``import`` gives (it is registered under its name only while it runs)."""
    path = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved
    return module


def public_strings(module: ModuleType) -> dict[str, str]:
    """``{name: value}`` of ``module``'s public module-level string constants."""
    return {k: v for k, v in vars(module).items() if isinstance(v, str) and k.isupper() and not k.startswith("_")}


# ---- what the code has -------------------------------------------------------------------------


@functools.cache
def defined_codes() -> frozenset[str]:
    """The dead-letter codes: ``schemas.event``'s public string constants."""
    return frozenset(public_strings(product_module("schemas.event")).values())


@functools.cache
def codes_in_code() -> dict[str, str]:
    """``{reason: where it is given}`` for every dead-letter reason the product code passes as a
    ``reason`` argument. Forwarded reasons (``r.reason``, a parameter whose callers are such
    calls too) are followed to their source. Fails on a reason it cannot tell, so a new way of
    giving one is noticed here."""
    found: dict[str, str] = {}

    def read(mod, expr, fn, cls):
        try:
            reasons = resolve(mod, expr, fn, cls, forwarded="reason")
        except Unresolved as exc:
            raise Unresolved(f"{exc} ({where(mod, expr)})") from None
        for reason in reasons:
            found.setdefault(reason, where(mod, expr))
        return reasons

    for sink in [name for name, defs in definitions().items() if any("reason" in d.parameters for d in defs)]:
        try:
            passed(sink, "reason", read)
        except Unresolved as exc:
            pytest.fail(f"cannot tell the dead-letter reason {exc}, passed as `reason` to a {sink}")
    return found


def _metric_name(mod: Module, call: ast.Call, fn, cls) -> ast.expr | None:
    """The expression ``call`` (of a metric kind's name) passes as the metric's name: by the
    product's own definition of that name when ``call`` calls one (a wrapper such as
    ``transforms.metrics.counter``), else by Beam's ``Metrics`` method; None when it passes no
    ``name`` (a wrapper naming it otherwise, whose own call of Beam's is read instead)."""
    kind = callee(call)
    wrappers = [d for d in definitions().get(kind, []) if calls_definition(d, mod, call, fn, cls) is True]
    parameters = wrappers[0].parameters if wrappers else list(inspect.signature(getattr(Metrics, kind)).parameters)
    return bound(call, parameters, "name") if "name" in parameters else None


@functools.cache
def metrics_in_code() -> dict[str, tuple[str, str]]:
    """``{metric name: (kind, where it is made)}`` for every metric made in the product code by a
    call of one of ``METRIC_CONSTRUCTORS`` (Beam's or a wrapper of the same name); a name part
    that is a variable is ``<variable>``. Fails on a name it cannot tell, so a new way of
    naming a metric is noticed here."""
    made = [
        (mod, node, fn, cls, expr)
        for name in sorted(METRIC_CONSTRUCTORS)
        for mod, node, fn, cls in calls().get(name, [])
        if (expr := _metric_name(mod, node, fn, cls)) is not None
    ]
    # a name passed straight through a wrapper's parameter is found again at the wrapper's
    # callers: read those first, so that a metric is placed where it is named
    made.sort(key=lambda m: isinstance(m[4], ast.Name) and m[2] is not None and m[4].id in _signature(m[2])[0])
    found: dict[str, tuple[str, str]] = {}
    for mod, node, fn, cls, expr in made:
        try:
            names = resolve(mod, expr, fn, cls)
        except Unresolved as exc:
            pytest.fail(f"{where(mod, node)}: cannot tell the metric name of {exc}")
        for name in names:
            found.setdefault(name, (callee(node), where(mod, node)))
    return found


@functools.cache
def defined_metric_names() -> frozenset[str]:
    """The metric names ``transforms.metrics`` defines (its public string constants but the
    namespace)."""
    module = product_module("transforms.metrics")
    return frozenset(v for v in public_strings(module).values() if v != module.NAMESPACE)


def normalise(name: str) -> str:
    return PLACEHOLDER.sub("<>", name)


def matches(documented: str, name: str) -> bool:
    """Whether the metric ``name`` (a ``<placeholder>`` for a part the code does not fix) is the
    documented one, whose ``<placeholder>`` stands for any non-empty part."""
    if normalise(documented) == normalise(name):
        return True
    pattern = "".join(
        ".+" if PLACEHOLDER.fullmatch(p) else re.escape(p) for p in re.split(f"({PLACEHOLDER.pattern})", documented)
    )
    return re.fullmatch(pattern, name) is not None


# ---- the checks --------------------------------------------------------------------------------


def test_the_resolvers_find_what_the_code_makes():
    """Guards the generators themselves: a few names each must find, whatever the docs say."""
    assert {"too_large", "bad_timestamp", "too_late", "write_failed"} <= set(codes_in_code())
    assert {"too_large", "bad_timestamp", "too_late", "write_failed"} <= defined_codes()
    names = {normalise(n) for n in metrics_in_code()}
    assert {"events_in", "aggregates_written", "top_lists_written", "dead_letters_<>"} <= names
    assert {"events_in", "dead_letters", "messages_acked"} <= defined_metric_names()


def test_every_dead_letter_code_is_documented_and_exists():
    documented = first_column(section(contract(), "Dead letters"))
    assert len(documented) == len(set(documented)), "a code is listed twice"
    defined = defined_codes()
    assert not set(documented) - defined, f"documented but not in schemas.event: {sorted(set(documented) - defined)}"
    assert not defined - set(documented), (
        f"in schemas.event but not in docs/contract.md: {sorted(defined - set(documented))}"
    )
    given = codes_in_code()
    stray = sorted(f"{c!r} ({given[c]})" for c in set(given) - defined)
    assert not stray, f"dead-letter reasons given that are not codes of schemas.event (nor documented): {stray}"
    assert not defined - set(given), f"codes never given as a reason: {sorted(defined - set(given))}"


def test_every_metric_is_documented_and_exists():
    rows = {row[0].strip("`"): row[1] for row in tables(section(contract(), "Metrics"))[0]}
    made = metrics_in_code()
    undocumented = sorted(
        f"{name} ({where})" for name, (_, where) in made.items() if not any(matches(d, name) for d in rows)
    )
    assert not undocumented, f"metrics not in docs/contract.md: {undocumented}"
    wrong_kind = sorted(
        f"{name}: made as {kind} ({where})"
        for name, (kind, where) in made.items()
        for d, documented_kind in rows.items()
        if matches(d, name) and documented_kind != kind
    )
    assert not wrong_kind, f"metrics made as another kind than docs/contract.md says: {wrong_kind}"
    never = sorted(d for d in rows if not any(matches(d, name) for name in made))
    assert not never, f"documented but never made: {never}"
    unlisted = sorted(n for n in defined_metric_names() if not any(matches(d, n) for d in rows))
    assert not unlisted, f"names in transforms.metrics but not in docs/contract.md: {unlisted}"


def test_dead_letter_counter_examples_are_real_codes():
    """A ``dead_letters_<code>`` named anywhere in the contract is one of the codes."""
    named = set(re.findall(r"`dead_letters_([a-z_]+)`", contract()))
    assert named, "the contract names no dead_letters_<code> example"
    assert named <= defined_codes(), sorted(named - defined_codes())


def test_every_http_route_is_documented_and_exists():
    """The app's routes from its own OpenAPI schema (every route it declares is in it)."""
    from query.cached_reader import CachedStatsReader
    from query.service import create_app

    app = create_app(CachedStatsReader())
    served = {
        f"{method.upper()} {path}" for path, operations in app.openapi()["paths"].items() for method in operations
    }
    text = section(contract(), "The HTTP service (`viewcounts serve`)")
    documented = first_column(text)
    assert not set(documented) - served, f"documented but not served: {sorted(set(documented) - served)}"
    assert not served - set(documented), f"served but not in docs/contract.md: {sorted(served - set(documented))}"
    mentioned = set(re.findall(r"`(/[a-z.]+)`", text))
    assert mentioned == {app.docs_url, app.openapi_url}, f"paths named in the text: {sorted(mentioned)}"


def _doc_key(key: bytes) -> str:
    """A row key made from the sample below, written as the contract writes keys."""
    text = key.decode()
    for sample, pattern in (
        ("%23v", "<video_id escaped>"),
        ("e_t", "<event_type>"),
        ("19700101", "YYYYMMDD"),
        ("197001", "YYYYMM"),
        ("1970", "YYYY"),
    ):
        text = text.replace(sample, pattern, 1)
    return text


def test_storage_row_keys_family_qualifier_and_cell_fields():
    text = section(contract(), "Bigtable rows")
    keys_made = {_doc_key(storage.row_key("#v", "e_t", g, 0)) for g in storage.GRANULARITY_SECONDS}
    keys_made |= {_doc_key(storage.top_row_key("e_t", g, 0)) for g in storage.TOP_GRANULARITY_SECONDS}
    keys_documented = {re.match(r"`([^`]+)`", row[1]).group(1) for row in tables(text)[0]}
    assert keys_documented == keys_made

    families = re.findall(r"column family, `([^`]+)`", text)
    assert families == [storage.FAMILY], f"documented families {families}, the code's {storage.FAMILY!r}"

    examples = re.findall(r"`(\d+)` is the minute starting (\S+Z)", text)
    assert examples, "no qualifier example"
    from schemas.event import parse_event_time

    for digits, instant in examples:
        assert storage.qualifier(parse_event_time(instant) // 1_000_000) == digits.encode()

    cell = orjson.loads(storage.encode_cell(storage.Aggregate(1, 1, 1.0, 1.0, 1.0), "t", "c"))
    assert first_column(text, table=1) == list(cell)


def test_file_layouts_name_the_fields_the_code_writes():
    letter = orjson.loads(DeadLetter(b"x", "json_error", "d", 0).to_json())
    assert first_column(section(contract(), "Dead-letter files")) == list(letter)
    assert first_column(section(contract(), "Parquet archive")) == parquet_archive.SCHEMA.names


@functools.cache
def cli_commands() -> frozenset[str]:
    from viewcounts import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["--help"])
    return frozenset(re.search(r"\{([a-z,-]+)\}", out.getvalue()).group(1).split(","))


def test_cli_commands_in_the_readme_exist_and_every_command_is_in_its_table():
    readme = README.read_text()
    named = set(re.findall(r"\bviewcounts ([a-z][a-z-]*)", readme))
    assert not named - cli_commands(), f"README names commands that do not exist: {sorted(named - cli_commands())}"
    table = "\n".join(row[0] for row in tables(section(readme, "Commands (`.venv/bin/viewcounts ...`)"))[0])
    listed = set(re.findall(r"`viewcounts ([a-z][a-z-]*)", table))
    assert not cli_commands() - listed, f"commands missing from the README's table: {sorted(cli_commands() - listed)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_points_inside_the_repository():
    readme = README.read_text()
    outside = re.findall(
        r".*(?:\.\./shared/(?!cases)|SPEC\.md|DESIGN\.md|SPEC section|issue-\d+ notes|tracker).*", readme
    )
    assert not outside, "README points outside the repository:\n" + "\n".join(outside)
    for target in re.findall(r"\]\(([^)#]+)", section(readme, "Documentation")):
        assert (ROOT / target).exists(), f"README's Documentation links a missing file: {target}"


@pytest.mark.parametrize("document", ["README.md", "docs/contract.md", "docs/decisions.md"])
def test_links_to_markdown_files_resolve(document):
    """Every link from ``document`` to a Markdown file of the repository (``x.md``, ``x.md#anchor``)
    names a file that exists and, with an anchor, one of its headings."""
    here = (ROOT / document).parent
    for path, anchor in re.findall(r"\]\(([^):#]+\.md)(?:#([^)]+))?\)", (ROOT / document).read_text()):
        target = (here / path).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"{document} links a missing file: {path}"
        if anchor:
            anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", target.read_text(), re.M)}
            assert anchor in anchors, f"{document} links {path}#{anchor}, which has no such heading"
