"""Dead-letter redrive for ``write_failed``: write the aggregates Bigtable refused, again.

Reads dead-letter files (``--dead_letter_glob``, the JSONL layout of schemas/archive.py),
keeps the ``write_failed`` ones and writes each stored row again with its *original* cell
timestamp: a redriven pane can never overwrite a newer pane written since, and a redrive
run twice changes nothing. Rows that fail again become dead letters again, in
``--dead_letter_path``; by default in ``<folder>-redrive``, beside the folder the glob reads
from (its part before the first wildcard: ``gs://B/dead-letters/**`` ->
``gs://B/dead-letters-redrive``); a glob with no such folder (a bucket's root) needs the
flag. Redrive that folder too once Bigtable is back. Other reasons are input errors: fix
the producer, then republish the ``payload`` with ``viewcounts replay``. The write budget
flags are the streaming job's (``--bigtable_write_budget_s``,
``--bigtable_attempt_timeout_s``: ``transforms.bigtable_sink``).
``build_pipeline(argv)`` returns the job unrun::

    python -m pipelines.redrive --dead_letter_glob 'gs://B/dead-letters/2024/05/14/**' \\
        --dead_letter_path gs://B/dead-letters-redrive --bigtable_project P ...
"""

from __future__ import annotations

import posixpath
import re

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.graph import bigtable_writer, run_from_command_line
from pipelines.options import CountingOptions, sinks_of
from schemas.archive import DeadLetter
from schemas.event import WRITE_FAILED
from transforms.bigtable_sink import row_from_json
from transforms.dead_letters import WriteDeadLetters


class RedriveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # not argparse-required: Beam parses every registered options class on every view
        parser.add_argument("--dead_letter_glob", help="dead-letter files to read (glob); required")


def default_redrive_path(dead_letter_glob: str) -> str | None:
    """``<folder>-redrive``: ``folder`` is the glob's part before its first wildcard, up to its
    last ``/``; None when that is no folder below a bucket or the current directory."""
    folder = posixpath.dirname(re.split(r"[*?\[]", dead_letter_glob, maxsplit=1)[0]).rstrip("/")
    if not folder or ("://" in dead_letter_glob and "/" not in folder.split("://", 1)[1]):
        return None
    return folder + "-redrive"


def build_pipeline(argv: list[str] | None = None) -> beam.Pipeline:
    options = PipelineOptions(argv)
    o = options.view_as(CountingOptions)
    dead_letter_glob = options.view_as(RedriveOptions).dead_letter_glob
    if not dead_letter_glob:
        raise ValueError("--dead_letter_glob is required")
    dead_letter_path = o.dead_letter_path or default_redrive_path(dead_letter_glob)
    if not dead_letter_path:
        raise ValueError(
            f"--dead_letter_path is required: rows that fail again need a folder, and "
            f"--dead_letter_glob {dead_letter_glob} has none to put one beside"
        )
    sinks = sinks_of(o, streaming=False, dead_letter_path=dead_letter_path)
    pipeline = beam.Pipeline(options=options)
    failed_again = (
        pipeline
        | "read dead letters" >> beam.io.ReadFromText(dead_letter_glob, coder=beam.coders.BytesCoder())
        | "decode" >> beam.Map(DeadLetter.from_json)
        | "write_failed only" >> beam.Filter(lambda d: d.reason == WRITE_FAILED)
        | "to rows" >> beam.Map(lambda d: [row_from_json(d.payload)])
        | "write to Bigtable" >> bigtable_writer(sinks)
    )
    failed_again | "dead letters" >> WriteDeadLetters(sinks.dead_letter_path, None, sinks.run_id)
    return pipeline


if __name__ == "__main__":
    run_from_command_line(build_pipeline)
