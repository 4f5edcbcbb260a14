"""Flex Template launcher: build the streaming job from the template's parameters and submit it.

The launcher runs ``python main.py --input_subscription=... --runner=... --project=...``:
the template's parameters (``metadata.json``) plus the job flags Dataflow adds. It puts
``--runner=DataflowRunner`` first so a launch that lacks it still selects Dataflow (a later
``--runner`` wins). It returns once the job is submitted: a Flex Template launch must not
call ``wait_until_finish`` (it would block until the streaming job ends), which is the
difference from ``python -m pipelines.streaming`` (``run_from_command_line``).
"""
from __future__ import annotations

import logging
import sys

from apache_beam.runners.runner import PipelineResult

from pipelines.runners import runner_flags
from pipelines.streaming import build_pipeline


def launch(argv: list[str]) -> PipelineResult:
    """Submit the job that ``argv`` (command-line flags) describe; returns without waiting."""
    return build_pipeline(runner_flags("dataflow") + argv).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    launch(sys.argv[1:])
