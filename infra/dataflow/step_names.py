"""The streaming job's step names, which a Dataflow job update matches, and the renames between them.

Dataflow replaces a running streaming job (``update``) only when every step of the running
job has a step of the same full name in the new one, or is renamed by the update's
``transformNameMapping`` (``{old name prefix: new name prefix}``; a prefix maps the steps
under it too, and ``""`` drops a step). A step that holds state (a stateful ``ParDo`` or a
``GroupByKey``) keeps it only through its name and the coder of its key (state is kept per
encoded key), and a stateful ``ParDo`` keeps each state cell and timer only through its id
and coder as well (Dataflow's update and a Flink savepoint restore both look state up by
step, key and id): a renamed id reads empty in the new job, and a changed coder misreads or
is refused.

Three files beside this one hold what the running job has:

* ``step-names.json``: ``{full step name: "stateless" | cells}``, the leaf transforms of the
  job's Beam graph (``Pipeline.to_runner_api()``) as the README launches it
  (``deployed_job``), built here offline: no runner runs, nothing is submitted. A step that
  keeps state has its ``cells``: ``{"key": key coder}`` for a ``GroupByKey``, plus
  ``"state": {id: spec}, "timers": {id: time domain}`` for a stateful ``ParDo`` (``cells``
  below);
* ``transform-name-mapping.json``: the renames since then, ``{}`` when there are none;
* ``state-migrations.json``: ``{step name: {"state" | "timers": {id: what the new job does
  without it}, "key": what the new job does without the old keys' state}}``, the recorded
  state the new job drops or changes on purpose, ``{}`` when there are none.

Run from the repository root::

    .venv/bin/python infra/dataflow/step_names.py check        # exit 1: steps or state lost, and what to do
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

from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from google.protobuf import wrappers_pb2

from pipelines.runners import runner_flags
from pipelines.streaming import build_pipeline

HERE = Path(__file__).resolve().parent
STEP_NAMES = HERE / "step-names.json"
NAME_MAPPING = HERE / "transform-name-mapping.json"
STATE_MIGRATIONS = HERE / "state-migrations.json"
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


def _coder(components: beam_runner_api_pb2.Components, coder_id: str) -> str:
    """A coder as its URN's name and its components', e.g. ``kv(varint, bytes)``; a pickled
    Python coder by its class name (the payload is a ``BytesValue`` of ``ClassName$pickle``).
    Stable across builds, unlike the graph's coder ids."""
    spec = components.coders[coder_id].spec
    name = spec.urn.removeprefix("beam:coder:").removesuffix(":v1")
    if spec.urn == python_urns.PICKLED_CODER:
        name = wrappers_pb2.BytesValue.FromString(spec.payload).value.split(b"$", 1)[0].decode("utf-8", "replace")
    parts = [_coder(components, c) for c in components.coders[coder_id].component_coder_ids]
    return f"{name}({', '.join(parts)})" if parts else name


def _state_spec(components: beam_runner_api_pb2.Components, spec: beam_runner_api_pb2.StateSpec) -> str:
    """A state cell's kind and coders, e.g. ``bag of kv(varint, bytes)``, ``map of bytes to varint``."""
    kind = spec.WhichOneof("spec")
    body = getattr(spec, kind)
    coders = [_coder(components, getattr(body, f.name)) for f in body.DESCRIPTOR.fields if f.name.endswith("coder_id")]
    return f"{kind.removesuffix('_spec')} of {' to '.join(coders)}"


def _key_coder(components: beam_runner_api_pb2.Components, transform: beam_runner_api_pb2.PTransform, side=()) -> str:
    """The coder of the keys of ``transform``'s main input (a ``KV``; ``side``: its side inputs' tags)."""
    (main,) = [pc for tag, pc in transform.inputs.items() if tag not in side]
    return _coder(components, components.coders[components.pcollections[main].coder_id].component_coder_ids[0])


def cells(components: beam_runner_api_pb2.Components, transform: beam_runner_api_pb2.PTransform) -> dict | None:
    """The state a step keeps: ``{"key": key coder}`` for a ``GroupByKey``; ``{"key": key
    coder, "state": {id: spec}, "timers": {id: time domain}}`` for a stateful ``ParDo`` (ids as
    the graph has them: Python names a timer ``ts-<name>``); None for any other step."""
    if transform.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn:
        return {"key": _key_coder(components, transform)}
    if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
        return None
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    if not (payload.state_specs or payload.timer_family_specs):
        return None
    return {
        "key": _key_coder(components, transform, payload.side_inputs),
        "state": {i: _state_spec(components, payload.state_specs[i]) for i in sorted(payload.state_specs)},
        "timers": {
            i: beam_runner_api_pb2.TimeDomain.Enum.Name(payload.timer_family_specs[i].time_domain).lower()
            for i in sorted(payload.timer_family_specs)
        },
    }


def steps(pipeline: beam_runner_api_pb2.Pipeline) -> dict[str, str | dict]:
    """``{full name: "stateless" | cells}`` of the graph's leaf transforms (the steps; the
    graph's root, which has no name of its own, left out), sorted by name: ``cells`` (see
    there) for a ``GroupByKey`` or a stateful ``ParDo``."""
    root = set(pipeline.root_transform_ids)
    components = pipeline.components
    leaves = [t for tid, t in components.transforms.items() if not t.subtransforms and tid not in root]
    return {t.unique_name: cells(components, t) or "stateless" for t in sorted(leaves, key=lambda t: t.unique_name)}


def renamed(name: str, mapping: dict[str, str]) -> str | None:
    """``name`` after ``mapping`` as Dataflow applies it: the longest key that is ``name`` or a
    ``/``-prefix of it replaced by its value; None when no key applies."""
    keys = [k for k in mapping if name == k or name.startswith(k + "/")]
    if not keys:
        return None
    key = max(keys, key=len)
    return mapping[key] + name[len(key) :] if mapping[key] else ""


def lost_steps(recorded: dict, current: set[str], mapping: dict[str, str]) -> dict[str, str]:
    """The recorded steps an update from ``recorded`` (as ``steps`` gives it) to ``current``
    would not find, ``{old name: why}``: gone and unmapped, or mapped onto a name ``current``
    lacks. A step mapped to ``""`` is dropped on purpose and not lost."""
    lost = {}
    for name, record in recorded.items():
        if name in current:
            continue
        target = renamed(name, mapping)
        kind = "stateless" if record == "stateless" else "stateful"
        if target is None:
            lost[name] = f"{kind}, no longer in the job and not in {NAME_MAPPING.name}"
        elif target and target not in current:
            lost[name] = f"{kind}, mapped to {target!r}, which the job does not have"
    return lost


def changed_state(recorded: dict, current: dict, mapping: dict[str, str], migrations: dict) -> dict[str, str]:
    """The recorded state an update from ``recorded`` to ``current`` (both as ``steps`` gives
    them) would lose, ``{"step: key" | "step: state|timers 'id'": why}``: of every recorded
    stateful step the new job still has (by name, or mapped onto a step it has), a key coder
    that changed (or a step that keeps no state any more), and each state or timer id that
    step no longer has or has with another spec, unless ``migrations`` (as in
    ``state-migrations.json``) says under the recorded name what the new job does without it.
    Ids the new job adds start empty and are not lost; a step lost or dropped as a whole is
    ``lost_steps``' to report."""
    changed = {}
    for name, record in recorded.items():
        if not isinstance(record, dict):
            continue
        target = name if name in current else renamed(name, mapping)
        if not target or target not in current:
            continue
        now = current[target] if isinstance(current[target], dict) else {}
        documented = migrations.get(name, {})
        if now.get("key") != record["key"] and not documented.get("key"):
            changed[f"{name}: key"] = f"keyed by {record['key']}, now " + (
                f"keyed by {now['key']}: the new job reads no old key's state" if now else "it keeps no state"
            )
        for part in ("state", "timers"):
            for cell, spec in record.get(part, {}).items():
                new = now.get(part, {}).get(cell)
                if new != spec and not documented.get(part, {}).get(cell):
                    changed[f"{name}: {part} {cell!r}"] = f"{spec}, now " + (new or "gone: the new job reads it empty")
    return changed


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


def state_report(changed: dict[str, str]) -> str:
    """What to do about ``changed`` (``changed_state``'s): the cells, then the two ways out."""
    return "\n".join(
        [
            "A Dataflow update or a Flink savepoint restore would lose state: these cells of the running job's "
            "steps are gone from the new job or changed",
            *(f"  {cell} (was {why})" for cell, why in sorted(changed.items())),
            f"Keep the id and its coder, or say under the recorded step name in infra/dataflow/"
            f"{STATE_MIGRATIONS.name} what the new job does without the cell, e.g. "
            f'{{"step": {{"state": {{"id": "dedup forgets the ids of the last hour"}}}}}}. A changed coder '
            f"may also be refused by Dataflow's compatibility check: then drain the job and start anew.",
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
        print(
            f"{len(current)} steps written to {STEP_NAMES}; empty {NAME_MAPPING.name} and "
            f"{STATE_MIGRATIONS.name} once the update is live"
        )
        return 0
    recorded = json.loads(STEP_NAMES.read_text())
    lost = lost_steps(recorded, set(current), mapping)
    changed = changed_state(recorded, current, mapping, json.loads(STATE_MIGRATIONS.read_text()))
    if lost:
        print(report(lost, set(current)))
    if changed:
        print(state_report(changed))
    if not (lost or changed):
        print(f"every step and state cell of {STEP_NAMES.name} is in the job, mapped or migrated")
    return 1 if lost or changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
