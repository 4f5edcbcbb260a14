"""``viewcounts bench [--quick] --json PATH``: the benchmark harness (issue 5).

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
5. **End to end** through the emulators (``e2e.find_sustained_rate``) and 6. **queries**
   (``queries.measure_queries``).

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


QUICK = BenchConfig(events=20_000, naive_events=2_000, scaling_events=5_000, e2e_rates=(2_000,), e2e_seconds=10,
                    query_rounds=20)
FULL = BenchConfig(events=1_000_000, naive_events=20_000, scaling_events=200_000,
                   e2e_rates=(5_000, 10_000, 20_000, 40_000), e2e_seconds=30, query_rounds=200)


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
        return {"events": self.events, "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s),
                "cpu_s_per_million": round(self.cpu_s / self.events * 1e6, 1),
                **{k: v for k, v in self.report.items() if k not in ("events", "seconds")},
                "peak_rss_mb": round(self.peak_rss_mb) if self.peak_rss_mb is not None else None}


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
        spec = WorkloadSpec(events=c.events, videos=c.videos, events_per_message=c.events_per_message,
                            duplicate_rate=c.duplicate_rate)
        return workload.generate(replace(spec, **changes), self.work / "workloads")

    def loop(self, w: workload.Workload) -> tuple[Measured, dict]:
        out, log = self._out("loop")
        m = run_child("plain loop", [sys.executable, "-m", "viewcounts.bench.plain_loop", str(w.messages_path),
                                     str(out)], log)
        return m, workload.read_aggregates(out)

    def beam(self, w: workload.Workload, reference: dict, naive: bool = False) -> Measured:
        name = "naive Beam" if naive else "core job"
        out, log = self._out("naive" if naive else "core")
        cmd = [sys.executable, "-m", "viewcounts.bench.core", str(w.folder), str(out),
               "--shards", str(self.cfg.shards), "--events-per-step", str(self.cfg.events_per_step),
               "--early-firing-s", str(self.cfg.early_firing_s)]
        m = run_child(name, cmd + (["--naive"] if naive else []), log)
        cross_check(name, reference, out)
        return m

    def pyflink(self, w: workload.Workload, reference: dict) -> Measured:
        if not FLINK_PYTHON.exists():
            raise RuntimeError(f"{FLINK_PYTHON} is missing: run `make flink-venv` (or pass --skip pyflink)")
        out, log = self._out("pyflink")
        m = run_child("PyFlink SQL", [str(FLINK_PYTHON), str(ROOT / "viewcounts" / "bench" / "pyflink_sql.py"),
                                      str(w.events_path), str(out), "--disorder-s", str(w.spec.disorder_s)], log)
        cross_check("PyFlink SQL", reference, out)
        return m


def cross_check(name: str, reference: dict, out: Path) -> None:
    diffs = workload.differences(reference, workload.read_aggregates(out))
    if diffs:
        raise BenchMismatch(f"{name}'s aggregates differ from the plain loop's: " + "; ".join(diffs))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run(cfg: BenchConfig, work: Path, skip: frozenset[str] = frozenset(), progress=print) -> dict:
    """Run every part not in ``skip`` (``naive``, ``pyflink``, ``scaling``, ``e2e``,
    ``queries``) and return the figures (see the module doc)."""
    bench = Bench(cfg, work)
    started = time.monotonic()
    res: dict = {"config": asdict(cfg)}
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
    res.update(core_events_per_s=round(rate["core job"]), loop_events_per_s=round(rate["plain loop"]),
               pyflink_sql_events_per_s=round(rate["PyFlink SQL"]) if "PyFlink SQL" in rate else None,
               naive_beam_events_per_s=round(rate["naive Beam"]) if "naive Beam" in rate else None,
               core_vs_pyflink_sql=_ratio(rate["core job"], rate.get("PyFlink SQL")),
               core_vs_naive_beam=_ratio(rate["core job"], rate.get("naive Beam")),
               core_vs_loop=_ratio(rate["core job"], rate["plain loop"]),
               mutations_per_event=round(core.report["mutations"] / core.report["accepted"], 3),
               cross_check="identical aggregates")
    from viewcounts.bench import dedup_memory

    res.update({k: round(v, 1) if isinstance(v, float) else v
                for k, v in dedup_memory.measure(main.messages_path).items()})
    progress(f"dedup state {res['dedup_bytes_per_id']:.0f} bytes per live id")
    if "scaling" not in skip:
        res["scaling"] = scaling(bench, progress)
    res.update(dict.fromkeys(("e2e_sustained_events_per_s", "freshness_p50_s", "freshness_p99_s")))
    if "e2e" not in skip:
        res.update(end_to_end(cfg, work, progress))
    res.update(dict.fromkeys(("query_day_minute_p99_ms", "query_30d_hour_p99_ms")))
    if "queries" not in skip:
        from viewcounts.bench import queries

        res.update({k: round(v, 2) if isinstance(v, float) else v
                    for k, v in queries.measure_queries(cfg.query_rounds).items()})
    res["bench_seconds"] = round(time.monotonic() - started, 1)
    return res


def scaling(bench: Bench, progress) -> list[dict]:
    """Core and loop events/s for each variant of the main workload (``scaling_events`` each)."""
    c = bench.cfg
    variants = ([{"videos": v, "duplicate_rate": 0.0} for v in (1_000, 100_000, 1_000_000)]
                + [{"events_per_message": m, "duplicate_rate": 0.0} for m in (1, 10, 100)]
                + [{"duplicate_rate": d} for d in (0.0, 0.1)])
    rows, seen = [], set()
    for changes in variants:
        w = bench.workload(events=c.scaling_events, **changes)
        if w.spec in seen:
            continue
        seen.add(w.spec)
        loop, reference = bench.loop(w)
        core = bench.beam(w, reference)
        rows.append({"videos": w.spec.videos, "events_per_message": w.spec.events_per_message,
                     "duplicate_rate": w.spec.duplicate_rate, "events": core.events,
                     "core_events_per_s": round(core.events_per_s), "loop_events_per_s": round(loop.events_per_s),
                     "core_vs_loop": _ratio(core.events_per_s, loop.events_per_s),
                     "mutations_per_event": round(core.report["mutations"] / core.report["accepted"], 3)})
        progress(f"scaling {rows[-1]}")
    return rows


def end_to_end(cfg: BenchConfig, work: Path, progress) -> dict:
    """The highest rate of ``cfg.e2e_rates`` the streaming job keeps up with, and the
    freshness measured at it (at the first rate when none is kept up)."""
    from viewcounts.bench import e2e

    found = e2e.find_sustained_rate(cfg.e2e_rates, cfg.e2e_seconds, cfg.early_firing_s,
                                    workload_root=work / "workloads")
    steps = found["steps"]
    kept = [s for s in steps if s["e2e_kept_up"]]
    best = kept[-1] if kept else steps[0]
    progress(f"end to end: kept up with {found['e2e_sustained_rate']:,} events/s")
    return {"e2e_sustained_events_per_s": found["e2e_sustained_rate"],
            "freshness_p50_s": best["freshness_p50_s"], "freshness_p99_s": best["freshness_p99_s"],
            "e2e_early_firing_s": cfg.early_firing_s, "e2e_steps": steps}


def print_table(res: dict, console) -> None:
    from rich.table import Table

    t = Table(title="viewcounts bench: same events, same machine")
    for col in ("system", "events", "events/s", "vs core", "CPU s / M events", "peak RSS MB"):
        t.add_column(col, justify="right")
    core = res["core_events_per_s"]
    for name, f in res["systems"].items():
        t.add_row(name, f"{f['events']:,}", f"{f['events_per_s']:,}", f"{core / f['events_per_s']:.2f}x",
                  f"{f['cpu_s_per_million']:,}", "-" if f["peak_rss_mb"] is None else f"{f['peak_rss_mb']:,}")
    console.print(t)
    if res.get("scaling"):
        s = Table(title="scaling (core job vs plain loop)")
        for col in ("videos", "events/msg", "dup rate", "core events/s", "loop events/s", "core/loop",
                    "mutations/event"):
            s.add_column(col, justify="right")
        for r in res["scaling"]:
            s.add_row(f"{r['videos']:,}", str(r["events_per_message"]), f"{r['duplicate_rate']:g}",
                      f"{r['core_events_per_s']:,}", f"{r['loop_events_per_s']:,}", str(r["core_vs_loop"]),
                      str(r["mutations_per_event"]))
        console.print(s)
    keys = ("core_vs_pyflink_sql", "core_vs_naive_beam", "core_vs_loop", "dedup_bytes_per_id",
            "dedup_state_bytes_per_id", "mutations_per_event", "e2e_sustained_events_per_s", "freshness_p50_s",
            "freshness_p99_s", "query_day_minute_p99_ms", "query_30d_hour_p99_ms", "bench_seconds")
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
    skip = frozenset(s for part in args.skip for s in part.split(",") if s)
    res = run(cfg, Path(args.work), skip, progress=lambda msg: console.log(msg))
    print_table(res, console)
    Path(args.json).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    console.print(f"figures written to {args.json}")
    return 0


def add_bench_args(p) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes; what CI runs)")
    p.add_argument("--json", required=True, help="write the figures to this JSON file")
    p.add_argument("--work", default=str(ROOT / "build" / "bench"), help="workloads, outputs and child logs")
    p.add_argument("--skip", action="append", default=[],
                   help="parts to leave out, comma-separated: naive, pyflink, scaling, e2e, queries")
