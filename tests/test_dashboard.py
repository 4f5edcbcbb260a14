"""The dashboard's routes (query.dashboard) in the service's app, without a browser: the page
and every file it loads are served by the app itself (nothing from the internet), a missing
``make js`` build is a page saying how to build it (503, never a 500), asset names outside the
fixed lists are 404s whatever they are, and setup.py and the npm lock ship what the page needs.
The page running in Chromium is tests/test_dashboard_browser.py."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tomllib

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from query import dashboard
from query.cached_reader import CachedStatsReader
from query.service import create_app
from tests.conftest import REPO


@pytest.fixture(scope="module")
def client():
    """The service's app; its lifespan (the Bigtable client) is not started: no route here reads."""
    return TestClient(create_app(CachedStatsReader("p", "i", "t")))


def _local_refs(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


@pytest.mark.skipif(dashboard.missing_vendor_files(), reason="uPlot not built: run `make js`")
@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_page_and_every_file_it_loads_come_from_the_service(client, path):
    resp = client.get(path)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    refs = _local_refs(resp.text)
    assert any(r.endswith("uPlot.iife.min.js") for r in refs) and any(r.endswith("dashboard.js") for r in refs)
    for ref in refs:
        assert ref.startswith("/"), f"{ref} is not served by the service"
        got = client.get(ref)
        assert got.status_code == 200, ref
        if ref.startswith("/dashboard/"):
            assert got.content and got.headers["content-type"].split(";")[0] in ("text/javascript", "text/css")


def test_missing_build_is_a_page_that_says_how_to_build_it(client, tmp_path, monkeypatch):
    monkeypatch.setenv(dashboard.VENDOR_ENV, str(tmp_path))
    for path in ("/", "/dashboard"):
        resp = client.get(path)
        assert resp.status_code == 503 and "make js" in resp.text
        assert all(name in resp.text for name in dashboard.VENDOR)
    for name in dashboard.VENDOR:
        resp = client.get(f"/dashboard/vendor/{name}")
        assert resp.status_code == 404 and "make js" in resp.text
    # the page's own files do not depend on the build
    assert client.get("/dashboard/assets/dashboard.js").status_code == 200


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda n: n not in dashboard.ASSETS and n not in dashboard.VENDOR))
def test_names_outside_the_asset_lists_are_404(client, name):
    from urllib.parse import quote

    for folder in ("assets", "vendor"):
        resp = client.get(f"/dashboard/{folder}/{quote(name, safe='')}")
        assert resp.status_code == 404, (folder, name)


def _setup_package_data() -> dict:
    """pyproject.toml's ``[tool.setuptools.package-data]``: what setup.py's sdist ships beside the code."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]


def test_setup_ships_the_page_files():
    patterns = _setup_package_data()["query.dashboard"]
    page_files = ["index.html", *dashboard.ASSETS]
    for name in page_files:
        assert os.path.isfile(os.path.join(dashboard.PAGE_DIR, name)), name
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_npm_lock_pins_the_exact_uplot_version_make_js_installs(monkeypatch):
    with open(os.path.join(dashboard.PAGE_DIR, "package.json")) as f:
        wanted = json.load(f)["dependencies"]["uplot"]
    with open(os.path.join(dashboard.PAGE_DIR, "package-lock.json")) as f:
        lock = json.load(f)
    assert re.fullmatch(r"\d+\.\d+\.\d+", wanted), "pin an exact version"
    assert lock["packages"]["node_modules/uplot"]["version"] == wanted
    assert lock["packages"]["node_modules/uplot"]["integrity"].startswith("sha512-")
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    # make js installs into the folder the service reads by default
    built = re.search(r"^DASHBOARD_JS := \$\(DASHBOARD_NPM\)/(\S+)$", makefile, re.M).group(1)
    npm_dir = re.search(r"^DASHBOARD_NPM := \$\(BUILD\)/(\S+)$", makefile, re.M).group(1)
    monkeypatch.delenv(dashboard.VENDOR_ENV, raising=False)
    assert os.path.join(REPO, "build", npm_dir, built) == os.path.join(dashboard.vendor_dir(), "uPlot.iife.min.js")
