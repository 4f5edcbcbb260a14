"""The update check (``infra/dataflow/step_names.py``) against three ways to lose state (each was
a break of it, now checked):

1. The state of a stateful ``ParDo`` (and of a ``GroupByKey``) is kept per key: Dataflow's update
   and a Flink savepoint restore find a key's state cells by the encoded key, so a new job whose
   stateful step reads its input with another key coder reads every cell empty (Flink) or is
   refused by Dataflow's compatibility check. The record holds each cell's coder but not the
   key coder of the step's input, so ``check`` passes such a job.
2. A ``GroupByKey`` is recorded ``"stateful"``, but a new job whose step of that name holds no
   state (a stateless ``ParDo``, as a combine rewritten without one) passes ``check``: only a
   stateful ``ParDo``'s cells are compared, and a name still present is never lost, so the
   grouped state is dropped unseen (a Flink savepoint restore refuses state it cannot map).
3. ``_coder`` says a pickled Python coder is recorded "by its class name (the payload opens with
   it, before ``$``)". The coder's payload is a ``BytesValue`` protobuf wrapping
   ``ClassName$pickle`` (``apache_beam.coders.coders.Coder.to_runner_api_parameter``): it opens
   with the field's tag and length, so the name is recorded with those bytes in front, or the
   decode fails (``UnicodeDecodeError``) and ``check``/``write`` crash, once a state cell uses a
   coder of its own.

The job is built offline as ``step_names.deployed_job`` builds it; nothing runs.
"""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.coders import coders
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.transforms.userstate import BagStateSpec
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.test_dataflow import file_module

STEP_NAMES = file_module(os.path.join(REPO, "infra", "dataflow", "step_names.py"))
JOB = STEP_NAMES.deployed_job()
COMPONENTS = JOB.components


def _main_input(t: beam_runner_api_pb2.PTransform) -> str:
    """The id of ``t``'s main input PCollection (a ParDo's side inputs left out)."""
    side = set()
    if t.spec.urn == "beam:transform:pardo:v1":
        side = set(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)
    (tag,) = [k for k in t.inputs if k not in side]
    return t.inputs[tag]


def _keeps_state(t: beam_runner_api_pb2.PTransform) -> bool:
    if t.subtransforms:
        return False
    if t.spec.urn == "beam:transform:group_by_key:v1":
        return True
    if t.spec.urn != "beam:transform:pardo:v1":
        return False
    payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
    return bool(payload.state_specs or payload.timer_family_specs)


# the steps that keep state per key, with the KV coder of their main input
KEYED = sorted(
    (t.unique_name, COMPONENTS.pcollections[_main_input(t)].coder_id)
    for t in COMPONENTS.transforms.values()
    if _keeps_state(t)
)
# coders of the graph a key could be read with instead (by URN: one of each kind)
KEY_CODERS = sorted({c.spec.urn: cid for cid, c in COMPONENTS.coders.items() if not c.component_coder_ids}.values())


def test_the_job_has_keyed_state():
    assert KEYED and all(COMPONENTS.coders[kv].spec.urn == "beam:coder:kv:v1" for _, kv in KEYED), KEYED
    assert len(KEY_CODERS) >= 2, KEY_CODERS


@settings(max_examples=15, deadline=None, phases=[Phase.generate])
@given(step=st.sampled_from(KEYED), key_coder=st.sampled_from(KEY_CODERS))
def test_a_changed_key_coder_of_a_stateful_step_fails_the_check(step, key_coder):
    name, kv = step
    old_key = COMPONENTS.coders[kv].component_coder_ids[0]
    if COMPONENTS.coders[old_key].spec.urn == COMPONENTS.coders[key_coder].spec.urn:
        key_coder = next(c for c in KEY_CODERS if COMPONENTS.coders[c].spec.urn != COMPONENTS.coders[old_key].spec.urn)
    job = beam_runner_api_pb2.Pipeline()
    job.CopyFrom(JOB)
    (transform,) = [t for t in job.components.transforms.values() if t.unique_name == name and not t.subtransforms]
    new_kv = job.components.coders["break5_kv"]
    new_kv.CopyFrom(job.components.coders[kv])
    new_kv.component_coder_ids[0] = key_coder
    job.components.pcollections[_main_input(transform)].coder_id = "break5_kv"
    recorded, current = STEP_NAMES.steps(JOB), STEP_NAMES.steps(job)
    lost = STEP_NAMES.lost_steps(recorded, set(current), {})
    changed = STEP_NAMES.changed_state(recorded, current, {}, {})
    assert lost or changed, f"{name!r}: key coder {COMPONENTS.coders[old_key].spec.urn} -> " + str(
        COMPONENTS.coders[key_coder].spec.urn
    )


def _custom_coder(class_name: str) -> coders.Coder:
    """An instance of a new ``Coder`` class named ``class_name`` (bytes as they are): Beam
    gives it no URN, so the graph holds it pickled."""
    return type(class_name, (coders.BytesCoder,), {"to_runner_api_parameter": coders.Coder.to_runner_api_parameter})()


@settings(max_examples=20, deadline=None, phases=[Phase.generate])
@given(
    class_name=st.from_regex(r"[A-Z][A-Za-z0-9_]{0,30}Coder", fullmatch=True),
    padding=st.integers(min_value=0, max_value=300),
)
def test_a_state_cell_with_a_pickled_coder_is_recorded_by_its_class_name(class_name, padding):
    coder = _custom_coder(class_name)
    coder.padding = "x" * padding  # the pickle's length, so the BytesValue's length prefix varies

    class Keep(beam.DoFn):
        CELL = BagStateSpec("cell", coder)

        def process(self, kv, cell=beam.DoFn.StateParam(CELL)):
            cell.add(kv[1])

    p = beam.Pipeline()
    _ = p | beam.Create([(b"k", b"v")]) | "keep" >> beam.ParDo(Keep())
    recorded = STEP_NAMES.steps(p.to_runner_api())
    assert recorded["keep"]["state"] == {"cell": f"bag of {class_name}"}, recorded["keep"]


GROUPS = sorted(
    name for name, record in STEP_NAMES.steps(JOB).items() if record != "stateless" and "state" not in record
)


@pytest.mark.parametrize("step", GROUPS)
def test_a_group_by_key_turned_stateless_fails_the_check(step):
    recorded = STEP_NAMES.steps(JOB)
    current = dict(recorded, **{step: "stateless"})
    assert STEP_NAMES.lost_steps(recorded, set(current), {}) or STEP_NAMES.changed_state(recorded, current, {}, {})
