"""The documents say what the code does, both ways, with every list generated from the code.

* dead-letter codes: the reasons the product code can give a dead letter, read from its
  syntax tree (every argument passed as ``reason`` to a callable that takes one: ``_reject``,
  ``Rejection``, ``DeadLetter``, ``DeadLetterCounters.inc``...), against the table of
  ``docs/contract.md``'s "Dead letters";
* metric names: every name given to ``counter``/``gauge``/``distribution`` in the product
  code (through module constants, f-strings such as ``dead_letters_<code>``, and parameters
  such as the Bigtable sink's ``written_counter``), against the "Metrics" table;
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
import io
import re
from pathlib import Path

import orjson
import pytest

from schemas import parquet_archive, storage
from schemas.archive import DeadLetter

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "contract.md"
README = ROOT / "README.md"
PRODUCT_PACKAGES = ("schemas", "transforms", "pipelines", "query", "viewcounts")
METRIC_CONSTRUCTORS = frozenset({"counter", "gauge", "distribution"})
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


@functools.cache
def definitions() -> dict[str, list[tuple[Module, list[str], dict[str, ast.expr]]]]:
    """``{name: [(module, parameter names, defaults), ...]}`` of every function, method and class
    of the product code: parameters as a call passes them (``self`` left out; a class: its
    ``__init__``'s, or its annotated fields for a NamedTuple or dataclass)."""
    found: dict[str, list] = {}
    for mod in modules().values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.setdefault(node.name, []).append((mod, *_signature(node)))
            elif isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:
                    found.setdefault(node.name, []).append((mod, *_signature(init)))
                else:
                    fields = [
                        n.target.id
                        for n in node.body
                        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                    ]
                    found.setdefault(node.name, []).append((mod, fields, {}))
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


def arguments(function: str, parameter: str):
    """``(module, expression, enclosing function, enclosing class)`` of every value the product
    code passes as ``parameter`` to a callable called ``function`` (positionally, by keyword, or
    in a ``**{...}`` literal), and of its defaults."""
    for def_mod, names, defaults in definitions().get(function, []):
        if parameter not in names:
            continue
        if parameter in defaults:
            yield def_mod, defaults[parameter], None, None
        index = names.index(parameter)
        for mod, node, fn, cls in calls().get(function, []):
            if index < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[: index + 1]):
                yield mod, node.args[index], fn, cls
            for kw in node.keywords:
                if kw.arg == parameter:
                    yield mod, kw.value, fn, cls
                elif kw.arg is None:
                    for d in ast.walk(kw.value):
                        if isinstance(d, ast.Dict):
                            for k, v in zip(d.keys, d.values):
                                if isinstance(k, ast.Constant) and k.value == parameter:
                                    yield mod, v, fn, cls


class Unresolved(Exception):
    pass


def resolve(mod: Module | None, expr: ast.expr, fn, cls, depth: int = 0) -> set[str]:
    """The strings ``expr`` can be: a literal; a module constant (by name, by ``module.NAME``,
    or imported); an f-string (an unresolved part becomes ``<name>``); a parameter of the
    enclosing function, or an attribute ``self.x`` set from one in ``__init__`` (the values
    every caller passes, and the default). ``None`` defaults are left out. Raises
    ``Unresolved`` for anything else."""
    if depth > 6:
        raise Unresolved(ast.unparse(expr))
    if isinstance(expr, ast.Constant):
        if expr.value is None:
            return set()
        if isinstance(expr.value, str):
            return {expr.value}
    if mod is not None and isinstance(expr, ast.Name):
        value = constant(mod.name, expr.id)
        if value is not None:
            return {value}
        if fn is not None and expr.id in [a.arg for a in fn.args.args + fn.args.kwonlyargs]:
            name = cls.name if fn.name == "__init__" and cls is not None else fn.name
            return set().union(*(resolve(m, e, f, c, depth + 1) for m, e, f, c in arguments(name, expr.id)))
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
                            return resolve(mod, a.value, node, cls, depth + 1)
    if isinstance(expr, ast.JoinedStr):
        out = {""}
        for part in expr.values:
            if isinstance(part, ast.Constant):
                options = {str(part.value)}
            else:
                try:
                    options = resolve(mod, part.value, fn, cls, depth + 1)
                except Unresolved:
                    options = {f"<{ast.unparse(part.value)}>"}
            out = {a + b for a in out for b in options}
        return out
    raise Unresolved(ast.unparse(expr))


def where(mod: Module, node: ast.AST) -> str:
    return f"{mod.path.relative_to(ROOT)}:{node.lineno}"


# ---- what the code has -------------------------------------------------------------------------


@functools.cache
def codes_in_code() -> frozenset[str]:
    """Every dead-letter reason the product code passes as a ``reason`` argument. Forwarded
    reasons (``r.reason``, a parameter whose callers are such calls too) are followed to
    their source; a value that cannot be resolved to a string (a counter's ``inc(n)``, which
    shares the name) is no reason."""
    found = set()
    for sink in [name for name, defs in definitions().items() if any("reason" in d[1] for d in defs)]:
        for mod, expr, fn, cls in arguments(sink, "reason"):
            with contextlib.suppress(Unresolved):
                found |= resolve(mod, expr, fn, cls)
    return frozenset(c for c in found if not PLACEHOLDER.search(c))


@functools.cache
def metrics_in_code() -> dict[str, str]:
    """``{metric name: where it is made}`` for every ``counter``/``gauge``/``distribution``
    made in the product code; a name part that is a variable is ``<variable>``. Fails on a name
    it cannot resolve, so a new way of naming a metric is noticed here."""
    found: dict[str, str] = {}
    for mod, node, fn, cls in [c for name in METRIC_CONSTRUCTORS for c in calls().get(name, [])]:
        if not node.args or (fn is not None and fn.name in METRIC_CONSTRUCTORS):
            continue  # no name, or the wrapper itself (transforms.metrics.counter): its callers count
        try:
            names = resolve(mod, node.args[-1], fn, cls)
        except Unresolved as exc:
            pytest.fail(f"{where(mod, node)}: cannot tell the metric name of {exc}")
        for name in names:
            found.setdefault(name, where(mod, node))
    return found


def normalise(name: str) -> str:
    return PLACEHOLDER.sub("<>", name)


# ---- the checks --------------------------------------------------------------------------------


def test_the_resolvers_find_what_the_code_makes():
    """Guards the generators themselves: a few names each must find, whatever the docs say."""
    assert {"too_large", "bad_timestamp", "too_late", "write_failed"} <= codes_in_code()
    names = {normalise(n) for n in metrics_in_code()}
    assert {"events_in", "dead_letters_<>", "aggregates_written", "top_lists_written"} <= names


def test_every_dead_letter_code_is_documented_and_exists():
    documented = first_column(section(contract(), "Dead letters"))
    assert len(documented) == len(set(documented)), "a code is listed twice"
    code = codes_in_code()
    assert not set(documented) - code, f"documented but never emitted: {sorted(set(documented) - code)}"
    assert not code - set(documented), f"emitted but not in docs/contract.md: {sorted(code - set(documented))}"


def test_every_metric_is_documented_and_exists():
    documented = first_column(section(contract(), "Metrics"))
    made = metrics_in_code()
    in_code = {normalise(n): n for n in made}
    in_docs = {normalise(n) for n in documented}
    missing = sorted(f"{in_code[n]} ({made[in_code[n]]})" for n in set(in_code) - in_docs)
    assert not missing, f"metrics not in docs/contract.md: {missing}"
    assert not in_docs - set(in_code), f"documented but never made: {sorted(in_docs - set(in_code))}"


def test_dead_letter_counter_examples_are_real_codes():
    """A ``dead_letters_<code>`` named anywhere in the contract is one of the codes."""
    named = set(re.findall(r"`dead_letters_([a-z_]+)`", contract()))
    assert named, "the contract names no dead_letters_<code> example"
    assert named <= codes_in_code(), sorted(named - codes_in_code())


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
