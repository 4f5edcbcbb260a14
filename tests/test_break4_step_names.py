"""Break of the update check (``infra/dataflow/step_names.py``), closed: a Dataflow update (and a
Flink savepoint restore) keeps a stateful step's state by its step name *and* by each state's and
timer's id (``beam.DoFn.StateParam``'s spec name) with a compatible coder. The record
(``step-names.json``) holds each stateful ``ParDo``'s state and timer ids with their specs, and
the check (``changed_state``) fails when an id the running job has is gone or changed in the new
job, unless ``state-migrations.json`` says what the new job does without it.

The job is built offline as ``step_names.deployed_job`` builds it; a stateful step's state ids,
timer ids or a state's coder are changed in the proto (as a change in the code would) and the
recorded view of the two graphs compared."""

from __future__ import annotations

import json
import os

from apache_beam.portability.api import beam_runner_api_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.test_dataflow import file_module

STEP_NAMES = file_module(os.path.join(REPO, "infra", "dataflow", "step_names.py"))
JOB = STEP_NAMES.deployed_job()
# the steps holding user state (stateful ParDos; a GroupByKey's state has no ids to rename)
STATEFUL = sorted(
    t.unique_name
    for t in JOB.components.transforms.values()
    if t.spec.urn == "beam:transform:pardo:v1"
    and not t.subtransforms
    and beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).state_specs
)


def _change(job: beam_runner_api_pb2.Pipeline, step: str, change: str, suffix: str) -> dict[str, list[str]]:
    """Change ``step`` of ``job`` in place: ``"state"``/``"timers"`` give every state or timer id
    ``suffix`` (an id renamed in its DoFn); ``"coder"`` gives every state another coder of the
    graph (varint where it had bytes, bytes otherwise). Returns the recorded ids changed,
    ``{"state" | "timers": [id, ...]}``."""
    (transform,) = [t for t in job.components.transforms.values() if t.unique_name == step and not t.subtransforms]
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    specs = payload.timer_family_specs if change == "timers" else payload.state_specs
    coders = {c.spec.urn: cid for cid, c in job.components.coders.items()}
    ids = sorted(specs)
    for cell in ids:
        if change == "coder":
            body = getattr(specs[cell], specs[cell].WhichOneof("spec"))
            field = next(f.name for f in body.DESCRIPTOR.fields if f.name.endswith("coder_id"))
            bytes_now = job.components.coders[getattr(body, field)].spec.urn == "beam:coder:bytes:v1"
            setattr(body, field, coders["beam:coder:varint:v1" if bytes_now else "beam:coder:bytes:v1"])
        else:
            specs[cell + suffix].CopyFrom(specs[cell])
            del specs[cell]
    transform.spec.payload = payload.SerializeToString()
    return {"timers" if change == "timers" else "state": ids}


def test_the_job_has_stateful_pardos_recorded_with_their_cells():
    recorded = STEP_NAMES.steps(JOB)
    assert STATEFUL and all(isinstance(recorded[n], dict) and recorded[n]["state"] for n in STATEFUL), STATEFUL


@settings(max_examples=12, deadline=None)
@given(
    step=st.sampled_from(STATEFUL),
    change=st.sampled_from(["state", "timers", "coder"]),
    suffix=st.sampled_from(["_v2", "2", "_renamed"]),
    renamed_step=st.booleans(),
)
def test_a_renamed_or_recoded_state_is_seen_by_the_update_check(step, change, suffix, renamed_step):
    """Every id changed is reported, also when the step itself is renamed and mapped; a migration
    naming each one lets it through, and so does dropping the renamed step (mapped to ``""``)."""
    job = beam_runner_api_pb2.Pipeline()
    job.CopyFrom(JOB)
    changed = _change(job, step, change, suffix)
    recorded, current = STEP_NAMES.steps(JOB), STEP_NAMES.steps(job)
    assert current != recorded, f"{change} of {step!r} changed, same record"
    mapping = {}
    if renamed_step:
        mapping = {step: step + " v2"}
        current[step + " v2"] = current.pop(step)
    cells = {f"{step}: {part} {cell!r}" for part, ids in changed.items() for cell in ids}
    assert set(STEP_NAMES.changed_state(recorded, current, mapping, {})) == cells
    migrations = {step: {part: dict.fromkeys(ids, "starts empty") for part, ids in changed.items()}}
    assert STEP_NAMES.changed_state(recorded, current, mapping, migrations) == {}
    if renamed_step:
        assert STEP_NAMES.changed_state(recorded, current, {step: ""}, {}) == {}


def test_added_cells_lose_nothing():
    """A state or timer id the new job adds starts empty: the check lets it through."""
    recorded = STEP_NAMES.steps(JOB)
    current = json.loads(json.dumps(recorded))
    for step in STATEFUL:
        current[step]["state"]["new_cell"] = "bag of bytes"
        current[step]["timers"]["ts-new"] = "event_time"
    assert STEP_NAMES.changed_state(recorded, current, {}, {}) == {}
