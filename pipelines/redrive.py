"""Dead-letter redrive for ``write_failed``: write the aggregates Bigtable refused, again.

Reads dead-letter files (``--dead_letter_glob``, the JSONL layout of schemas/archive.py),
keeps the ``write_failed`` ones and writes each stored row again with its *original* cell
timestamp: a redriven pane can never overwrite a newer pane written since, and a redrive
run twice changes nothing. Rows that fail again become dead letters again, in
``--dead_letter_path``. Other reasons are input errors: fix the producer, then republish
the ``payload`` with ``viewcounts replay``. ``build_pipeline(argv)`` returns the job unrun::

    python -m pipelines.redrive --dead_letter_glob 'gs://B/dead-letters/2024/05/14/**' \\
        --dead_letter_path gs://B/dead-letters-redrive --bigtable_project P ...
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.graph import run_from_command_line
from pipelines.options import CountingOptions
from schemas.archive import DeadLetter, hour_of_us
from schemas.event import WRITE_FAILED
from transforms.bigtable_sink import WriteAggregates, row_from_json
from transforms.files import WriteJsonlByHour


class RedriveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # not argparse-required: Beam parses every registered options class on every view
        parser.add_argument("--dead_letter_glob", help="dead-letter files to read (glob); required")


def build_pipeline(argv: list[str] | None = None) -> beam.Pipeline:
    options = PipelineOptions(argv)
    o = options.view_as(CountingOptions)
    dead_letter_glob = options.view_as(RedriveOptions).dead_letter_glob
    if not dead_letter_glob:
        raise ValueError("--dead_letter_glob is required")
    pipeline = beam.Pipeline(options=options)
    failed_again = (pipeline
                    | "read dead letters" >> beam.io.ReadFromText(dead_letter_glob,
                                                                  coder=beam.coders.BytesCoder())
                    | "decode" >> beam.Map(DeadLetter.from_json)
                    | "write_failed only" >> beam.Filter(lambda d: d.reason == WRITE_FAILED)
                    | "to rows" >> beam.Map(lambda d: [row_from_json(d.payload)])
                    | "write to Bigtable" >> beam.ParDo(WriteAggregates(o.bigtable_project, o.bigtable_instance,
                                                                         o.bigtable_table)))
    if o.dead_letter_path:
        (failed_again
         | "by hour" >> beam.Map(lambda d: (hour_of_us(d.processing_time_us), [d.to_json()]))
         | "dead-letter files" >> WriteJsonlByHour(o.dead_letter_path, "dead-letters", None))
    return pipeline


if __name__ == "__main__":
    run_from_command_line(build_pipeline)
