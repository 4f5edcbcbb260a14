"""The images (every ``infra/**/Dockerfile``), checked offline against the repository; no
Docker daemon is used.

Each image installs the pinned runtime environment (``pip install -r requirements.lock``), then
the project itself, built by the setuptools that lock pins (``--no-build-isolation``: an
isolated build would fetch whatever setuptools is newest) and without dependencies of its own
(``--no-deps``); any other ``pip install`` is refused. Every image is built from the repository
root, and its build context is what ``.dockerignore`` lets in: the files each ``COPY`` takes,
and what the project's install needs, which is run here from a copy of that context with no
package index. The image-specific checks: ``tests/test_dataflow.py`` (the Flex Template
launcher), ``tests/test_terraform.py`` (the stats service), ``tests/test_flink_k8s.py``.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
import setuptools
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO

DOCKERFILES = sorted(glob.glob(os.path.join(REPO, "infra", "**", "Dockerfile"), recursive=True))
DOCKERIGNORE = os.path.join(REPO, ".dockerignore")
LOCK_INSTALL = "pip install --no-cache-dir -r requirements.lock"
PROJECT_INSTALL = "--mount=type=bind,target=/src,rw pip install --no-cache-dir --no-deps --no-build-isolation /src"
_PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of each instruction of a Dockerfile's text: comments and
    blank lines dropped, continuation lines (``\\`` at the end) joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += " " + line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        op, rest = pending.split(None, 1)
        out.append((op.upper(), rest.strip()))
        pending = ""
    assert not pending, f"a continuation line ends the file: {pending!r}"
    return out


def stages(path: str) -> list[list[tuple[str, str]]]:
    """A Dockerfile's instructions, one list per build stage (each starting with its ``FROM``)."""
    with open(path) as f:
        found = []
        for op, rest in instructions(f.read()):
            if op == "FROM":
                found.append([])
            found[-1].append((op, rest))
    return found


def unpinned_installs(text: str) -> list[str]:
    """The ``RUN`` arguments of a Dockerfile's text that run ``pip install`` other than the
    lock's install and the project's (``LOCK_INSTALL``, ``PROJECT_INSTALL``)."""
    runs = [" ".join(rest.split()) for op, rest in instructions(text) if op == "RUN"]
    return [run for run in runs if _PIP_INSTALL.search(run) and run not in (LOCK_INSTALL, PROJECT_INSTALL)]


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """``.dockerignore`` as ``(admits, pattern)`` rules, the last matching one deciding (a rule
    matching a folder decides for what is under it, as Docker's does)."""
    rules = []
    with open(DOCKERIGNORE) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            admits, pattern = line.startswith("!"), line.lstrip("!")
            parts = re.split(r"(\*\*|\*|\?)", pattern)
            regex = "".join({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(p, re.escape(p)) for p in parts)
            rules.append((admits, re.compile(regex)))
    return rules


def in_context(path: str) -> bool:
    """Whether ``path`` (relative to the repository root) is in the images' build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for admits, pattern in _ignore_rules():
        if any(pattern.fullmatch(p) for p in prefixes):
            admitted = admits
    return admitted


def context_files() -> list[str]:
    """Every file of the build context, relative to the repository root (only the folders a
    ``!`` rule of ``.dockerignore`` names are walked: everything else is ignored by ``*``)."""
    with open(DOCKERIGNORE) as f:
        roots = [line.strip()[1:] for line in f if line.startswith("!")]
    files = []
    for root in roots:
        if os.path.isfile(os.path.join(REPO, root)):
            files.append(root)
        for folder, _, names in os.walk(os.path.join(REPO, root)):
            files += [os.path.relpath(os.path.join(folder, n), REPO) for n in names]
    return sorted(f for f in files if in_context(f))


def copy_context(dest: str) -> str:
    """The build context copied into ``dest`` (what ``COPY . .`` puts in an image); returns ``dest``."""
    for path in context_files():
        os.makedirs(os.path.join(dest, os.path.dirname(path)), exist_ok=True)
        shutil.copy(os.path.join(REPO, path), os.path.join(dest, path))
    return dest


def setup_packages(root: str = REPO) -> list[str]:
    """The regular packages (those with an ``__init__.py``) setup.py ships from ``root``:
    pyproject.toml's ``[tool.setuptools.packages.find]``, found as setuptools finds them."""
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    return setuptools.find_packages(root, include=find["include"])


def _lock_pin(name: str) -> str:
    with open(os.path.join(REPO, "requirements.lock")) as f:
        [version] = re.findall(rf"^{re.escape(name)}==(\S+)$", f.read(), re.M)
    return version


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: os.path.relpath(p, REPO))
def test_the_image_installs_the_lock_then_the_project_and_nothing_unpinned(dockerfile):
    with open(dockerfile) as f:
        text = f.read()
    assert text.startswith("# syntax=docker/dockerfile:1\n")  # RUN --mount needs BuildKit's syntax
    assert unpinned_installs(text) == []
    final = stages(dockerfile)[-1]
    order = [
        i for i in final if i in (("COPY", "requirements.lock ."), ("RUN", LOCK_INSTALL), ("RUN", PROJECT_INSTALL))
    ]
    assert order == [("COPY", "requirements.lock ."), ("RUN", LOCK_INSTALL), ("RUN", PROJECT_INSTALL)]


_name = st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)
_unpinned = st.one_of(
    st.builds(
        lambda pip, flags, name, spec: f"{pip} install {flags}{name}{spec}",
        st.sampled_from(["pip", "pip3", "python -m pip", "python3 -m pip"]),
        st.sampled_from(["", "--no-cache-dir ", "-U ", "--upgrade --no-deps "]),
        _name,
        st.sampled_from(["", ">=1", "==1.0", "~=2.1", "[extra]"]),
    ),
    st.sampled_from(
        [
            "pip install --no-cache-dir --no-deps .",  # an isolated build: setuptools unpinned
            "pip install -e .",
            "pip install --no-cache-dir -r requirements.txt",
            "pip install --no-cache-dir -r requirements.lock && pip install wheel",
            "--mount=type=bind,target=/src pip install --no-cache-dir --no-deps /src",
        ]
    ),
)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), command=_unpinned, continued=st.booleans())
def test_an_unpinned_install_anywhere_in_an_image_is_found(data, command, continued):
    """The check can fail: a ``pip install`` of anything but the lock or the project with the
    pinned setuptools, put anywhere after an image's first ``FROM`` (split over continuation
    lines or not), is reported."""
    with open(data.draw(st.sampled_from(DOCKERFILES))) as f:
        lines = f.read().splitlines()
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    at = data.draw(st.integers(first_from + 1, len(lines)))
    while at < len(lines) and lines[at - 1].rstrip().endswith("\\"):  # not inside another instruction
        at += 1
    words = command.split(" ")
    run = "RUN " + (" \\\n    ".join([" ".join(words[:2]), " ".join(words[2:])]) if continued else command)
    mutated = "\n".join(lines[:at] + [run] + lines[at:]) + "\n"
    assert unpinned_installs(mutated) == [" ".join(command.split())]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_copy_takes_files_the_build_context_holds(dockerfile):
    for stage in stages(dockerfile):
        for op, rest in stage:
            if op == "COPY" and not rest.startswith("--from="):
                *sources, _ = shlex.split(rest)
                for source in sources:
                    assert source == "." or (os.path.exists(os.path.join(REPO, source)) and in_context(source)), source


def test_the_build_context_holds_the_project_and_nothing_else():
    tops = {path.split("/")[0] for path in context_files()}
    packages = {p.split(".")[0] for p in setup_packages()}
    assert tops == packages | {"requirements.lock", "setup.py", "pyproject.toml", "infra"}
    assert [p for p in context_files() if p.startswith("infra/")] == [
        "infra/dataflow/flex-template/main.py",
        "infra/flink/job-server/pom.xml",
    ]
    for left_out in (".venv/bin/python", "build/flink-job-server/flink-job-server.jar", "tests/conftest.py"):
        assert not in_context(left_out), left_out
    assert not in_context("query/__pycache__/service.cpython-311.pyc")
    assert in_context("query/dashboard/index.html")


def test_the_project_installs_from_the_build_context_with_no_index_and_the_pinned_setuptools(tmp_path):
    """What ``PROJECT_INSTALL`` runs, on a copy of the context: it needs no package index (so
    no isolated build), and installs every package setup.py ships with its page files."""
    assert setuptools.__version__ == _lock_pin("setuptools")  # the one a --no-build-isolation build uses
    context = copy_context(str(tmp_path / "src"))
    target = tmp_path / "site-packages"
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps", "--no-build-isolation"]
    r = subprocess.run(
        [*argv, "--no-index", "--target", str(target), context], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert set(setup_packages(context)) == set(setup_packages())
    assert all((target / p.replace(".", "/") / "__init__.py").exists() for p in setup_packages())
    assert os.listdir(target / "query" / "dashboard") and glob.glob(str(target / "viewcounts-*.dist-info"))
