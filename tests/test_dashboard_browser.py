"""The dashboard page (query.dashboard) in real headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright; ``make browser`` installs it, ``make js`` builds uPlot): the real service
process (``python -m query.service``) over the Bigtable emulator holding known aggregates. For
generated picks of video, event type, granularity, metric and range, the chart's data points
and the totals the page shows equal what was written; the top panel shows what ``/v1/top``
answers (its list, or its error message). A screenshot of the page is saved to pytest's tmp
path and to build/dashboard.png."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import time
import uuid

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query import dashboard
from schemas import storage
from schemas.storage import Aggregate
from tests.conftest import REPO
from viewcounts.bench.http import serving
from viewcounts.bench.queries import store_cells
from viewcounts.local import provision

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.emulator,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no {CHROMIUM}: `make browser` installs Debian's chromium (needs root or sudo)",
    ),
    pytest.mark.skipif(bool(dashboard.missing_vendor_files()), reason="uPlot not built: run `make js`"),
]
PROJECT, INSTANCE = "test-project", "test-instance"
BASE = int(dt.datetime(2024, 3, 10, 22, tzinfo=dt.timezone.utc).timestamp())  # across a day boundary
HOURS = 4
VIDEOS, TYPES = ("dash-1", "dash 2/é"), ("view", "watch")
SIZES = {"minute": 60, "hour": 3600}


def _merge(aggs: list[Aggregate]) -> Aggregate:
    mins, maxs = [a.min for a in aggs if a.min is not None], [a.max for a in aggs if a.max is not None]
    return Aggregate(
        sum(a.count for a in aggs),
        sum(a.value_count for a in aggs),
        sum(a.sum for a in aggs),
        min(mins) if mins else None,
        max(maxs) if maxs else None,
    )


def _cells() -> dict:
    """Sparse minute windows (about half present) and every hour window of ``HOURS`` hours
    from ``BASE`` for ``VIDEOS`` x ``TYPES``; ``watch`` carries values. Hour windows merge
    their minutes, as the pipeline writes them."""
    rng = np.random.default_rng(11)
    cells = {}
    for v in VIDEOS:
        for t in TYPES:
            for h in range(BASE, BASE + HOURS * 3600, 3600):
                minutes = []
                for w in range(h, h + 3600, 60):
                    if rng.random() < 0.5:
                        continue
                    n = int(rng.integers(1, 40))
                    vals = rng.normal(90, 30, n).round(2)
                    minutes.append(
                        Aggregate(n, n, float(vals.sum()), float(vals.min()), float(vals.max()))
                        if t == "watch"
                        else Aggregate(n, 0, 0.0, None, None)
                    )
                    cells[(v, t, "minute", w)] = minutes[-1]
                cells[(v, t, "hour", h)] = _merge(minutes)
    return cells


CELLS = _cells()


def _tops() -> dict:
    """``{(event_type, granularity, window_start_s): [(video_id, count), ...]}``: the top lists
    of ``CELLS`` as the pipeline stores them (``schemas.storage`` top rows; days roll up hours)."""
    counts: dict = {}
    for (v, t, gran, w), agg in CELLS.items():
        for g, start in ((gran, w),) + ((("day", w - w % 86400),) if gran == "hour" else ()):
            if agg.count:
                per_video = counts.setdefault((t, g, start), {})
                per_video[v] = per_video.get(v, 0) + agg.count
    return {k: sorted(c.items(), key=storage.top_rank)[: storage.TOP_K] for k, c in counts.items()}


TOPS = _tops()


def _store_tops(table: str) -> None:
    """Write ``TOPS`` with the sink's write step (as ``store_cells`` writes aggregates)."""
    from transforms.bigtable_sink import WriteAggregates
    from transforms.top import TopRow

    sink = WriteAggregates(PROJECT, INSTANCE, table)
    sink.setup()
    try:
        now_ms = storage.wall_clock_ms()
        batch = {}
        for (t, g, w), items in TOPS.items():
            batch[(storage.top_row_key(t, g, w), storage.qualifier(w))] = TopRow(
                t, g, w, tuple(items), storage.cell_timestamp_us(now_ms, sum(c for _, c in items))
            )
        assert not sink._write(batch)
    finally:
        sink.teardown()


def _iso(s: int) -> str:
    return dt.datetime.fromtimestamp(s, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _input(s: int) -> str:
    """A datetime-local value (UTC, minutes)."""
    return dt.datetime.fromtimestamp(s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M")


def _expected(video: str, etype: str, granularity: str, metric: str, start: int, end: int):
    """``(xs, ys, totals)``: the chart's points and the range's count/sum/avg as written."""
    size = SIZES[granularity]
    xs, ys = [], []
    count = value_count = 0
    total = 0.0
    for w in range(start, end, size):
        agg = CELLS.get((video, etype, granularity, w), Aggregate(0, 0, 0.0, None, None))
        xs.append(w)
        count, value_count, total = count + agg.count, value_count + agg.value_count, total + agg.sum
        ys.append(
            {"count": agg.count, "sum": agg.sum, "avg": agg.sum / agg.value_count if agg.value_count else None}[metric]
        )
    return xs, ys, {"count": count, "sum": total, "avg": total / value_count if value_count else None}


def _close(got, want) -> bool:
    if want is None:
        return got is None
    return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def site(bigtable_host):
    """``(base_url, page)``: the service over a table of ``CELLS`` and one Chromium page."""
    from playwright.sync_api import sync_playwright

    table = f"dash-{uuid.uuid4().hex[:10]}"
    provision.create_table(PROJECT, INSTANCE, table)
    store_cells(CELLS, PROJECT, INSTANCE, table)
    _store_tops(table)
    with serving(PROJECT, INSTANCE, table) as (url, _), sync_playwright() as pw:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 760},
            )
            try:
                page = context.new_page()
                page.goto(f"{url}/dashboard")
                page.wait_for_selector("body[data-top-state=ok], body[data-top-state=error]")
                yield url, page
            finally:
                context.close()


def _show(page, video, etype, granularity, metric, start, end) -> None:
    """Pick the series in the form and wait for the page to draw its answer."""
    page.fill("#video", video)
    page.fill("#type", etype)
    page.select_option("#granularity", granularity)
    page.select_option("#metric", metric)
    page.fill("#from", _input(start))
    page.fill("#to", _input(end))
    page.evaluate("document.body.dataset.seriesState = ''")
    page.click("#show")
    page.wait_for_selector("body[data-series-state=ok], body[data-series-state=error]")


def _show_top(page, etype, granularity, at) -> None:
    """Ask the top panel for the ``granularity`` window holding ``at`` and wait for its answer."""
    page.fill("#type", etype)
    page.select_option("#top-granularity", granularity)
    page.fill("#top-at", _input(at))
    page.evaluate("document.body.dataset.topState = ''")
    page.click("#top-show")
    page.wait_for_selector("body[data-top-state=ok], body[data-top-state=error]")


@st.composite
def _picks(draw):
    granularity = draw(st.sampled_from(("minute", "hour")))
    size = SIZES[granularity]
    lo, hi = (BASE - 3600) // size, (BASE + (HOURS + 1) * 3600) // size
    a = draw(st.integers(lo, hi - 1))
    b = draw(st.integers(a + 1, min(hi, a + 300)))
    return (
        draw(st.sampled_from(VIDEOS + ("nobody",))),
        draw(st.sampled_from(TYPES)),
        granularity,
        draw(st.sampled_from(("count", "sum", "avg"))),
        a * size,
        b * size,
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_picks())
def test_chart_points_and_totals_are_what_was_written(site, pick):
    _, page = site
    video, etype, granularity, metric, start, end = pick
    _show(page, video, etype, granularity, metric, start, end)
    status = page.text_content("#series-status")
    assert page.get_attribute("body", "data-series-state") == "ok", status
    xs, ys = page.evaluate("() => viewcountsDashboard.chart.data.map(column => Array.from(column))")
    want_xs, want_ys, totals = _expected(video, etype, granularity, metric, start, end)
    assert xs == want_xs
    assert len(ys) == len(want_ys) and all(_close(g, w) for g, w in zip(ys, want_ys)), (ys, want_ys)
    for name, want in totals.items():
        shown = page.get_attribute(f"#total-{name}", "data-value")
        assert _close(float(shown) if shown else None, want), (name, shown, want)
        text = page.text_content(f"#total-{name}")
        if want is None:
            assert text == "–", (name, text)
        else:  # shown with at most 3 decimals and thousands separators
            assert abs(float(text.replace(",", "")) - want) <= 0.0005 + 1e-9 * abs(want), (name, text, want)
    assert f"{len(want_xs)} buckets" in status and video in status
    assert page.text_content("#total-range") == f"{_iso(start)} – {_iso(end)}"


def test_a_refused_query_shows_the_services_message(site):
    url, page = site
    _show(page, VIDEOS[0], "view", "minute", "count", BASE, BASE + 40 * 86400)  # over MAX_WINDOWS
    assert page.get_attribute("body", "data-series-state") == "error"
    want = httpx.get(
        f"{url}/v1/stats",
        params={
            "video_id": VIDEOS[0],
            "event_type": "view",
            "function": "count",
            "start": _iso(BASE),
            "end": _iso(BASE + 40 * 86400),
            "granularity": "minute",
        },
    )
    assert want.status_code == 400
    assert page.text_content("#series-status") == f"HTTP 400: {want.json()['error']}"


@pytest.mark.parametrize("granularity", ["minute", "hour", "day"])
def test_top_panel_shows_what_the_top_endpoint_answers(site, granularity):
    url, page = site
    at = BASE + 3600 + 120
    _show_top(page, "view", granularity, at)
    resp = httpx.get(f"{url}/v1/top", params={"type": "view", "granularity": granularity, "at": _iso(at), "n": 10})
    body = resp.json()
    if resp.status_code == 200:  # the stored list, as the API and the page give it
        window = at - at % storage.TOP_GRANULARITY_SECONDS[granularity]
        want = [[v, c] for v, c in TOPS[("view", granularity, window)][:10]]
        assert [[i["video_id"], i["count"]] for i in body["items"]] == want
        assert page.get_attribute("body", "data-top-state") == "ok"
        shown = page.eval_on_selector_all(
            "#top-list li",
            "lis => lis.map(li => [li.querySelector('button').textContent, li.querySelector('.count').textContent])",
        )
        assert shown == [[v, f"{c:,}"] for v, c in want]
        # a click on an entry charts that video (over the range in the form)
        page.fill("#from", _input(BASE))
        page.fill("#to", _input(BASE + HOURS * 3600))
        page.evaluate("document.body.dataset.seriesState = ''")
        page.click("#top-list li:last-child button")
        page.wait_for_selector("body[data-series-state=ok], body[data-series-state=error]")
        assert page.input_value("#video") == want[-1][0]
        assert page.text_content("#series-status").startswith(f"{want[-1][0]} · view · ")
    else:  # the endpoint refuses (or does not exist yet): its message, and no list
        message = body.get("error") or body.get("detail")
        assert page.get_attribute("body", "data-top-state") == "error"
        assert page.text_content("#top-status") == f"HTTP {resp.status_code}: {message}"
        assert page.eval_on_selector_all("#top-list li", "lis => lis.length") == 0


def test_follow_now_ends_the_range_at_the_current_minute(site):
    _, page = site
    _show(page, VIDEOS[1], "watch", "minute", "sum", BASE, BASE + 3 * 3600)
    page.evaluate("document.body.dataset.seriesState = ''")
    before = time.time()
    page.check("#follow")
    page.wait_for_selector("body[data-series-state=ok], body[data-series-state=error]")
    after = time.time()
    assert "follow=1" in page.url
    page.uncheck("#follow")
    assert page.get_attribute("body", "data-series-state") == "ok"
    to = int(dt.datetime.fromisoformat(page.input_value("#to") + "+00:00").timestamp())
    start = int(dt.datetime.fromisoformat(page.input_value("#from") + "+00:00").timestamp())
    assert math.ceil(before / 60) * 60 <= to <= math.ceil(after / 60) * 60 and to - start == 3 * 3600
    xs = page.evaluate("() => Array.from(viewcountsDashboard.chart.data[0])")
    assert xs == list(range(start, to, 60))


def test_screenshot_of_a_day_of_minutes(site, tmp_path):
    _, page = site
    _show_top(page, "view", "hour", BASE + 3600)
    _show(page, VIDEOS[0], "view", "minute", "count", BASE - 3600, BASE + (HOURS + 1) * 3600)
    assert page.get_attribute("body", "data-series-state") == "ok"
    assert page.locator("#chart canvas").count() == 1
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    os.makedirs(os.path.join(REPO, "build"), exist_ok=True)
    shutil.copy(shot, os.path.join(REPO, "build", "dashboard.png"))
    assert shot.stat().st_size > 10_000
