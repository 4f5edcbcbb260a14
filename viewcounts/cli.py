"""The ``viewcounts`` command: ``demo``, ``replay``, ``recompute``, ``stats``, ``top``, ``scenario run|check``,
``bench``, ``submit``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import orjson

import pipelines  # noqa: F401  (importing it hides the unfixable grpcio warning: pipelines.hide_unfixable_warnings)


def _scenario(args) -> int:
    from viewcounts.commands.scenario import check_case, load_case, run_case

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


_NO_BIGTABLE = (
    "error: no Bigtable to read: set BIGTABLE_EMULATOR_HOST=host:port for an emulator (for example the "
    "one `viewcounts demo --keep-running` prints) or configure Google Cloud credentials"
)


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

    stats, failed = _ask(
        StatsReader,
        args,
        lambda r: r.get_stats(
            args.video_id, args.event_type, args.function, args.start, args.end, args.granularity, args.tz
        ),
    )
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
        table.add_row(
            b.start.isoformat(),
            str(a.count),
            f"{a.sum:g}",
            *(f"{x:g}" if x is not None else "-" for x in (a.avg, a.min, a.max)),
        )
    console = Console()
    console.print(table)
    console.print(f"{args.function} over [{stats.start.isoformat()}, {stats.end.isoformat()}): {stats.value}")
    return 0


def _top(args) -> int:
    import time

    from query.top import TopReader
    from schemas.acceptance import DEFAULT_ALLOWED_LATENESS_S
    from schemas.closed_windows import CLOSE_MARGIN_S, final_before
    from schemas.storage import TOP_GRANULARITY_SECONDS

    top, failed = _ask(TopReader, args, lambda r: r.get_top(args.type, args.granularity, args.at, args.n))
    if failed:
        return failed
    q = top.query
    final = q.window_start_s < final_before(
        TOP_GRANULARITY_SECONDS[q.granularity], time.time(), DEFAULT_ALLOWED_LATENESS_S, CLOSE_MARGIN_S
    )
    body = top.to_json(final)
    if args.json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"top {q.n} by {q.event_type}, {q.granularity} [{body['window_start']}, {body['window_end']})"
        f"{'' if final else ' (open)'}"
    )
    for col, justify in (("#", "right"), ("video_id", "left"), ("count", "right")):
        table.add_column(col, justify=justify)
    for rank, item in enumerate(body["items"], 1):
        table.add_row(str(rank), Text(item["video_id"]), str(item["count"]))  # verbatim: ids are no console markup
    Console().print(table)
    return 0


def _submit(args) -> int:
    from viewcounts.commands.submit import main as submit_main

    return submit_main(args.job_flags)


def _add_scenario_args(sc) -> None:
    sc.add_argument(
        "action",
        choices=("run", "check"),
        help="run: print the result as JSON; check: compare with the case's expect, exit 0 iff it matches",
    )
    sc.add_argument("case", help="path of the case file")
    sc.add_argument("--runner", choices=("local", "prism"), default="local", help="prism needs `make prism`")


def _add_stats_args(st) -> None:
    st.add_argument("--video-id", required=True, help="the counted entity (a destination airport in the demo)")
    st.add_argument("--event-type", required=True, help="e.g. view, departed")
    st.add_argument("--function", required=True, choices=("count", "sum", "avg", "min", "max"))
    st.add_argument("--start", required=True, help="RFC 3339 instant")
    st.add_argument("--end", required=True, help="RFC 3339 instant (exclusive)")
    st.add_argument("--granularity", required=True, choices=("minute", "hour", "day", "total"))
    st.add_argument("--tz", help="IANA time zone for bucket labels (buckets stay UTC)")
    _add_table_args(st)
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_top_args(tp) -> None:
    tp.add_argument("--type", required=True, help="the event type, e.g. view")
    tp.add_argument("--granularity", required=True, choices=("minute", "hour", "day"))
    tp.add_argument("--at", required=True, help="RFC 3339 instant inside the window (or its start)")
    tp.add_argument("-n", default="10", help="how many videos (1..100; get_top checks the text)")
    _add_table_args(tp)
    tp.add_argument("--json", action="store_true", help="print the /v1/top JSON instead of a table")


def _add_table_args(p) -> None:
    """The flags naming the Bigtable table ``stats`` and ``top`` read."""
    p.add_argument("--project", default="viewcounts-local", help="Bigtable project")
    p.add_argument("--instance", default="viewcounts", help="Bigtable instance")
    p.add_argument("--table", default="viewcounts", help="Bigtable table")


def _add_submit_args(sm) -> None:
    sm.add_argument("job_flags", nargs=argparse.REMAINDER, help="the job's flags (after --)")


@dataclass(frozen=True)
class _Command:
    """One subcommand. ``add_args`` adds its flags to its parser and ``run`` runs it on the parsed
    arguments, returning the exit code; either is a function or a ``"module:function"`` path,
    imported only when the command is the one asked for (the modules behind most commands import
    Beam and the Google clients, seconds that ``viewcounts --help`` need not wait)."""

    help: str
    add_args: Callable | str
    run: Callable | str
    description: str | None = None
    show_defaults: bool = True


def _resolve(target: Callable | str) -> Callable:
    """``target`` itself, or the function a ``"module:function"`` path names (importing the module)."""
    if callable(target):
        return target
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


_COMMANDS = {
    "scenario": _Command(
        "run or check a scenario case file (docs/contract.md, Scenario cases)",
        _add_scenario_args,
        _scenario,
        "Runs the case through the real pipeline (TestStream) with the Bigtable emulator (BIGTABLE_EMULATOR_HOST, "
        "or one started for the run).",
    ),
    "stats": _Command(
        "query stored aggregates (get_stats)",
        _add_stats_args,
        _stats,
        "Reads Bigtable (BIGTABLE_EMULATOR_HOST for an emulator).",
    ),
    "top": _Command(
        "the top N videos by count of an event type in one minute, hour or day (get_top)",
        _add_top_args,
        _top,
        "Reads one cell of Bigtable (BIGTABLE_EMULATOR_HOST for an emulator): the top list the pipeline keeps per "
        "window.",
    ),
    "replay": _Command(
        "publish events (flights or JSONL) to Pub/Sub, with a manifest",
        "viewcounts.commands.replay:add_replay_args",
        "viewcounts.commands.replay:replay_main",
        "Publishes to PUBSUB_EMULATOR_HOST when set.",
    ),
    "recompute": _Command(
        "re-count hours of the raw archive into Bigtable (batch), or audit them with --dry-run",
        "viewcounts.commands.recompute:add_recompute_args",
        "viewcounts.commands.recompute:recompute_main",
        "The batch recompute (pipelines.batch_recompute) with a progress bar, a dry run that audits the stored "
        "aggregates, and a refusal to overwrite hours the streaming job may still fire (viewcounts.commands.recompute). "
        "BIGTABLE_EMULATOR_HOST for an emulator.",
    ),
    "compact": _Command(
        "compact closed hours of the raw archive into Parquet (dt=/hour= folders)",
        "pipelines.compact:add_compact_args",
        "pipelines.compact:compact_main",
        "pipelines.compact: deduplicated by event_id, typed columns; prints a one-line JSON summary.",
    ),
    "serve": _Command(
        "serve the stats over HTTP (GET /v1/stats, docs at /docs)",
        "query.service:add_serve_args",
        "query.service:serve_main",
        "query.service: FastAPI on uvicorn, one async Bigtable client, final buckets cached. "
        "BIGTABLE_EMULATOR_HOST for an emulator.",
    ),
    "demo": _Command(
        "run the streaming job end to end on the local emulators",
        "viewcounts.commands.demo:add_demo_args",
        "viewcounts.commands.demo:demo_main",
    ),
    "bench": _Command(
        "measure the core job against its peers, end to end and queries",
        "viewcounts.bench.harness:add_bench_args",
        "viewcounts.bench.harness:bench_main",
        "Runs every system on the same generated events, checks they agree, prints a table and writes the figures "
        "as JSON (viewcounts.bench.harness).",
    ),
    "submit": _Command(
        "submit the streaming job to a Flink session cluster, detached; prints the Flink job id",
        _add_submit_args,
        _submit,
        "viewcounts submit -- JOB FLAGS: the flags of `python -m pipelines.streaming` with --runner=FlinkRunner "
        "--flink_master=HOST:PORT --environment_type=EXTERNAL --environment_config=HOST:PORT (viewcounts.commands.submit).",
        show_defaults=False,
    ),
}


def _command_named(argv: list[str]) -> str | None:
    """The subcommand ``argv`` asks for: its first argument that is not an option (the top level
    has flags only), or None when there is none or it names no command."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in _COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="viewcounts", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Beam's and the clients' logs")
    sub = parser.add_subparsers(dest="command", required=True)
    asked = _command_named(argv)
    for name, command in _COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            formatter_class=(
                argparse.ArgumentDefaultsHelpFormatter if command.show_defaults else argparse.HelpFormatter
            ),
        )
        if name == asked:  # only the asked command's flags: adding them may import its module
            _resolve(command.add_args)(p)

    args = parser.parse_args(argv)
    if args.command in ("submit", "recompute") and args.job_flags[:1] == ["--"]:
        args.job_flags = args.job_flags[1:]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Beam warns once per late element ("Watermark moved backwards...") and about
        # emulator connections; -v shows them.
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
    return _resolve(_COMMANDS[args.command].run)(args)


if __name__ == "__main__":
    sys.exit(main())
