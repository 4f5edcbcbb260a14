"""The Flex Template's parameters and the job update, offline.

Parameters: every flag of the streaming job (``CountingOptions``, read from its parser) is a
parameter of ``infra/dataflow/flex-template/metadata.json`` and back, each complete (label,
help, optional or not, the job's default) and with a regex where the flag has a format; every
value a regex admits is one the job takes, once the launcher (``main.py``) has turned it into
a flag; Terraform's ``template_parameters`` output names parameters only.

Update: the launcher passes ``update`` and ``transformNameMapping`` to Beam, and the job
request then replaces the running job with the mapping; the step names a running job has
(``infra/dataflow/step-names.json``) are all in the job built now, or renamed by
``infra/dataflow/transform-name-mapping.json``, with the state and timer ids of their stateful
steps kept or migrated (``infra/dataflow/state-migrations.json``; ``infra/dataflow/step_names.py``).
"""

from __future__ import annotations

import json
import os
import re

import hcl2
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.dataflow.internal.clients import dataflow
from apitools.base.py import encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.options import CountingOptions
from tests.conftest import REPO
from tests.test_dataflow import (
    DATAFLOW_FLAGS,
    FLEX_TEMPLATE,
    PARAMETERS,
    counting_parser,
    file_module,
    launcher,
    parameter_flags,
)

METADATA = os.path.join(FLEX_TEMPLATE, "metadata.json")
OUTPUTS_TF = os.path.join(REPO, "infra", "terraform", "outputs.tf")
REQUIRED = {"input_subscription", "bigtable_project"}  # the job has no useful default for these on Dataflow
LAUNCHER = launcher()
STEP_NAMES = file_module(os.path.join(REPO, "infra", "dataflow", "step_names.py"))


def _flags() -> dict:
    """The job's own flags, ``{name without --: argparse action}``."""
    return {o[2:]: a for a in counting_parser()._actions if a.dest != "help" for o in a.option_strings}


def _metadata() -> tuple[dict, list]:
    """``metadata.json`` as JSON, and its parameters as Dataflow's ``ParameterMetadata`` messages."""
    with open(METADATA) as f:
        text = f.read()
    template = encoding.JsonToMessage(dataflow.TemplateMetadata, text)
    assert template.all_unrecognized_fields() == [] and template.streaming
    return json.loads(text), template.parameters


def _switch(action) -> bool:
    return action.nargs == 0


def test_every_job_flag_is_a_template_parameter_and_back():
    _, parameters = _metadata()
    names = [p.name for p in parameters]
    flags = set(_flags())
    assert len(names) == len(set(names)), "a parameter is declared twice"
    assert not flags - set(names), f"flags of the job missing from metadata.json: {sorted(flags - set(names))}"
    assert not set(names) - flags, f"metadata.json names flags the job lacks: {sorted(set(names) - flags)}"
    assert set(PARAMETERS) == flags  # so the job request test (test_dataflow) sends every one


def test_each_parameter_is_complete_and_states_the_jobs_default():
    raw, parameters = _metadata()
    flags = _flags()
    for declared, p in zip(raw["parameters"], parameters):
        assert p.all_unrecognized_fields() == [] and p.label and p.helpText, p.name
        assert "isOptional" in declared, f"{p.name}: say whether it is optional"
        assert p.isOptional == (p.name not in REQUIRED), p.name
        action = flags[p.name]
        if _switch(action):  # a switch is off unless given
            assert p.paramType == dataflow.ParameterMetadata.ParamTypeValueValuesEnum.BOOLEAN
            assert p.defaultValue in (None, "false"), p.name
        elif p.defaultValue is not None:
            assert p.defaultValue == str(action.default), p.name
        if action.type in (int, float):
            assert p.paramType == dataflow.ParameterMetadata.ParamTypeValueValuesEnum.NUMBER, p.name
        if action.type in (int, float) or _switch(action):
            assert p.regexes, f"{p.name}: a {action.type or bool} flag needs a regex"
        examples = [PARAMETERS[p.name]] + ([p.defaultValue] if p.defaultValue is not None else [])
        assert all(re.fullmatch(r, v) for r in p.regexes for v in examples), p.name


@st.composite
def _admitted_values(draw):
    """``(parameter, value)``: a parameter with regexes and a value all of them admit."""
    _, parameters = _metadata()
    p = draw(st.sampled_from([p for p in parameters if p.regexes]))
    first, *rest = p.regexes
    value = draw(st.from_regex(first, fullmatch=True).filter(lambda v: all(re.fullmatch(r, v) for r in rest)))
    return p.name, value


@settings(max_examples=150, deadline=None)
@given(_admitted_values())
def test_every_value_a_regex_admits_is_one_the_job_takes(parameter):
    name, value = parameter
    action = _flags()[name]
    try:
        options = PipelineOptions(LAUNCHER.job_flags([f"--{name}={value}"])).view_as(CountingOptions)
        parsed = getattr(options, action.dest)
    except SystemExit:  # argparse refused it
        pytest.fail(f"--{name}={value!r} matches the parameter's regex but the job refuses it")
    if _switch(action):
        assert parsed == (action.const if value == "true" else action.default)
    else:
        assert parsed == (action.type or str)(value)


def test_terraform_template_parameters_are_template_parameters():
    with open(OUTPUTS_TF) as f:
        outputs = hcl2.load(f)
    [job_flags] = [block["job_flags"] for block in outputs["locals"] if "job_flags" in block]
    [template_parameters] = [
        block['"template_parameters"'] for block in outputs["output"] if '"template_parameters"' in block
    ]
    assert template_parameters["value"] == '${join(",", [for flag, value in local.job_flags : "${flag}=${value}"])}'
    _, parameters = _metadata()
    assert set(job_flags) <= {p.name for p in parameters}


# -- job update


@settings(max_examples=50, deadline=None)
@given(
    update=st.booleans(),
    age_check_off=st.booleans(),
    spelling=st.sampled_from([str.lower, str.upper, str.title]),
    mapping_flag=st.sampled_from(["--transform_name_mapping", *LAUNCHER.DATAFLOW_SPELLINGS]),
    mapping=st.dictionaries(st.text(min_size=1), st.text(), max_size=4),
)
def test_the_launcher_turns_update_parameters_into_beam_flags(update, age_check_off, spelling, mapping_flag, mapping):
    argv = [
        f"--update={spelling(str(update))}",
        f"--no_event_age_check={spelling(str(age_check_off))}",
        f"{mapping_flag}={json.dumps(mapping)}",
    ]
    options = PipelineOptions(LAUNCHER.job_flags(argv))
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.update, cloud.transform_name_mapping) == (update, mapping)
    assert options.view_as(CountingOptions).check_event_age is not age_check_off


@settings(deadline=None)
@given(st.text().filter(lambda v: v.lower() not in ("true", "false")))
def test_the_launcher_refuses_a_switch_that_is_neither_true_nor_false(value):
    with pytest.raises(ValueError, match="--update"):
        LAUNCHER.job_flags([f"--update={value}"])


def test_an_update_request_replaces_the_running_job_with_the_mapping(monkeypatch):
    mapping = {"count events/windows": "count events/windows v2", "enrich/stamp": ""}
    asked = []

    def job_id_for_name(self, name):  # Dataflow's list of running jobs, which an offline test lacks
        asked.append(name)
        return "2026-12-01_00_00_00-123"

    monkeypatch.setattr(apiclient.DataflowApplicationClient, "job_id_for_name", job_id_for_name)
    argv = (
        parameter_flags(PARAMETERS)
        + DATAFLOW_FLAGS
        + ["--job_name=viewcounts", "--update=true", f"--transformNameMapping={json.dumps(mapping)}"]
    )
    job = json.loads(LAUNCHER.launch(argv).job.json())
    assert asked == ["viewcounts"] and job["replaceJobId"] == "2026-12-01_00_00_00-123"
    assert job["transformNameMapping"] == mapping


def test_every_step_and_state_cell_of_the_running_job_is_in_the_job_mapped_or_migrated():
    names = STEP_NAMES
    with open(names.STEP_NAMES) as f:
        recorded = json.load(f)
    with open(names.NAME_MAPPING) as f:
        mapping = json.load(f)
    with open(names.STATE_MIGRATIONS) as f:
        migrations = json.load(f)
    assert recorded and all(kind == "stateless" or kind["key"] for kind in recorded.values())
    current = names.steps(names.deployed_job())
    lost = names.lost_steps(recorded, set(current), mapping)
    assert not lost, names.report(lost, set(current))
    changed = names.changed_state(recorded, current, mapping, migrations)
    assert not changed, names.state_report(changed)


@st.composite
def _renames(draw):
    """``(recorded steps, old prefix, new prefix)``: a prefix of a recorded step's name (whole
    ``/``-separated parts) and a name to give it that no recorded step starts with."""
    with open(STEP_NAMES.STEP_NAMES) as f:
        recorded = json.load(f)
    parts = draw(st.sampled_from(sorted(recorded))).split("/")
    old = "/".join(parts[: draw(st.integers(1, len(parts)))])
    new = draw(
        st.text(st.characters(blacklist_characters="/"), min_size=1).filter(
            lambda n: not any(r == n or r.startswith(n + "/") for r in recorded)
        )
    )
    return recorded, old, new


@settings(max_examples=60, deadline=None)
@given(_renames())
def test_a_rename_is_lost_unless_mapped(rename):
    recorded, old, new = rename
    names = STEP_NAMES
    current = {names.renamed(n, {old: new}) or n for n in recorded}
    moved = {n for n in recorded if names.renamed(n, {old: new}) is not None}
    assert moved and set(names.lost_steps(recorded, current, {})) == moved
    assert names.lost_steps(recorded, current, {old: new}) == {}
    assert names.lost_steps(recorded, current - {new + n[len(old) :] for n in moved}, {old: ""}) == {}
    assert set(names.lost_steps(recorded, current, {old: new + " (elsewhere)"})) == moved


@given(
    st.dictionaries(
        st.text(st.characters(blacklist_characters="~"), min_size=1),
        st.text(st.characters(blacklist_characters="~")),
        max_size=4,
    )
)
def test_the_update_parameters_carry_the_mapping_whole(mapping):
    value = STEP_NAMES.update_parameters(mapping)
    separator = "~" if value.startswith("^~^") else ","  # gcloud's own separator syntax
    parameters = dict(p.split("=", 1) for p in value.removeprefix("^~^").split(separator))
    assert parameters.pop("update") == "true"
    assert json.loads(parameters.pop("transformNameMapping", "{}")) == mapping and not parameters
