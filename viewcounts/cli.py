"""The ``viewcounts`` command: ``demo``, ``replay``, ``recompute``, ``stats``, ``top``, ``scenario run|check``,
``bench``, ``submit``."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

import orjson


def _scenario(args) -> int:
    from viewcounts.scenario import check_case, load_case, run_case

    case = load_case(args.case)
    result = run_case(case, args.runner)
    if args.action == "run":
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    problems = check_case(case, result)
    for p in problems:
        print(f"FAIL {case.get('name', args.case)}: {p}")
    if not problems:
        print(f"PASS {case.get('name', args.case)}")
    return 1 if problems else 0


_NO_BIGTABLE = ("error: no Bigtable to read: set BIGTABLE_EMULATOR_HOST=host:port for an emulator (for example the "
                "one `viewcounts demo --keep-running` prints) or configure Google Cloud credentials")


def _ask(reader_class, args, ask):
    """``(ask(reader), None)`` for a reader of the table the flags name, or ``(None, 2)`` with the
    message printed for a refused query or no Bigtable to reach."""
    from google.auth.exceptions import DefaultCredentialsError

    from query.stats import QueryError

    try:
        with reader_class(args.project, args.instance, args.table) as reader:
            return ask(reader), None
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except DefaultCredentialsError:
        print(_NO_BIGTABLE, file=sys.stderr)
    return None, 2


def _stats(args) -> int:
    from query.stats import StatsReader

    stats, failed = _ask(StatsReader, args, lambda r: r.get_stats(
        args.video_id, args.event_type, args.function, args.start, args.end, args.granularity, args.tz))
    if failed:
        return failed
    if args.json:
        sys.stdout.write(orjson.dumps(stats.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"{args.function} of {args.event_type} for {args.video_id}"))  # ids are no markup
    for col in ("bucket", "count", "sum", "avg", "min", "max"):
        table.add_column(col, justify="right")
    for b in stats.buckets:
        a = b.aggregate
        table.add_row(b.start.isoformat(), str(a.count), f"{a.sum:g}", *(f"{x:g}" if x is not None else "-"
                                                                          for x in (a.avg, a.min, a.max)))
    console = Console()
    console.print(table)
    console.print(f"{args.function} over [{stats.start.isoformat()}, {stats.end.isoformat()}): {stats.value}")
    return 0


def _top(args) -> int:
    import time

    from query.cached_reader import DEFAULT_ALLOWED_LATENESS_S, DEFAULT_FINAL_MARGIN_S, final_before
    from query.top import TopReader
    from schemas.storage import TOP_GRANULARITY_SECONDS

    top, failed = _ask(TopReader, args, lambda r: r.get_top(args.type, args.granularity, args.at, args.n))
    if failed:
        return failed
    q = top.query
    final = q.window_start_s < final_before(TOP_GRANULARITY_SECONDS[q.granularity], time.time(),
                                            DEFAULT_ALLOWED_LATENESS_S, DEFAULT_FINAL_MARGIN_S)
    body = top.to_json(final)
    if args.json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"top {q.n} by {q.event_type}, {q.granularity} [{body['window_start']}, {body['window_end']})"
                  f"{'' if final else ' (open)'}")
    for col, justify in (("#", "right"), ("video_id", "left"), ("count", "right")):
        table.add_column(col, justify=justify)
    for rank, item in enumerate(body["items"], 1):
        table.add_row(str(rank), Text(item["video_id"]), str(item["count"]))  # verbatim: ids are no console markup
    Console().print(table)
    return 0


def _replay(args) -> int:
    from viewcounts.replay import replay_main

    return replay_main(args)


def _recompute(args) -> int:
    from viewcounts.recompute import recompute_main

    return recompute_main(args)


def _compact(args) -> int:
    from pipelines.compact import compact_main

    return compact_main(args)


def _serve(args) -> int:
    from query.service import serve_main

    return serve_main(args)


def _bench(args) -> int:
    from viewcounts.bench.harness import bench_main

    return bench_main(args)


def _demo(args) -> int:
    from viewcounts.demo import demo_main

    return demo_main(args)


def _submit(args) -> int:
    from viewcounts.submit import main as submit_main

    return submit_main(args.job_flags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="viewcounts", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Beam's and the clients' logs")
    sub = parser.add_subparsers(dest="command", required=True)

    formatter = argparse.ArgumentDefaultsHelpFormatter
    sc = sub.add_parser("scenario", help="run or check a SPEC.md section 7 case file", formatter_class=formatter,
                        description="Runs the case through the real pipeline (TestStream) with the "
                        "Bigtable emulator (BIGTABLE_EMULATOR_HOST, or one started for the run).")
    sc.add_argument("action", choices=("run", "check"), help="run: print the result as JSON; check: compare "
                    "with the case's expect, exit 0 iff it matches")
    sc.add_argument("case", help="path of the case file")
    sc.add_argument("--runner", choices=("local", "prism"), default="local",
                    help="prism needs `make prism`")
    sc.set_defaults(func=_scenario)

    st = sub.add_parser("stats", help="query stored aggregates (get_stats)", formatter_class=formatter,
                        description="Reads Bigtable (BIGTABLE_EMULATOR_HOST for an emulator).")
    st.add_argument("--video-id", required=True, help="the counted entity (a destination airport in the demo)")
    st.add_argument("--event-type", required=True, help="e.g. view, departed")
    st.add_argument("--function", required=True, choices=("count", "sum", "avg", "min", "max"))
    st.add_argument("--start", required=True, help="RFC 3339 instant")
    st.add_argument("--end", required=True, help="RFC 3339 instant (exclusive)")
    st.add_argument("--granularity", required=True, choices=("minute", "hour", "day", "total"))
    st.add_argument("--tz", help="IANA time zone for bucket labels (buckets stay UTC)")
    st.add_argument("--project", default="viewcounts-local", help="Bigtable project")
    st.add_argument("--instance", default="viewcounts", help="Bigtable instance")
    st.add_argument("--table", default="viewcounts", help="Bigtable table")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=_stats)

    tp = sub.add_parser("top", help="the top N videos by count of an event type in one minute, hour or day (get_top)",
                        formatter_class=formatter, description="Reads one cell of Bigtable (BIGTABLE_EMULATOR_HOST "
                        "for an emulator): the top list the pipeline keeps per window.")
    tp.add_argument("--type", required=True, help="the event type, e.g. view")
    tp.add_argument("--granularity", required=True, choices=("minute", "hour", "day"))
    tp.add_argument("--at", required=True, help="RFC 3339 instant inside the window (or its start)")
    tp.add_argument("-n", default="10", help="how many videos (1..100; get_top checks the text)")
    tp.add_argument("--project", default="viewcounts-local", help="Bigtable project")
    tp.add_argument("--instance", default="viewcounts", help="Bigtable instance")
    tp.add_argument("--table", default="viewcounts", help="Bigtable table")
    tp.add_argument("--json", action="store_true", help="print the /v1/top JSON instead of a table")
    tp.set_defaults(func=_top)

    from viewcounts.bench.harness import add_bench_args
    from viewcounts.replay import add_replay_args
    from viewcounts.demo import add_demo_args
    from viewcounts.recompute import add_recompute_args
    from pipelines.compact import add_compact_args
    from query.service import add_serve_args

    rp = sub.add_parser("replay", help="publish events (flights or JSONL) to Pub/Sub, with a manifest",
                        formatter_class=formatter, description="Publishes to PUBSUB_EMULATOR_HOST when set.")
    add_replay_args(rp)
    rp.set_defaults(func=_replay)

    rc = sub.add_parser("recompute", help="re-count hours of the raw archive into Bigtable (batch), or audit them "
                        "with --dry-run", formatter_class=formatter,
                        description="The batch recompute (pipelines.batch_recompute) with a progress bar, a dry run "
                        "that audits the stored aggregates, and a refusal to overwrite hours the streaming job may "
                        "still fire (viewcounts.recompute). BIGTABLE_EMULATOR_HOST for an emulator.")
    add_recompute_args(rc)
    rc.set_defaults(func=_recompute)

    cp = sub.add_parser("compact", help="compact closed hours of the raw archive into Parquet (dt=/hour= folders)",
                        formatter_class=formatter, description="pipelines.compact: deduplicated by event_id, typed "
                        "columns; prints a one-line JSON summary.")
    add_compact_args(cp)
    cp.set_defaults(func=_compact)

    sv = sub.add_parser("serve", help="serve the stats over HTTP (GET /v1/stats, docs at /docs)",
                        formatter_class=formatter, description="query.service: FastAPI on uvicorn, one async "
                        "Bigtable client, final buckets cached. BIGTABLE_EMULATOR_HOST for an emulator.")
    add_serve_args(sv)
    sv.set_defaults(func=_serve)

    dm = sub.add_parser("demo", help="run the streaming job end to end on the local emulators",
                        formatter_class=formatter)
    add_demo_args(dm)
    dm.set_defaults(func=_demo)

    bn = sub.add_parser("bench", help="measure the core job against its peers, end to end and queries",
                        formatter_class=formatter, description="Runs every system on the same generated events, "
                        "checks they agree, prints a table and writes the figures as JSON (viewcounts.bench.harness).")
    add_bench_args(bn)
    bn.set_defaults(func=_bench)

    sm = sub.add_parser("submit", help="submit the streaming job to a Flink session cluster, detached; prints the "
                        "Flink job id", description="viewcounts submit -- JOB FLAGS: the flags of `python -m "
                        "pipelines.streaming` with --runner=FlinkRunner --flink_master=HOST:PORT "
                        "--environment_type=EXTERNAL --environment_config=HOST:PORT (viewcounts.submit).")
    sm.add_argument("job_flags", nargs=argparse.REMAINDER, help="the job's flags (after --)")
    sm.set_defaults(func=_submit)

    args = parser.parse_args(argv)
    if args.command in ("submit", "recompute") and args.job_flags[:1] == ["--"]:
        args.job_flags = args.job_flags[1:]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Beam warns once per late element ("Watermark moved backwards...") and about
        # emulator connections; -v shows them.
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
