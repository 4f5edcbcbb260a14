"""``viewcounts bench [--quick] --json PATH``: the benchmark harness (README, "Performance").

One run, one machine, the same events for every system:

1. **Core job**: the product's ``CountEvents`` on the local runner in streaming mode
   (``viewcounts.bench.core``), storage replaced by a counting sink.
2. **Peers**: the naive Beam pipeline (``naive_beam``, same runner, on a prefix of the
   events: it runs at about a thousand events/s), PyFlink SQL (``pyflink_sql``, its own venv,
   ``make flink-venv``), the plain-loop limit (``plain_loop``).
3. **Cross-check**: every system's aggregates must equal the plain loop's over the same
   events, or the run fails (``BenchMismatch``).
4. **Scaling**: core and loop events/s against distinct videos, events per message and the
   duplicate rate.
5. **End to end** through the emulators (``e2e.find_sustained_rate``) on the local runner.
6. **On Flink**: the core job on a session cluster beside PyFlink SQL at
   parallelism 2 over the same events (``flink_core``: ``core_flink``), and end to end on a
   session cluster at parallelism 1 and 2 (``flink_end_to_end``), with the job's metrics
   read from Flink's REST API while it runs (``viewcounts.local.job_metrics``).
7. **Queries** (``queries.measure_queries``).
8. **Recompute** (``viewcounts.bench.recompute``): the batch recompute on the local
   runner over a 30-day archive (``recompute_events``, 2,000 videos x 3 types, Zipf, 5 %
   duplicates) and a 1-day one (``recompute_1d_events``), into the Bigtable emulator,
   cross-checked against a polars computation: ``recompute_events_per_s``,
   ``recompute_1d_events_per_s`` (and ``recompute_300k_events_per_s`` in the full run).
9. **HTTP** (``viewcounts.bench.http.measure_http``): the stats service
   (``viewcounts serve``) under Vegeta at ``http_rate`` requests/s of mixed queries against
   the Bigtable emulator, per-kind p50/p99 (``http_day_minute_p99_ms``,
   ``http_30d_hour_p99_ms``, ...), ``http_errors``, and the highest stepped rate held with
   p99 <= 50 ms and no error (``http_max_rps_p99_50ms``). Needs ``make vegeta``.
10. **Windowing** (``viewcounts.bench.windowing.measure``): the product's
   ``FirePanes`` against Beam's ``WindowInto`` + ``CombinePerKey`` over the same pre-aggregated
   partials of ``windowing_events`` events, on Flink and on Prism, final panes cross-checked:
   ``WINDOWING_KEYS``.

Parts: ``core`` (the workload, the plain loop, the core job and the dedup state: 1., 3.), which
``naive``, ``pyflink`` and ``scaling`` build on, then ``e2e``, ``flink_e2e``, ``flink_core``,
``queries``, ``recompute``, ``http``, ``windowing``. ``--parts`` runs only the parts named, ``--skip`` all
but those named.

Every system runs as a child process: its CPU seconds are its own (``os.wait4``, plus the
JVM's CPU that the PyFlink child reports) and so is its peak RSS (``VmHWM``, reported by the
child; not measured for PyFlink's JVM). Throughput is events read / the system's own processing time (start-up of
the interpreter, the JVM or the runner excluded; each child reports it separately). Prints
a table (``rich``) and writes the figures as JSON; the top-level keys the issue names are
always present (``None`` for a part that was skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import orjson

from pipelines.options import LOCAL_SHARDS
from viewcounts.bench import workload
from viewcounts.bench.workload import WorkloadSpec

ROOT = Path(__file__).resolve().parents[2]
FLINK_PYTHON = ROOT / ".venv-flink" / "bin" / "python"


class BenchMismatch(AssertionError):
    """A measured system's aggregates differ from the plain loop's over the same events."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one run. ``shards``: keys of the core job's stateful stages (the streaming
    job's default on the local runner);
    ``events_per_step``: events per bundle fed to the local runner (its Pub/Sub source
    pulls up to 10 messages, so 10,000 events at 1,000 per message)."""

    events: int
    naive_events: int
    scaling_events: int
    e2e_rates: tuple[int, ...]
    e2e_seconds: int
    query_rounds: int
    videos: int = 100_000
    events_per_message: int = 1000
    duplicate_rate: float = 0.1
    shards: int = LOCAL_SHARDS
    events_per_step: int = 10_000
    early_firing_s: int = 2
    flink_e2e_rates: tuple[int, ...] = (2_000,)
    flink_e2e_seconds: int = 10
    flink_core_events: int = 20_000
    recompute_events: int = 30_000
    recompute_1d_events: int = 10_000
    recompute_small_events: int | None = None  # a quick figure at this size (30 days) too
    http_rate: int = 500  # requests/s of the main attack (viewcounts.bench.http)
    http_seconds: float = 10.0
    http_step_rates: tuple[int, ...] = (500, 750, 1000, 1250, 1500, 2000)  # offered in order for the max rate
    http_step_s: float = 5.0
    http_videos: int = 20
    windowing_events: int = 20_000


QUICK = BenchConfig(
    events=20_000, naive_events=2_000, scaling_events=5_000, e2e_rates=(2_000,), e2e_seconds=10, query_rounds=20
)
FULL = BenchConfig(
    events=1_000_000,
    naive_events=20_000,
    scaling_events=200_000,
    e2e_rates=(5_000, 10_000, 20_000, 40_000),
    e2e_seconds=30,
    query_rounds=200,
    flink_e2e_rates=(4_000, 8_000, 16_000, 24_000),
    flink_e2e_seconds=20,
    flink_core_events=200_000,
    recompute_events=3_000_000,
    recompute_1d_events=1_000_000,
    recompute_small_events=300_000,
    http_seconds=30.0,
    http_step_s=10.0,
    windowing_events=200_000,
)
FLINK_PARALLELISMS = (1, 2)  # the end-to-end runs on Flink; the core job and PyFlink SQL run at the last


@dataclass
class Measured:
    """One child run: the child's own JSON line plus its CPU time and peak RSS."""

    system: str
    events: int
    seconds: float
    cpu_s: float
    peak_rss_mb: float | None  # the child's own (VmHWM); None where it cannot tell (PyFlink's JVM)
    report: dict

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def figures(self) -> dict:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s),
            "cpu_s_per_million": round(self.cpu_s / self.events * 1e6, 1),
            **{k: v for k, v in self.report.items() if k not in ("events", "seconds")},
            "peak_rss_mb": round(self.peak_rss_mb) if self.peak_rss_mb is not None else None,
        }


def run_child(system: str, cmd: list[str], log_path: Path) -> Measured:
    """Run ``cmd``, whose last stdout line is JSON with ``events`` and ``seconds``.
    Raises ``RuntimeError`` (with the log's tail) when it fails."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{system} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    report = orjson.loads(out.strip().splitlines()[-1])
    # CPU: the child's and its reaped children's; a JVM it leaves to die reports its own
    cpu_s = (report.get("jvm_cpu_seconds") or 0.0) + usage.ru_utime + usage.ru_stime
    return Measured(system, report["events"], report["seconds"], cpu_s, report.get("peak_rss_mb"), report)


class Bench:
    def __init__(self, cfg: BenchConfig, work: Path) -> None:
        self.cfg = cfg
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self._runs = 0

    def _out(self, name: str) -> tuple[Path, Path]:
        self._runs += 1
        return self.work / f"{self._runs:02d}-{name}.jsonl", self.work / f"{self._runs:02d}-{name}.log"

    def workload(self, **changes) -> workload.Workload:
        c = self.cfg
        spec = WorkloadSpec(
            events=c.events, videos=c.videos, events_per_message=c.events_per_message, duplicate_rate=c.duplicate_rate
        )
        return workload.generate(replace(spec, **changes), self.work / "workloads")

    def loop(self, w: workload.Workload) -> tuple[Measured, dict]:
        out, log = self._out("loop")
        m = run_child(
            "plain loop", [sys.executable, "-m", "viewcounts.bench.plain_loop", str(w.messages_path), str(out)], log
        )
        return m, workload.read_aggregates(out)

    def beam(self, w: workload.Workload, reference: dict, naive: bool = False) -> Measured:
        name = "naive Beam" if naive else "core job"
        out, log = self._out("naive" if naive else "core")
        cmd = [
            sys.executable,
            "-m",
            "viewcounts.bench.core",
            str(w.folder),
            str(out),
            "--shards",
            str(self.cfg.shards),
            "--events-per-step",
            str(self.cfg.events_per_step),
            "--early-firing-s",
            str(self.cfg.early_firing_s),
        ]
        m = run_child(name, cmd + (["--naive"] if naive else []), log)
        cross_check(name, reference, out)
        return m

    def pyflink(self, w: workload.Workload, reference: dict, parallelism: int = 1) -> Measured:
        if not FLINK_PYTHON.exists():
            raise RuntimeError(f"{FLINK_PYTHON} is missing: run `make flink-venv` (or pass --skip pyflink)")
        name = "PyFlink SQL" if parallelism == 1 else f"PyFlink SQL p{parallelism}"
        out, log = self._out(f"pyflink-p{parallelism}")
        m = run_child(
            name,
            [
                str(FLINK_PYTHON),
                str(ROOT / "viewcounts" / "bench" / "pyflink_sql.py"),
                str(w.events_path),
                str(out),
                "--disorder-s",
                str(w.spec.disorder_s),
                "--parallelism",
                str(parallelism),
            ],
            log,
        )
        cross_check(name, reference, out)
        return m

    def core_flink(self, w: workload.Workload, reference: dict, parallelism: int) -> Measured:
        """The core job on a Flink session cluster (``core_flink``) at ``parallelism``."""
        name = f"core job Flink p{parallelism}"
        out, log = self._out(f"core-flink-p{parallelism}")
        m = run_child(
            name,
            [
                sys.executable,
                "-m",
                "viewcounts.bench.core_flink",
                str(w.folder),
                str(out),
                "--parallelism",
                str(parallelism),
                "--shards",
                str(self.cfg.shards),
                "--early-firing-s",
                str(self.cfg.early_firing_s),
            ],
            log,
        )
        cross_check(name, reference, out)
        return m


def cross_check(name: str, reference: dict, out: Path) -> None:
    diffs = workload.differences(reference, workload.read_aggregates(out))
    if diffs:
        raise BenchMismatch(f"{name}'s aggregates differ from the plain loop's: " + "; ".join(diffs))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


PARTS = (
    "core",
    "naive",
    "pyflink",
    "scaling",
    "e2e",
    "flink_e2e",
    "flink_core",
    "queries",
    "recompute",
    "http",
    "windowing",
)
CORE_PARTS = ("core", "naive", "pyflink", "scaling")  # on the main workload and its plain-loop reference
CORE_KEYS = (
    "core_events_per_s",
    "loop_events_per_s",
    "pyflink_sql_events_per_s",
    "naive_beam_events_per_s",
    "core_vs_pyflink_sql",
    "core_vs_naive_beam",
    "core_vs_loop",
    "mutations_per_event",
    "cross_check",
    "dedup_bytes_per_id",
    "dedup_state_bytes_per_id",
    "dedup_live_ids",
)


def run(
    cfg: BenchConfig,
    work: Path,
    skip: frozenset[str] = frozenset(),
    progress=print,
    profile_flink: bool = False,
    profile_http: bool = False,
) -> dict:
    """Run every part (``PARTS``) not in ``skip`` and return the figures (see the module doc).
    Skipping ``core`` skips ``naive``, ``pyflink`` and ``scaling`` too; the keys of a part not
    run are None. ``profile_http``: a py-spy profile of the stats service during the HTTP
    part's main attack, ``work/http.pyspy``."""
    started = time.monotonic()
    bench = Bench(cfg, work)
    res: dict = {"config": asdict(cfg)}
    res.update(dict.fromkeys(CORE_KEYS))
    if "core" not in skip:
        res.update(core_and_peers(bench, skip, progress))
    res.update(dict.fromkeys(("e2e_sustained_events_per_s", "freshness_p50_s", "freshness_p99_s")))
    if "e2e" not in skip:
        res.update(end_to_end(cfg, work, progress))
    res.update(dict.fromkeys(FLINK_KEYS))
    if "flink_e2e" not in skip:
        res.update(flink_end_to_end(cfg, work, progress, profile=profile_flink))
    if "flink_core" not in skip:
        try:
            res.update(flink_core(bench, progress, with_pyflink="pyflink" not in skip))
        except RuntimeError as exc:  # a failed child: reported, its figures stay None
            res["flink_core_error"] = str(exc)[-2000:]
            progress(f"the core job on Flink failed: {str(exc)[:300]}")
    res.update(dict.fromkeys(("query_day_minute_p99_ms", "query_30d_hour_p99_ms")))
    if "queries" not in skip:
        from viewcounts.bench import queries

        res.update(
            {
                k: round(v, 2) if isinstance(v, float) else v
                for k, v in queries.measure_queries(cfg.query_rounds).items()
            }
        )
    res.update(dict.fromkeys(RECOMPUTE_KEYS))
    if "recompute" not in skip:
        res.update(recompute(cfg, work, progress))
    res.update(dict.fromkeys(HTTP_KEYS))
    if "http" not in skip:
        res.update(http(cfg, progress, work / "http.pyspy" if profile_http else None))
    res.update(dict.fromkeys(WINDOWING_KEYS))
    if "windowing" not in skip:
        from viewcounts.bench import windowing

        try:
            res.update(windowing.measure(bench, progress))
        except RuntimeError as exc:  # a failed child: reported, its figures stay None
            res["windowing_error"] = str(exc)[-2000:]
            progress(f"the windowing comparison failed: {str(exc)[:300]}")
    res["bench_seconds"] = round(time.monotonic() - started, 1)
    return res


def core_and_peers(bench: Bench, skip: frozenset[str], progress) -> dict:
    """The core job and the plain loop on the main workload, the peers not in ``skip``
    (``pyflink``, ``naive``), the dedup state and the ``scaling`` rows (module doc, 1.-4.)."""
    cfg = bench.cfg
    res: dict = {}
    main = bench.workload()
    progress(f"workload: {main.folder.name}")
    loop, reference = bench.loop(main)
    core = bench.beam(main, reference)
    systems = {"plain loop": loop, "core job": core}
    progress(f"core job {core.events_per_s:,.0f} events/s, plain loop {loop.events_per_s:,.0f}")
    if "pyflink" not in skip:
        systems["PyFlink SQL"] = bench.pyflink(main, reference)
        progress(f"PyFlink SQL {systems['PyFlink SQL'].events_per_s:,.0f} events/s")
    if "naive" not in skip:
        small = bench.workload(events=cfg.naive_events)
        systems["naive Beam"] = bench.beam(small, bench.loop(small)[1], naive=True)
        progress(f"naive Beam {systems['naive Beam'].events_per_s:,.0f} events/s ({cfg.naive_events:,} events)")
    res["systems"] = {name: m.figures() for name, m in systems.items()}
    rate = {name: m.events_per_s for name, m in systems.items()}
    res.update(
        core_events_per_s=round(rate["core job"]),
        loop_events_per_s=round(rate["plain loop"]),
        pyflink_sql_events_per_s=round(rate["PyFlink SQL"]) if "PyFlink SQL" in rate else None,
        naive_beam_events_per_s=round(rate["naive Beam"]) if "naive Beam" in rate else None,
        core_vs_pyflink_sql=_ratio(rate["core job"], rate.get("PyFlink SQL")),
        core_vs_naive_beam=_ratio(rate["core job"], rate.get("naive Beam")),
        core_vs_loop=_ratio(rate["core job"], rate["plain loop"]),
        mutations_per_event=round(core.report["mutations"] / core.report["accepted"], 3),
        cross_check="identical aggregates",
    )
    from viewcounts.bench import dedup_memory

    res.update(
        {k: round(v, 1) if isinstance(v, float) else v for k, v in dedup_memory.measure(main.messages_path).items()}
    )
    progress(f"dedup state {res['dedup_bytes_per_id']:.0f} bytes per live id")
    if "scaling" not in skip:
        res["scaling"] = scaling(bench, progress)
    return res


HTTP_KEYS = (
    "http_day_minute_p99_ms",
    "http_30d_hour_p99_ms",
    "http_top_p99_ms",
    "http_errors",
    "http_max_rps_p99_50ms",
)


def http(cfg: BenchConfig, progress, profile_path: Path | None = None) -> dict:
    """The HTTP part (module doc, 9.): ``measure_http`` at ``cfg.http_*``, milliseconds and
    shares rounded to 0.01. Raises ``RuntimeError`` without ``build/bin/vegeta``."""
    from viewcounts.bench.http import measure_http

    out = measure_http(
        cfg.http_rate,
        cfg.http_seconds,
        cfg.http_videos,
        cfg.http_step_rates,
        cfg.http_step_s,
        profile_path=profile_path,
    )
    progress(
        f"HTTP at {out['http_offered_rps']:,} requests/s: one-day minute p99 {out['http_day_minute_p99_ms']:.1f} ms, "
        f"30-day hour p99 {out['http_30d_hour_p99_ms']:.1f} ms, top-N p99 {out['http_top_p99_ms']:.1f} ms, "
        f"{out['http_errors']} errors; held with "
        f"p99 <= 50 ms: {out['http_max_rps_p99_50ms']:,} requests/s"
    )
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


WINDOWING_KEYS = (
    "windowing_fire_panes_flink_events_per_s",
    "windowing_beam_flink_events_per_s",
    "windowing_beam_vs_fire_panes_flink",
    "windowing_fire_panes_prism_events_per_s",
    "windowing_beam_prism_events_per_s",
    "windowing_beam_vs_fire_panes_prism",
)
RECOMPUTE_KEYS = (
    "recompute_events_per_s",
    "recompute_1d_events_per_s",
    "recompute_300k_events_per_s",
    "recompute_1d_vs_30d",
)


def recompute(cfg: BenchConfig, work: Path, progress) -> dict:
    """The recompute part (module doc, 8.), on a Bigtable emulator of its own."""
    from viewcounts.bench import recompute as rc
    from viewcounts.local.emulators import bigtable_emulator

    runs = {"300k": rc.spec_for(cfg.recompute_small_events, 30)} if cfg.recompute_small_events else {}
    runs.update({"1d": rc.spec_for(cfg.recompute_1d_events, 1), "30d": rc.spec_for(cfg.recompute_events, 30)})
    out: dict = {}
    with bigtable_emulator() as emu:
        old = os.environ.get(emu.env_var)
        os.environ[emu.env_var] = emu.host
        try:
            for name, spec in runs.items():
                out[f"recompute_{name}"] = figures = rc.measure(spec, work, name)
                progress(
                    f"recompute {name}: {figures['events']:,} events in {figures['seconds']} s, "
                    f"{figures['events_per_s']:,} events/s, {figures['aggregates_written']:,} aggregates written"
                )
        finally:
            if old is None:
                del os.environ[emu.env_var]
            else:
                os.environ[emu.env_var] = old
    rate = {name: out[f"recompute_{name}"]["events_per_s"] for name in runs}
    out.update(
        recompute_events_per_s=rate["30d"],
        recompute_1d_events_per_s=rate["1d"],
        recompute_300k_events_per_s=rate.get("300k"),
        recompute_1d_vs_30d=_ratio(rate["1d"], rate["30d"]),
    )
    return out


def scaling(bench: Bench, progress) -> list[dict]:
    """Core and loop events/s for each variant of the main workload (``scaling_events`` each)."""
    c = bench.cfg
    variants = (
        [{"videos": v, "duplicate_rate": 0.0} for v in (1_000, 100_000, 1_000_000)]
        + [{"events_per_message": m, "duplicate_rate": 0.0} for m in (1, 10, 100)]
        + [{"duplicate_rate": d} for d in (0.0, 0.1)]
    )
    rows, seen = [], set()
    for changes in variants:
        w = bench.workload(events=c.scaling_events, **changes)
        if w.spec in seen:
            continue
        seen.add(w.spec)
        loop, reference = bench.loop(w)
        core = bench.beam(w, reference)
        rows.append(
            {
                "videos": w.spec.videos,
                "events_per_message": w.spec.events_per_message,
                "duplicate_rate": w.spec.duplicate_rate,
                "events": core.events,
                "core_events_per_s": round(core.events_per_s),
                "loop_events_per_s": round(loop.events_per_s),
                "core_vs_loop": _ratio(core.events_per_s, loop.events_per_s),
                "mutations_per_event": round(core.report["mutations"] / core.report["accepted"], 3),
            }
        )
        progress(f"scaling {rows[-1]}")
    return rows


def end_to_end(cfg: BenchConfig, work: Path, progress) -> dict:
    """The highest rate of ``cfg.e2e_rates`` the streaming job keeps up with, and the
    freshness measured at it (at the first rate when none is kept up)."""
    from viewcounts.bench import e2e

    found = e2e.find_sustained_rate(
        cfg.e2e_rates, cfg.e2e_seconds, cfg.early_firing_s, workload_root=work / "workloads"
    )
    steps = found["steps"]
    kept = [s for s in steps if s["e2e_kept_up"]]
    best = kept[-1] if kept else steps[0]
    progress(f"end to end: kept up with {found['e2e_sustained_rate']:,} events/s")
    return {
        "e2e_sustained_events_per_s": found["e2e_sustained_rate"],
        "freshness_p50_s": best["freshness_p50_s"],
        "freshness_p99_s": best["freshness_p99_s"],
        "e2e_early_firing_s": cfg.early_firing_s,
        "e2e_steps": steps,
    }


FLINK_KEYS = (
    "flink_p1_e2e_sustained_events_per_s",
    "flink_p2_e2e_sustained_events_per_s",
    "flink_p2_vs_p1",
    "flink_p1_freshness_p50_s",
    "flink_p1_freshness_p99_s",
    "flink_p2_freshness_p50_s",
    "flink_p2_freshness_p99_s",
    "flink_p1_cpu_s_per_million_events",
    "flink_p2_cpu_s_per_million_events",
    "flink_p2_core_events_per_s",
    "pyflink_sql_p2_events_per_s",
    "flink_p2_core_vs_pyflink_sql",
)


def flink_core(bench: Bench, progress, with_pyflink: bool) -> dict:
    """The core job on Flink and PyFlink SQL at the same parallelism (the last of
    ``FLINK_PARALLELISMS``) over the same ``flink_core_events`` events, both cross-checked."""
    p = FLINK_PARALLELISMS[-1]
    w = bench.workload(events=bench.cfg.flink_core_events)
    _, reference = bench.loop(w)
    core = bench.core_flink(w, reference, p)
    progress(f"core job on Flink p{p}: {core.events_per_s:,.0f} events/s ({core.events:,} events)")
    out = {f"flink_p{p}_core_events_per_s": round(core.events_per_s), "flink_core": core.figures()}
    if with_pyflink:
        sql = bench.pyflink(w, reference, p)
        progress(f"PyFlink SQL p{p}: {sql.events_per_s:,.0f} events/s")
        out.update(
            {
                f"pyflink_sql_p{p}_events_per_s": round(sql.events_per_s),
                "pyflink_sql_p2": sql.figures(),
                "flink_p2_core_vs_pyflink_sql": _ratio(core.events_per_s, sql.events_per_s),
            }
        )
    return out


def flink_end_to_end(cfg: BenchConfig, work: Path, progress, profile: bool = False) -> dict:
    """End to end through the emulators on a Flink session cluster (2 task managers x 2 slots,
    EXTERNAL Python workers) at each of ``FLINK_PARALLELISMS``: ``measure_e2e`` at each of
    ``cfg.flink_e2e_rates`` until one is not kept up. Per parallelism N:
    ``flink_pN_e2e_sustained_events_per_s``: the highest rate measured
    (``e2e_sustained_events_per_s``) in a run that kept up (None when none did);
    ``flink_pN_e2e_capacity_events_per_s``: the rate measured in the first run that did not
    keep up (what the job counted per second while overloaded; None when all kept up);
    freshness and CPU seconds per million events of the fastest run kept up (else the first
    run); ``flink_pN_e2e_steps``: every run's figures. ``profile``: py-spy profiles of the
    Python workers of every run at the last parallelism (``e2e``'s profiler), in ``work``
    as ``flink-pN-RATE.pyspy[.pid]``."""
    from viewcounts.bench import e2e

    out: dict = {}
    for p in FLINK_PARALLELISMS:
        steps = []
        for rate in cfg.flink_e2e_rates:
            prof = work / f"flink-p{p}-{rate}.pyspy" if profile and p == FLINK_PARALLELISMS[-1] else None
            steps.append(
                e2e.measure_e2e(
                    rate,
                    cfg.flink_e2e_seconds,
                    cfg.early_firing_s,
                    drain_timeout_s=60.0,
                    workload_root=work / "workloads",
                    flink=e2e.OnFlink(parallelism=p),
                    profile_path=prof,
                )
            )
            progress(
                f"Flink p{p} at {rate:,} events/s: {steps[-1]['e2e_sustained_events_per_s']:,} counted/s, "
                f"kept up: {steps[-1]['e2e_kept_up']}"
            )
            if not steps[-1]["e2e_kept_up"]:
                break
        kept = [s for s in steps if s["e2e_kept_up"]]
        best = kept[-1] if kept else steps[0]
        over = [s for s in steps if not s["e2e_kept_up"]]
        out.update(
            {
                f"flink_p{p}_e2e_sustained_events_per_s": best["e2e_sustained_events_per_s"] if kept else None,
                f"flink_p{p}_e2e_capacity_events_per_s": over[0]["e2e_sustained_events_per_s"] if over else None,
                f"flink_p{p}_freshness_p50_s": best["freshness_p50_s"],
                f"flink_p{p}_freshness_p99_s": best["freshness_p99_s"],
                f"flink_p{p}_cpu_s_per_million_events": best["job_cpu_s_per_million_events"],
                f"flink_p{p}_e2e_steps": steps,
            }
        )
    out["flink_p2_vs_p1"] = _ratio(
        out.get("flink_p2_e2e_sustained_events_per_s"), out.get("flink_p1_e2e_sustained_events_per_s")
    )
    return out


def print_table(res: dict, console) -> None:
    from rich.table import Table

    if res.get("systems"):
        t = Table(title="viewcounts bench: same events, same machine")
        for col in ("system", "events", "events/s", "vs core", "CPU s / M events", "peak RSS MB"):
            t.add_column(col, justify="right")
        core = res["core_events_per_s"]
        for name, f in res["systems"].items():
            t.add_row(
                name,
                f"{f['events']:,}",
                f"{f['events_per_s']:,}",
                f"{core / f['events_per_s']:.2f}x",
                f"{f['cpu_s_per_million']:,}",
                "-" if f["peak_rss_mb"] is None else f"{f['peak_rss_mb']:,}",
            )
        console.print(t)
    if res.get("scaling"):
        s = Table(title="scaling (core job vs plain loop)")
        for col in (
            "videos",
            "events/msg",
            "dup rate",
            "core events/s",
            "loop events/s",
            "core/loop",
            "mutations/event",
        ):
            s.add_column(col, justify="right")
        for r in res["scaling"]:
            s.add_row(
                f"{r['videos']:,}",
                str(r["events_per_message"]),
                f"{r['duplicate_rate']:g}",
                f"{r['core_events_per_s']:,}",
                f"{r['loop_events_per_s']:,}",
                str(r["core_vs_loop"]),
                str(r["mutations_per_event"]),
            )
        console.print(s)
    if res.get("http_kinds"):
        h = Table(
            title=f"stats service over HTTP at {res['http_offered_rps']:,} requests/s "
            f"(answered {res['http_achieved_rps']:,.0f}/s, {res['http_errors']} errors; cores used by the "
            f"service {res['http_server_cpu_share']}, by other work {res['http_other_cpu_share']})"
        )
        for col in ("query kind", "share", "requests", "p50 ms", "p99 ms", "target p99 ms"):
            h.add_column(col, justify="right")
        for kind, k in res["http_kinds"].items():
            h.add_row(
                kind,
                f"{k['share']:.0%}",
                f"{k['requests']:,}",
                f"{k['p50_ms']:.1f}",
                f"{k['p99_ms']:.1f}",
                "-" if k["target_p99_ms"] is None else f"{k['target_p99_ms']:g}",
            )
        console.print(h)
        st = Table(title="HTTP steps (held: p99 <= 50 ms, no error, 95 % answered)")
        for col in ("offered/s", "answered/s", "p50 ms", "p99 ms", "errors", "held", "cores used by other work"):
            st.add_column(col, justify="right")
        for r in res["http_steps"]:
            st.add_row(
                f"{r['offered_rps']:,}",
                f"{r['achieved_rps']:,.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                str(r["errors"]),
                "yes" if r["held"] else "no",
                str(r["other_cpu_share"]),
            )
        console.print(st)
    keys = (
        "core_vs_pyflink_sql",
        "core_vs_naive_beam",
        "core_vs_loop",
        "dedup_bytes_per_id",
        "dedup_state_bytes_per_id",
        "mutations_per_event",
        "e2e_sustained_events_per_s",
        "freshness_p50_s",
        "freshness_p99_s",
        *FLINK_KEYS,
        "query_day_minute_p99_ms",
        "query_30d_hour_p99_ms",
        *RECOMPUTE_KEYS,
        *HTTP_KEYS,
        *WINDOWING_KEYS,
        "bench_seconds",
    )
    f = Table(title="figures")
    f.add_column("figure")
    f.add_column("value", justify="right")
    for k in keys:
        f.add_row(k, "-" if res.get(k) is None else str(res[k]))
    console.print(f)


def bench_main(args) -> int:
    import logging
    import warnings

    from rich.console import Console

    console = Console()
    if not args.verbose:
        logging.getLogger("viewcounts").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning)  # the Google clients' grpcio notices
    cfg = QUICK if args.quick else FULL
    try:
        skip = parts_skipped(args.parts, args.skip)
    except ValueError as exc:
        console.print(str(exc))
        return 2
    res = run(
        cfg,
        Path(args.work),
        skip,
        progress=lambda msg: console.log(msg),
        profile_flink=args.profile_flink,
        profile_http=args.profile_http,
    )
    print_table(res, console)
    Path(args.json).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    console.print(f"figures written to {args.json}")
    return 0


def parts_skipped(parts: list[str], skip: list[str]) -> frozenset[str]:
    """The parts not to run, from ``--parts`` and ``--skip`` (each a list of comma-separated
    names): with ``parts``, every part not named there (but ``core`` when ``naive``,
    ``pyflink`` or ``scaling`` is named: they build on it); plus ``skip``. Raises
    ``ValueError`` naming an unknown part."""
    run, left_out = ({s for item in given for s in item.split(",") if s} for given in (parts, skip))
    unknown = sorted((run | left_out) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown bench part(s): {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    if run & set(CORE_PARTS):
        run.add("core")
    return frozenset((set(PARTS) - run if run else set()) | left_out)


def add_bench_args(p) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes; what CI runs)")
    p.add_argument("--json", required=True, help="write the figures to this JSON file")
    p.add_argument("--work", default=str(ROOT / "build" / "bench"), help="workloads, outputs and child logs")
    p.add_argument(
        "--parts",
        action="append",
        default=[],
        help=f"run only these parts, comma-separated: {', '.join(PARTS)} (core: the core job, which "
        "naive, pyflink and scaling build on)",
    )
    p.add_argument("--skip", action="append", default=[], help="parts to leave out, comma-separated (as --parts)")
    p.add_argument(
        "--profile-flink",
        action="store_true",
        help="py-spy profiles of the Python workers in the end-to-end runs on Flink at parallelism 2 "
        "(needs py-spy: $PY_SPY or on PATH; sampling costs a little CPU)",
    )
    p.add_argument(
        "--profile-http",
        action="store_true",
        help="a py-spy profile (raw, collapsed stacks) of the stats service during the HTTP part's "
        "500 requests/s attack, in WORK/http.pyspy",
    )
