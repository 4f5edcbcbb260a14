"""The streaming job's step names, which a Dataflow job update matches, and the renames between them.

Dataflow replaces a running streaming job (``update``) only when every step of the running
job has a step of the same full name in the new one, or is renamed by the update's
``transformNameMapping`` (``{old name prefix: new name prefix}``; a prefix maps the steps
under it too, and ``""`` drops a step). A step that holds state (a stateful ``ParDo`` or a
``GroupByKey``) keeps it only through its name.

Two files beside this one hold what the running job has:

* ``step-names.json``: ``{full step name: "stateful" | "stateless"}``, the leaf transforms
  of the job's Beam graph (``Pipeline.to_runner_api()``) as the README launches it
  (``deployed_job``), built here offline: no runner runs, nothing is submitted;
* ``transform-name-mapping.json``: the renames since then, ``{}`` when there are none.

Run from the repository root::

    .venv/bin/python infra/dataflow/step_names.py check        # exit 1: steps lost, and how to map them
    .venv/bin/python infra/dataflow/step_names.py write        # record the graph (after an update is live)
    .venv/bin/python infra/dataflow/step_names.py parameters   # update=true[,transformNameMapping=...]
"""

from __future__ import annotations

import pipelines  # noqa: F401  (first: importing it hides the unfixable grpcio warning)

# isort: split

import argparse
import json
import sys
from pathlib import Path

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines.runners import runner_flags
from pipelines.streaming import build_pipeline

HERE = Path(__file__).resolve().parent
STEP_NAMES = HERE / "step-names.json"
NAME_MAPPING = HERE / "transform-name-mapping.json"
# The job as infra/dataflow/README.md launches it: every Terraform job flag (each adds steps:
# the archive, the dead-letter topic, the metadata) and metadata_refresh_s=300. The values do
# not reach the step names; they only have to pass Beam's and the job's checks offline.
DEPLOYED_FLAGS = [
    "--input_subscription=projects/viewcounts-project/subscriptions/viewcounts-events-sub",
    "--dead_letter_topic=projects/viewcounts-project/topics/viewcounts-dead-letters",
    "--archive_path=gs://viewcounts-project-viewcounts/archive",
    "--dead_letter_path=gs://viewcounts-project-viewcounts/dead-letters",
    "--bigtable_project=viewcounts-project",
    "--metadata_path=gs://viewcounts-project-viewcounts/metadata/videos.jsonl",
    "--metadata_refresh_s=300",
]
# Dataflow's flags for a graph built offline: --dry_run and --no_auth keep Beam's checks from
# looking for credentials or the temp bucket
OFFLINE_DATAFLOW_FLAGS = [
    "--project=viewcounts-project",
    "--region=us-central1",
    "--temp_location=gs://viewcounts-project-viewcounts/dataflow/tmp",
    "--no_auth",
    "--dry_run=True",
]


def deployed_job() -> beam_runner_api_pb2.Pipeline:
    """The streaming job's Beam graph for Dataflow as the README launches it (not run)."""
    return build_pipeline(runner_flags("dataflow") + DEPLOYED_FLAGS + OFFLINE_DATAFLOW_FLAGS).to_runner_api()


def _holds_state(transform: beam_runner_api_pb2.PTransform) -> bool:
    if transform.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn:
        return True
    if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
        return False
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    return bool(payload.state_specs or payload.timer_family_specs)


def steps(pipeline: beam_runner_api_pb2.Pipeline) -> dict[str, str]:
    """``{full name: "stateful" | "stateless"}`` of the graph's leaf transforms (the steps;
    the graph's root, which has no name of its own, left out), sorted by name."""
    root = set(pipeline.root_transform_ids)
    transforms = pipeline.components.transforms
    leaves = [t for tid, t in transforms.items() if not t.subtransforms and tid not in root]
    return {
        t.unique_name: "stateful" if _holds_state(t) else "stateless"
        for t in sorted(leaves, key=lambda t: t.unique_name)
    }


def renamed(name: str, mapping: dict[str, str]) -> str | None:
    """``name`` after ``mapping`` as Dataflow applies it: the longest key that is ``name`` or a
    ``/``-prefix of it replaced by its value; None when no key applies."""
    keys = [k for k in mapping if name == k or name.startswith(k + "/")]
    if not keys:
        return None
    key = max(keys, key=len)
    return mapping[key] + name[len(key) :] if mapping[key] else ""


def lost_steps(recorded: dict[str, str], current: set[str], mapping: dict[str, str]) -> dict[str, str]:
    """The recorded steps an update from ``recorded`` to ``current`` would not find, ``{old
    name: why}``: gone and unmapped, or mapped onto a name ``current`` lacks. A step mapped to
    ``""`` is dropped on purpose and not lost."""
    lost = {}
    for name, kind in recorded.items():
        if name in current:
            continue
        target = renamed(name, mapping)
        if target is None:
            lost[name] = f"{kind}, no longer in the job and not in {NAME_MAPPING.name}"
        elif target and target not in current:
            lost[name] = f"{kind}, mapped to {target!r}, which the job does not have"
    return lost


def report(lost: dict[str, str], current: set[str]) -> str:
    """What to do about ``lost``: the names, then how to add the mapping."""
    added = sorted(current - set(json.loads(STEP_NAMES.read_text())))
    return "\n".join(
        [
            "A Dataflow update of the running job would fail: these steps of it are missing from the new job",
            *(f"  {name!r} ({why})" for name, why in sorted(lost.items())),
            f"Map each old name (or a prefix of it, ending before a '/') to its new name in "
            f"infra/dataflow/{NAME_MAPPING.name}, e.g. {{\"old name\": \"new name\"}}; map it to \"\" to drop "
            f"the step (and its state). Steps the job has and the record lacks: {added}",
        ]
    )


def update_parameters(mapping: dict[str, str]) -> str:
    """The value of ``gcloud dataflow flex-template run --parameters`` for an update with
    ``mapping``: ``update=true``, plus ``transformNameMapping=JSON`` when there are renames
    (then in gcloud's ``^~^`` form, which separates parameters by ``~`` so the JSON's commas
    stay inside it)."""
    if not mapping:
        return "update=true"
    return "^~^update=true~transformNameMapping=" + json.dumps(mapping, separators=(",", ":"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "write", "parameters"])
    command = parser.parse_args(argv).command
    mapping = json.loads(NAME_MAPPING.read_text())
    if command == "parameters":
        print(update_parameters(mapping))
        return 0
    current = steps(deployed_job())
    if command == "write":
        STEP_NAMES.write_text(json.dumps(current, indent=2) + "\n")
        print(f"{len(current)} steps written to {STEP_NAMES}; empty {NAME_MAPPING.name} once the update is live")
        return 0
    lost = lost_steps(json.loads(STEP_NAMES.read_text()), set(current), mapping)
    print(report(lost, set(current)) if lost else f"every step of {STEP_NAMES.name} is in the job or mapped")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
