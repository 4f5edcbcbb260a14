"""One home for runner differences (docs/runners.md): ``transforms/`` names no runner, every
runner's ``RunnerProfile`` is complete and matches the table in docs/runners.md, every
upstream issue a transform cites is told there, and the runner-neutral parameters the
builder sets behave as their docstrings say; outside ``pipelines/runners.py`` no code decides a
runner difference by the runner's name."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import mmh3
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import runners
from pipelines.streaming import source_readers
from transforms.pubsub_io import reader_elements, subscription_of
from transforms.top import CLEANUP_GRACE_S

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "runners.md"
RUNNER_WORDS = re.compile(r"flink|prism|dataflow|direct ?runner|runner", re.IGNORECASE)
TRANSFORMS = sorted(p.name for p in (ROOT / "transforms").glob("*.py"))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_name_no_runner(name):
    text = (ROOT / "transforms" / name).read_text()
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in RUNNER_WORDS.finditer(text)]
    assert not found, (
        "runner names in transforms/ (declare the difference in pipelines.runners.PROFILES):\n" + "\n".join(found)
    )


def test_every_runner_has_a_complete_profile():
    assert set(runners.PROFILES) == set(runners.RUNNERS)
    fields = dataclasses.fields(runners.RunnerProfile)
    for name, profile in [*runners.PROFILES.items(), ("(other)", runners.PORTABLE)]:
        for f in fields:
            value = getattr(profile, f.name)
            assert isinstance(value, str if f.name == "beam_runner" else bool), (name, f.name, value)
    for name, profile in runners.PROFILES.items():
        assert profile.beam_runner, name
        assert runners.runner_of(PipelineOptions([f"--runner={profile.beam_runner}"])) == name
        assert runners.profile(name) is profile
    assert not runners.PORTABLE.native_pubsub and runners.PORTABLE.stamped_watermark


def _doc_table() -> dict[str, dict[str, bool]]:
    """docs/runners.md's capability table: ``{field: {runner: bool}}``, any other runner as ``""``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0].strip("`")] = {
            runner: {"yes": True, "no": False}[cells[header.index(column)]]
            for runner, column in [*((r, r) for r in runners.RUNNERS), ("", "any other")]
        }
    return table


def test_the_documented_table_is_the_code():
    booleans = [f.name for f in dataclasses.fields(runners.RunnerProfile) if f.name != "beam_runner"]
    table = _doc_table()
    assert sorted(table) == sorted(booleans)
    for field, per_runner in table.items():
        assert per_runner == {r: getattr(runners.profile(r), field) for r in [*runners.RUNNERS, ""]}, field


def test_every_upstream_issue_cited_in_transforms_is_documented():
    doc = DOC.read_text()
    cited = {m for p in (ROOT / "transforms").glob("*.py") for m in re.findall(r"apache/beam#\d+", p.read_text())}
    assert cited, "transforms cite their upstream issues as apache/beam#NNNN"
    assert sorted(c for c in cited if c not in doc) == []


@given(st.sampled_from([*runners.RUNNERS, "SomePortableRunner"]), st.integers(1, 64), st.integers(0, 64))
@settings(max_examples=60, deadline=None)
def test_the_builder_sets_neutral_parameters_from_the_profile(runner, readers, parallelism):
    profile = runners.profile(runner)
    argv = [f"--source_readers={readers}"] + ([f"--parallelism={parallelism}"] if parallelism else [])
    options = PipelineOptions(argv)
    if profile.stamped_watermark and readers > 1:
        with pytest.raises(ValueError):
            source_readers(options, runner)
    else:
        assert source_readers(options, runner) == readers
    placement = runners.reader_placement(options, runner)
    assert bool(placement) == profile.reader_key_groups
    if placement:
        assert placement["key_groups"] == runners.flink_default_max_parallelism(max(1, parallelism))
    assert bool(runners.pull_pacing(runner, 1000)) == profile.pause_outlasts_bundle_check
    runner_options = PipelineOptions(
        [f"--runner={profile.beam_runner}"] if runner in runners.PROFILES else [f"--runner={runner}"]
    )
    assert runners.top_cleanup_grace_s(runner_options) == (
        None if profile.timer_output_holds_watermark else CLEANUP_GRACE_S
    )


@given(
    st.integers(1, 24), st.sampled_from([1, 7, 128, 256]), st.integers(0, 2**31 - 1), st.text(min_size=1, max_size=40)
)
@settings(max_examples=150, deadline=None)
def test_readers_fall_in_their_share_of_any_key_grouping(readers, key_groups, seed, name):
    """``reader_elements`` with a ``key_group`` (any hash into ``key_groups`` groups): reader
    ``i`` lands in the ``i``-th ``readers``-th of the groups; without one, no salt at all."""
    sub = f"projects/p/subscriptions/{name}"

    def group(element: str) -> int:
        return mmh3.hash(element, seed, signed=False) % key_groups

    if readers > key_groups:
        with pytest.raises(ValueError):
            reader_elements(sub, readers, group, key_groups)
        return
    elements = reader_elements(sub, readers, group, key_groups)
    assert len(set(elements)) == readers and {subscription_of(e) for e in elements} == {sub}
    for i, e in enumerate(elements):
        assert -(-i * key_groups // readers) <= group(e) < -(-(i + 1) * key_groups // readers)
    assert [e.rsplit("-", 1)[1] for e in reader_elements(sub, readers)] == ["0"] * readers


SCANNED = ("pipelines", "viewcounts/commands")


def _runner_name_tests() -> list[str]:
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "pipelines/runners.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Compare):
                    continue
                sides = [node.left, *node.comparators]
                names = [ast.unparse(s) for s in sides if isinstance(s, (ast.Name, ast.Attribute))]
                literals = {
                    c.value
                    for s in sides
                    for c in ast.walk(s)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
                if any("runner" in n for n in names) and literals & set(runners.RUNNERS):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_a_runner_name_test(tmp_path, monkeypatch):
    """The reader finds ``runner == "flink"`` in a module of a scanned folder."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "x.py").write_text('def f(runner):\n    return 2 if runner == "flink" else 1\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _runner_name_tests() == ["pipelines/x.py:2: runner == 'flink'"]


def test_no_runner_difference_is_decided_by_name_outside_pipelines_runners():
    """Outside ``pipelines/runners.py``, ``pipelines/`` and ``viewcounts/commands/`` ask a runner's
    profile, never compare its name with a runner's."""
    assert _runner_name_tests() == []
