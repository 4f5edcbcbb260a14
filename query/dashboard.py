"""The dashboard page of ``viewcounts serve``: a FastAPI ``APIRouter`` (``router``) that
``query.service.create_app`` includes.

Routes:

* ``GET /`` and ``GET /dashboard``: the page (``query/dashboard/index.html``). It calls the
  service's own JSON API from the browser: ``/v1/stats`` for the chart of one video and event
  type (count, sum or avg per minute or hour over a chosen UTC range, and the range's totals)
  and ``/v1/top`` for the top list of the current (or a chosen) minute, hour or day; an error
  answer of either is shown as its message in the panel that asked.
* ``GET /dashboard/assets/{name}``: the page's own script and style sheet (``ASSETS``,
  package data beside this module).
* ``GET /dashboard/vendor/{name}``: uPlot's built files (``VENDOR``), installed by
  ``make js`` (``npm ci`` of ``query/dashboard/package-lock.json`` into ``build/dashboard``)
  and read from ``vendor_dir()``. Nothing is loaded from the internet.

When uPlot's files are missing, ``/`` and ``/dashboard`` answer 503 with a page that says how
to build them (and the vendor route 404 with the same message), never a 500.
"""

from __future__ import annotations

import html
import os

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
VENDOR = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
VENDOR_ENV = "VIEWCOUNTS_DASHBOARD_VENDOR"
BUILD_HINT = (
    "The dashboard's JavaScript (uPlot) is not built: run `make js` in the repository (npm ci of "
    "query/dashboard/package-lock.json into build/dashboard), or point the environment variable "
    f"{VENDOR_ENV} at a folder holding {' and '.join(VENDOR)}, then reload this page."
)


def vendor_dir() -> str:
    """The folder uPlot's built files are served from: ``$VIEWCOUNTS_DASHBOARD_VENDOR``, else
    ``build/dashboard/node_modules/uplot/dist`` of the checkout this package lives in (where
    ``make js`` puts them)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get(VENDOR_ENV) or os.path.join(repo, "build", "dashboard", "node_modules", "uplot", "dist")


def missing_vendor_files() -> list[str]:
    """The names of ``VENDOR`` absent from ``vendor_dir()`` (empty when the page can run)."""
    folder = vendor_dir()
    return [name for name in VENDOR if not os.path.isfile(os.path.join(folder, name))]


router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=HTMLResponse, summary="the dashboard page")
@router.get("/dashboard", response_class=HTMLResponse, summary="the dashboard page")
async def page() -> Response:
    missing = missing_vendor_files()
    if missing:
        body = (
            f"<!doctype html><meta charset='utf-8'><title>viewcounts dashboard: not built</title>"
            f"<h1>viewcounts dashboard</h1><p id='build-hint'>{html.escape(BUILD_HINT)}</p>"
            f"<p>Missing in {html.escape(vendor_dir())}: {html.escape(', '.join(missing))}.</p>"
            f"<p>The JSON API works without it: <a href='/docs'>/docs</a>.</p>"
        )
        return HTMLResponse(body, status_code=503)
    return FileResponse(os.path.join(PAGE_DIR, "index.html"), media_type="text/html")


@router.get("/dashboard/assets/{name}", summary="the page's own script and style sheet")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return Response(status_code=404)
    return FileResponse(os.path.join(PAGE_DIR, name), media_type=ASSETS[name])


@router.get("/dashboard/vendor/{name}", summary="uPlot's built files (make js)")
async def vendor(name: str) -> Response:
    if name not in VENDOR:
        return Response(status_code=404)
    path = os.path.join(vendor_dir(), name)
    if not os.path.isfile(path):
        return Response(BUILD_HINT, status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=VENDOR[name])
