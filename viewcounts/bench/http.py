"""HTTP load on the stats service (``viewcounts serve``, ``query.service``) against the real
Bigtable emulator, driven by Vegeta (``make vegeta``: Go, constant request rate, open loop,
so a slow answer never slows the offered load; it keeps up with thousands of requests/s on a
fraction of a core, which a Python generator on this 2-core machine cannot without taking
the server's CPU).

``measure_http(rate, duration_s, videos, step_rates, step_s, niceness=-10) -> dict`` (the sizes:
``viewcounts.bench.harness.BenchConfig.http_*``; run it with ``viewcounts bench --parts http``):

1. starts a Bigtable emulator and creates the table (stopped by PID at the end);
2. stores ``videos`` x ``EVENT_TYPES`` aggregates anchored at the wall clock through the
   sink's write step (``viewcounts.bench.queries.store_cells``): minute windows from the
   start of the UTC day before yesterday up to the current minute, hour windows of the last
   ``HOUR_DAYS`` days up to the current hour, so today's minute row and this month's hour row
   have an open tail the service must read fresh on every request; and, through the same
   sink step, the top lists the pipeline would store for them (``top_rows``: per event type
   and minute, hour and UTC day window, the videos ranked by count, a day summed from its
   hours);
3. runs ``python -m query.service`` (one uvicorn process, stopped by PID) on the table,
   warms it with one request of every target, and checks a sample of HTTP answers against
   the sync ``get_stats`` and the stored top lists (a wrong answer raises ``AssertionError``);
4. attacks it for ``duration_s`` at ``rate`` requests/s with one mix of targets
   (``KINDS``, in one attack, in random order): a live one-day minute series (the last 1,440
   minutes, its newest minutes open: 30 %), a past UTC day by minute (final, from the cache:
   10 %), a live 30-day hour series (720 hours, two hour rows: 30 %), three event types by
   day over 7 days (one request, three series: 10 %), on videos drawn at random, and the top
   10 (``/v1/top``, 20 %) of an event type for the current or the previous minute, hour or
   UTC day (at random); p50 and p99 per kind over that attack's requests;
5. the highest rate held: offers each of ``step_rates`` (ascending) in turn, ``step_s`` each,
   with the same mix. A step is *held* when, over all its requests, the p99 latency is
   <= 50 ms (``TARGET_P99_MS``), no request failed (a status other than 200, a transport error
   or Vegeta's 10 s timeout) and the answers per second reached 95 % of the offered rate. The
   stepping stops at the first step not held; ``http_max_rps_p99_50ms`` is the last step held
   (0 when the first is not): a lower bound at the resolution of ``step_rates``.

The service, the emulator and Vegeta run at niceness ``niceness`` (default -10, as root):
on this shared 2-core machine other work (tests, Flink clusters) otherwise takes their cores
for whole scheduling slices and the p99 measures that, not the service.

Returns ``{"http_day_minute_p99_ms", "http_30d_hour_p99_ms", "http_errors",
"http_max_rps_p99_50ms"}`` plus, per kind, ``http_<kind>_p50_ms``/``_p99_ms`` (and
``http_kinds``: ``{kind: {"share", "requests", "p50_ms", "p99_ms", "target_p99_ms"}}``, the
issue's targets in ``TARGETS_P99_MS``), ``http_offered_rps`` (``rate``),
``http_achieved_rps`` (answers with status 200 per second: their count over the span from the
first request sent to the last answer read), ``http_requests``, ``http_videos``,
``http_steps`` (per step: ``offered_rps``, ``achieved_rps``, ``requests``, ``errors``,
``p50_ms``, ``p99_ms``, ``held``, ``other_cpu_share``) and the CPU seconds per second of the
main attack (1.0 is one core) of the service, the emulator and Vegeta (``http_server_cpu_share``,
``http_emulator_cpu_share``, ``http_vegeta_cpu_share``) and of all other work on the machine
(``http_other_cpu_share``: every other process alive when the attack ends, from its start or
from the process's; processes that ended during it are missed, so a lower bound). Other work
competes for the cores and shows in the p99. (The machine's busy time from ``/proc/stat`` is
not used: measured here it came out 0.3 core below the three processes' own times.) Milliseconds are floats; with no
request of a kind its percentiles are NaN. Latency is Vegeta's: from sending the request
to reading the whole answer, over keep-alive connections on the same machine.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

import httpx
import numpy as np

from schemas import storage
from schemas.storage import Aggregate
from viewcounts.bench.e2e import _finish_profiler, _start_profiler
from viewcounts.bench.queries import EVENT_TYPES, emulator_env, store_cells, video_name
from viewcounts.local import provision
from viewcounts.local.emulators import bigtable_emulator, free_port

_LOG = logging.getLogger(__name__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VEGETA = os.path.join(REPO, "build", "bin", "vegeta")
PROJECT, INSTANCE, TABLE = "viewcounts-local", "viewcounts", "bench-http"
HOUR_DAYS = 62
KINDS = {"day_minute": 0.3, "past_day_minute": 0.1, "30d_hour": 0.3, "types_7d_day": 0.1, "top": 0.2}
TARGETS_P99_MS = {"day_minute": 10.0, "30d_hour": 20.0, "top": 20.0}  # at 500 requests/s (README, "Performance")
TOP_N = 10
TARGET_P99_MS = 50.0  # of a step held (module docstring, 5.)
HELD_SHARE = 0.95  # of the offered rate answered, for a step held


def _iso(s: int) -> str:
    return dt.datetime.fromtimestamp(s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def live_cells(videos: int, now_s: int, seed: int = 5) -> dict:
    """Aggregates for ``videos`` x ``EVENT_TYPES`` (module docstring, step 2): counts follow a
    daily cycle with Poisson noise, ``watch`` carries sums/min/max of integer seconds."""
    rng = np.random.default_rng(seed)
    day = now_s - now_s % 86400
    minute_starts = np.arange(day - 2 * 86400, now_s - now_s % 60 + 60, 60)
    hour_starts = np.arange(now_s - now_s % 3600 - HOUR_DAYS * 86400, now_s - now_s % 3600 + 3600, 3600)
    cells = {}
    for v in range(videos):
        for t, share in zip(EVENT_TYPES, (1.0, 0.1, 0.1)):
            for gran, starts, per in (("minute", minute_starts, 1), ("hour", hour_starts, 60)):
                cycle = 1.0 + 0.8 * np.sin(2 * np.pi * (starts % 86400) / 86400)
                counts = rng.poisson(50.0 / (v + 1) * share * per * cycle) + 1
                for w, c in zip(starts.tolist(), counts.tolist()):
                    if t == "watch":
                        cells[(video_name(v), t, gran, w)] = Aggregate(c, c, float(c * 300), 1.0, 3600.0)
                    else:
                        cells[(video_name(v), t, gran, w)] = Aggregate(c, 0, 0.0, None, None)
    return cells


def top_rows(cells: dict, base_ms: int) -> list:
    """The ``transforms.top.TopRow`` lists of ``cells`` (``live_cells``): per (event type,
    granularity, window) the videos ranked by ``storage.top_rank``, the first ``TOP_K``; a UTC
    day's counts are the sums of its hours. Cell timestamps from ``base_ms`` as the pipeline's
    (``storage.cell_timestamp_us`` of the list's count sum)."""
    from transforms.top import TopRow

    counts: dict[tuple[str, str, int], dict[str, int]] = {}
    for (video_id, event_type, gran, w), agg in cells.items():
        counts.setdefault((event_type, gran, w), {})[video_id] = agg.count
        if gran == "hour":
            day = counts.setdefault((event_type, "day", w - w % 86400), {})
            day[video_id] = day.get(video_id, 0) + agg.count
    rows = []
    for (event_type, gran, w), by_video in counts.items():
        items = tuple(sorted(by_video.items(), key=storage.top_rank)[: storage.TOP_K])
        rows.append(TopRow(event_type, gran, w, items, storage.cell_timestamp_us(base_ms, sum(c for _, c in items))))
    return rows


def store_top_rows(rows: list, project: str, instance: str, table: str, per_request: int = 10_000) -> None:
    """Write top lists with the sink's write step (``WriteAggregates._write``, as
    ``queries.store_cells`` writes aggregates), ``per_request`` cells per request. Raises
    ``RuntimeError`` when cells still fail after the sink's retries."""
    from transforms.bigtable_sink import WriteAggregates, cell_of

    sink = WriteAggregates(project, instance, table, max_mutations_per_request=per_request)
    sink.setup()
    try:
        failed = []
        for i in range(0, len(rows), per_request):
            failed += sink._write({cell_of(r): r for r in rows[i : i + per_request]})
    finally:
        sink.teardown()
    if failed:
        raise RuntimeError(f"{len(failed)} top lists could not be written, e.g. {failed[0]}")


def targets(base_url: str, videos: int, now_s: int, n: int, seed: int = 3) -> list[tuple[str, str]]:
    """``n`` ``(kind, url)`` in random order, kinds in the ``KINDS`` shares."""
    rng = np.random.default_rng(seed)
    minute, hour, day = now_s - now_s % 60, now_s - now_s % 3600, now_s - now_s % 86400
    ranges = {
        "day_minute": (minute - 1439 * 60, minute + 60, "minute"),
        "past_day_minute": (day - 2 * 86400, day - 86400, "minute"),
        "30d_hour": (hour - 719 * 3600, hour + 3600, "hour"),
        "types_7d_day": (day - 6 * 86400, day + 86400, "day"),
    }
    kinds = rng.choice(list(KINDS), size=n, p=list(KINDS.values()))
    out = []
    for kind in kinds.tolist():
        if kind == "top":
            gran = str(rng.choice(list(storage.TOP_GRANULARITY_SECONDS)))
            at = now_s - int(rng.integers(2)) * storage.TOP_GRANULARITY_SECONDS[gran]
            params = [("type", str(rng.choice(EVENT_TYPES))), ("granularity", gran), ("at", _iso(at)), ("n", TOP_N)]
            out.append((kind, f"{base_url}/v1/top?{urlencode(params)}"))
            continue
        start, end, gran = ranges[kind]
        types = list(EVENT_TYPES) if kind == "types_7d_day" else [str(rng.choice(EVENT_TYPES))]
        params = [("video_id", video_name(int(rng.integers(videos))))] + [("event_type", t) for t in types]
        params += [("function", "count"), ("start", _iso(start)), ("end", _iso(end)), ("granularity", gran)]
        out.append((kind, f"{base_url}/v1/stats?{urlencode(params)}"))
    return out


class Result(NamedTuple):
    """One request of an attack: ``latency_ms`` from sending to the whole answer read,
    ``error`` Vegeta's text ("" for none), ``sent_s`` epoch seconds."""

    url: str
    status: int
    latency_ms: float
    error: str
    sent_s: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


def _prioritise(pid: int, niceness: int) -> None:
    """Set the niceness of every thread a process has now (negative: ahead of other work); the
    threads they start inherit it. Per thread because Linux's ``setpriority`` on a pid sets
    only its main thread's, and the Go programs (the emulator, Vegeta) start their threads at
    once. A warning where not allowed."""
    import psutil

    if niceness:
        try:
            for t in psutil.Process(pid).threads():
                os.setpriority(os.PRIO_PROCESS, t.id, niceness)
        except (PermissionError, psutil.AccessDenied):
            _LOG.warning("could not set niceness %d (needs root): measuring among the machine's other work", niceness)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass  # it ended (a failed start is reported by its caller)


@contextlib.contextmanager
def serving(project: str, instance: str, table: str, niceness: int = 0):
    """``python -m query.service`` (``serve_main``) on a free port at ``niceness``, ready
    (``/healthz`` answers) when the ``with`` body starts; stopped by PID (SIGTERM) on leaving.
    Yields ``(base_url, psutil.Process)``; raises ``RuntimeError`` when it does not start
    within 60 s."""
    import psutil

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "query.service",
            "--port",
            str(port),
            "--project",
            project,
            "--instance",
            instance,
            "--table",
            table,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _prioritise(proc.pid, niceness)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not start (exit {proc.poll()})") from None
                time.sleep(0.2)
        _prioritise(proc.pid, niceness)  # the threads started since
        yield url, psutil.Process(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def attack(urls: list[str], rate: int, duration_s: float, niceness: int = 0) -> list[Result]:
    """Vegeta at ``rate`` requests/s for ``duration_s`` over ``urls`` (round robin): one
    ``Result`` per request. Bodies are not kept (``-max-body 0``); the results are decoded
    after the attack, so decoding takes no CPU from the service meanwhile."""
    with tempfile.TemporaryDirectory() as work:
        targets_path, results_path = os.path.join(work, "targets.txt"), os.path.join(work, "results.bin")
        with open(targets_path, "w") as f:
            f.write("".join(f"GET {u}\n\n" for u in urls))
        vegeta = subprocess.Popen(
            [
                VEGETA,
                "attack",
                f"-targets={targets_path}",
                f"-rate={rate}/s",
                f"-duration={duration_s}s",
                "-max-body=0",
                "-timeout=10s",
                "-keepalive=true",
                f"-output={results_path}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _prioritise(vegeta.pid, niceness)
        _, err = vegeta.communicate()
        if vegeta.returncode:
            raise RuntimeError(f"vegeta attack failed ({vegeta.returncode}): {err.decode()[-500:]}")
        run = subprocess.run([VEGETA, "encode", "--to", "csv", results_path], check=True, capture_output=True)
    # columns: timestamp (ns), status, latency (ns), bytes out, bytes in, error, body, attack, seq, method, url
    return [
        Result(r[10], int(r[1]), int(r[2]) / 1e6, r[5], int(r[0]) / 1e9)
        for r in csv.reader(io.StringIO(run.stdout.decode()))
    ]


def _cpu_s(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _process_cpu_s() -> dict[tuple[int, float], float]:
    """CPU seconds of every process now, by ``(pid, create time)``."""
    import psutil

    out = {}
    for p in psutil.process_iter(["create_time", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[(p.pid, p.info["create_time"])] = t.user + t.system
    return out


def _other_cpu_s(before: dict[tuple[int, float], float], measured: set[int]) -> float:
    """CPU seconds since ``before`` (``_process_cpu_s``) of the processes alive now but those of
    ``measured`` and this one: a process started since counts all of its time."""
    skip = measured | {os.getpid()}
    return sum(cpu - before.get(key, 0.0) for key, cpu in _process_cpu_s().items() if key[0] not in skip)


def _children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (the Vegeta runs)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _p(ms: list[float], q: float) -> float:
    return float(np.percentile(ms, q)) if ms else float("nan")


def summary(results: list[Result], offered_rps: int) -> dict:
    """``offered_rps``, ``achieved_rps`` (module docstring), ``requests``, ``errors``, ``p50_ms``,
    ``p99_ms`` of one attack's results, and ``held``: the step rule (module docstring, 5.)."""
    ok = [r for r in results if r.ok]
    span = max((r.sent_s + r.latency_ms / 1e3 for r in results), default=0.0) - min(
        (r.sent_s for r in results), default=0.0
    )
    ms = [r.latency_ms for r in results]
    out = {
        "offered_rps": offered_rps,
        "achieved_rps": round(len(ok) / span, 1) if span > 0 else 0.0,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "p50_ms": round(_p(ms, 50), 2),
        "p99_ms": round(_p(ms, 99), 2),
    }
    out["held"] = (
        bool(results)
        and out["p99_ms"] <= TARGET_P99_MS
        and not out["errors"]
        and out["achieved_rps"] >= HELD_SHARE * offered_rps
    )
    return out


def _check_answers(sample: list[tuple[str, str]], tops: list) -> None:
    """Every sampled HTTP answer's combined count equals the sync ``get_stats``; every top
    answer's items are the first ``n`` of the stored list (``tops``: ``TopRow``)."""
    from urllib.parse import parse_qs, urlsplit

    from query.stats import StatsReader

    stored = {(r.event_type, r.granularity, r.window_start_s): r.items for r in tops}
    with StatsReader(PROJECT, INSTANCE, TABLE) as reader, httpx.Client() as client:
        for kind, url in sample:
            q = parse_qs(urlsplit(url).query)
            body = client.get(url).json()
            if kind == "top":
                at = int(dt.datetime.fromisoformat(q["at"][0]).timestamp())
                window = at - at % storage.TOP_GRANULARITY_SECONDS[q["granularity"][0]]
                want = [{"video_id": v, "count": c} for v, c in stored[(q["type"][0], q["granularity"][0], window)]]
                if body["items"] != want[: int(q["n"][0])]:
                    raise AssertionError(f"{url}: HTTP answered {body['items']}, stored {want}")
                continue
            for series in body["series"]:
                want = reader.get_stats(
                    series["video_id"], series["event_type"], "count", q["start"][0], q["end"][0], q["granularity"][0]
                )
                if series["value"] != want.value:
                    raise AssertionError(f"{url}: HTTP answered {series['value']}, get_stats {want.value}")


def measure_http(
    rate: int,
    duration_s: float,
    videos: int,
    step_rates: tuple[int, ...],
    step_s: float,
    niceness: int = -10,
    profile_path: Path | None = None,
) -> dict:
    """See the module docstring. Needs ``build/bin/vegeta`` (``make vegeta``). ``niceness``: of
    the service, the emulator and Vegeta (the system measured), so that other work on a shared
    machine does not take their cores (0: as started). ``profile_path``: a py-spy profile of
    the service during the main attack (``record --nonblocking --format raw``, collapsed
    stacks at 50 Hz; ``viewcounts.bench.e2e``'s profiler) written there."""
    if not os.path.exists(VEGETA):
        raise RuntimeError(f"{VEGETA} is missing: run `make vegeta`")
    now_s = int(time.time())
    import psutil

    with emulator_env(bigtable_emulator()) as emu:
        _prioritise(emu.proc.pid, niceness)
        provision.create_table(PROJECT, INSTANCE, TABLE)
        started = time.monotonic()
        cells = live_cells(videos, now_s)
        store_cells(cells, PROJECT, INSTANCE, TABLE)
        tops = top_rows(cells, storage.wall_clock_ms())
        store_top_rows(tops, PROJECT, INSTANCE, TABLE)
        del cells
        _LOG.info("stored the bench aggregates in %.1f s", time.monotonic() - started)
        with serving(PROJECT, INSTANCE, TABLE, niceness) as (base, server):
            mix = targets(base, videos, now_s, 4000)
            kind_of = dict((u, k) for k, u in mix)
            with httpx.Client() as client:
                for url in kind_of:  # warm: every distinct target once
                    client.get(url).raise_for_status()
            _check_answers(mix[:60], tops)
            procs = {"server": server, "emulator": psutil.Process(emu.proc.pid)}
            before = {name: _cpu_s(p) for name, p in procs.items()}
            before["vegeta"] = _children_cpu_s()
            measured = {p.pid for p in procs.values()}
            everyone = _process_cpu_s()
            profiler = _start_profiler([server.pid], duration_s, profile_path)
            results = attack([u for _, u in mix], rate, duration_s, niceness)
            _finish_profiler(profiler)
            out = {f"http_{name}_cpu_share": (_cpu_s(p) - before[name]) / duration_s for name, p in procs.items()}
            out["http_vegeta_cpu_share"] = (_children_cpu_s() - before["vegeta"]) / duration_s
            out["http_other_cpu_share"] = _other_cpu_s(everyone, measured) / duration_s
            main = summary(results, rate)
            out.update(
                http_offered_rps=rate,
                http_achieved_rps=main["achieved_rps"],
                http_requests=len(results),
                http_videos=videos,
                http_errors=main["errors"],
                http_kinds={},
            )
            for kind, share in KINDS.items():
                ms = [r.latency_ms for r in results if kind_of.get(r.url) == kind]
                out[f"http_{kind}_p50_ms"], out[f"http_{kind}_p99_ms"] = _p(ms, 50), _p(ms, 99)
                out["http_kinds"][kind] = {
                    "share": share,
                    "requests": len(ms),
                    "p50_ms": round(_p(ms, 50), 2),
                    "p99_ms": round(_p(ms, 99), 2),
                    "target_p99_ms": TARGETS_P99_MS.get(kind),
                }
            out["http_steps"] = []
            for step in sorted(step_rates):
                everyone = _process_cpu_s()
                out["http_steps"].append(summary(attack([u for _, u in mix], step, step_s, niceness), step))
                out["http_steps"][-1]["other_cpu_share"] = round(_other_cpu_s(everyone, measured) / step_s, 2)
                _LOG.info("step %s", out["http_steps"][-1])
                if not out["http_steps"][-1]["held"]:
                    break
            out["http_max_rps_p99_50ms"] = max((s["offered_rps"] for s in out["http_steps"] if s["held"]), default=0)
    return out
