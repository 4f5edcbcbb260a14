"""The dashboard page's JavaScript (query/dashboard/dashboard.js) under hostile URL state, in
Debian's headless Chromium: the page's files are served from the checkout and the JSON API is
answered by Playwright's request routing (an ``{error}`` answer, as the service gives for a
refused query), so no service or Bigtable is needed. For any value of the URL parameters
(a bookmark edited by hand, a link from elsewhere), the page must raise no uncaught error and
both panels must settle to "ok" or "error" (``<body data-series-state / data-top-state>``).

Before: ``?from=x`` (or ``to``/``at``) made ``toInput(NaN)`` throw a RangeError in ``init``:
no panel loaded, no message, the forms' handlers never attached; ``?granularity=week`` left
the series panel "loading…" for good (``iso(NaN)`` threw inside ``loadSeries``)."""

from __future__ import annotations

import os
import tempfile
import urllib.parse

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query import dashboard
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no {CHROMIUM}: `make browser` installs it"),
    pytest.mark.skipif(bool(dashboard.missing_vendor_files()), reason="uPlot not built: run `make js`"),
]
ORIGIN = "http://dashboard.test"
SETTLED = "body[data-series-state=ok], body[data-series-state=error]"


def _serve(route) -> None:
    path = urllib.parse.urlsplit(route.request.url).path
    files = {"/dashboard": (os.path.join(dashboard.PAGE_DIR, "index.html"), "text/html")}
    files.update(
        {f"/dashboard/assets/{n}": (os.path.join(dashboard.PAGE_DIR, n), t) for n, t in dashboard.ASSETS.items()}
    )
    files.update(
        {f"/dashboard/vendor/{n}": (os.path.join(dashboard.vendor_dir(), n), t) for n, t in dashboard.VENDOR.items()}
    )
    if path in files:
        name, kind = files[path]
        with open(name, "rb") as f:
            route.fulfill(status=200, body=f.read(), content_type=kind)
    elif path.startswith("/v1/"):
        route.fulfill(status=400, body=orjson.dumps({"error": "refused by the test"}), content_type="application/json")
    else:
        route.fulfill(status=404, body=b"")


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context.route(f"{ORIGIN}/**", _serve)
            p = context.new_page()
            p.errors = []
            p.on("pageerror", lambda exc: p.errors.append(str(exc)))
            yield p
        finally:
            context.close()


HOSTILE = st.one_of(
    st.sampled_from(
        [
            "x",
            "",
            "2026-13-45T99:99",
            "9999999-01-01T00:00",
            "NaN",
            "week",
            "-1",
            "2026-12-02T10:00:00+99:99",
            "<img src=x onerror=alert(1)>",
        ]
    ),
    st.text(max_size=20),
)
PARAMS = ("video", "type", "granularity", "metric", "from", "to", "top", "at")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(PARAMS), HOSTILE, min_size=1, max_size=4))
def test_any_url_state_settles_both_panels_without_an_uncaught_error(page, params):
    page.errors.clear()
    page.goto(f"{ORIGIN}/dashboard?{urllib.parse.urlencode(params)}")
    page.wait_for_selector("body[data-top-state=ok], body[data-top-state=error]", timeout=15_000)
    if page.evaluate("document.getElementById('video').value.trim()"):
        page.wait_for_selector(SETTLED, timeout=15_000)
    assert page.errors == []
