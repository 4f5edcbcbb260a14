"""Flex Template launcher: build the streaming job from the template's parameters and submit it.

The launcher runs ``python main.py --input_subscription=... --runner=... --project=...``:
the template's parameters (``metadata.json``) plus the job flags Dataflow adds, every one as
``--name=value``. ``job_flags`` turns those into flags Beam's parser takes; ``launch`` puts
``--runner=DataflowRunner`` first so a launch that lacks it still selects Dataflow (a later
``--runner`` wins). It returns once the job is submitted: a Flex Template launch must not
call ``wait_until_finish`` (it would block until the streaming job ends), which is the
difference from ``python -m pipelines.streaming`` (``run_from_command_line``).

A job update (``infra/dataflow/README.md``) passes ``update=true`` and
``transformNameMapping={"old name": "new name"}``; they reach Beam as ``--update`` and
``--transform_name_mapping``, which make the job request replace the running job of the same
name, its steps matched by name.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (first: importing it hides the unfixable grpcio warning)

# isort: split

import argparse
import functools
import logging
import sys

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.runners import runner_flags
from pipelines.streaming import build_pipeline

# Dataflow's own spellings of a flag (its Java option name, and the launch request's field, as
# ``gcloud --parameters`` may pass them) -> Beam Python's
DATAFLOW_SPELLINGS = {
    "--transformNameMapping": "--transform_name_mapping",
    "--transformNameMappings": "--transform_name_mapping",
}
_BOOLEANS = {"true": True, "false": False}


@functools.cache
def switches() -> frozenset[str]:
    """Every Beam flag that takes no value (``--update``, ``--no_event_age_check``, ...): the
    option strings of the zero-argument actions of the parser Beam builds from every
    ``PipelineOptions`` subclass, this job's ``CountingOptions`` included (computed once)."""
    found: set[str] = set()

    def collect(parser: argparse.ArgumentParser) -> None:
        found.update(o for a in parser._actions if a.nargs == 0 for o in a.option_strings)

    PipelineOptions([]).get_all_options(add_extra_args_fn=collect)
    return frozenset(found)


def job_flags(argv: list[str]) -> list[str]:
    """The launcher's arguments as Beam flags. A template parameter is always ``--name=value``:
    a switch given as ``--name=true`` becomes ``--name`` and as ``--name=false`` is dropped
    (any case); a name in ``DATAFLOW_SPELLINGS`` is renamed; everything else is kept as it is.
    Raises ``ValueError`` for a switch with a value other than true or false."""
    on = switches()
    flags = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        name = DATAFLOW_SPELLINGS.get(name, name)
        if equals and name in on:
            if value.lower() not in _BOOLEANS:
                raise ValueError(f"{name} is true or false, not {value!r}")
            flags += [name] if _BOOLEANS[value.lower()] else []
        else:
            flags.append(name + equals + value)
    return flags


def launch(argv: list[str]) -> PipelineResult:
    """Submit the job that ``argv`` (the launcher's arguments) describe; returns without waiting."""
    return build_pipeline(runner_flags("dataflow") + job_flags(argv)).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    launch(sys.argv[1:])
