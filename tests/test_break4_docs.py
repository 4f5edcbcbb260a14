"""Breaks of tests/test_docs.py's generators, closed: ways the product code could emit a
dead-letter code or make a metric that docs/contract.md does not list while the doc checks
still passed (a code chosen by a conditional, a lookup or a concatenation; a metric named by
keyword, or of a kind other than counter, gauge and distribution; a code or metric name
defined in its registry module but used nowhere yet).

Each test copies the product packages, the README and docs/ to a temporary folder, adds one
undocumented code or metric (a generated name, written in a generated but ordinary Python
shape), points tests.test_docs at the copy and expects its check to fail. The tree in the
checkout is never changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import test_docs as T

CACHED = (
    T.modules,
    T.definitions,
    T.calls,
    T.codes_in_code,
    T.defined_codes,
    T.metrics_in_code,
    T.defined_metric_names,
    T.contract,
    T.cli_commands,
)


def _copy_tree(to: Path) -> None:
    for package in T.PRODUCT_PACKAGES:
        shutil.copytree(T.ROOT / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(T.ROOT / "docs", to / "docs")
    shutil.copy(T.ROOT / "README.md", to / "README.md")


def _check_fails_on(tmp: Path, path: str, old: str, new: str, check) -> bool:
    """Whether ``check`` (a test_docs test) fails on a copy of the tree where ``old`` in ``path``
    (present exactly once) is replaced by ``new``."""
    root = tmp / "tree"
    shutil.rmtree(root, ignore_errors=True)
    _copy_tree(root)
    source = (root / path).read_text()
    assert source.count(old) == 1, f"{path} no longer holds {old!r} once: update this test"
    (root / path).write_text(source.replace(old, new))
    saved = T.ROOT, T.CONTRACT, T.README
    T.ROOT, T.CONTRACT, T.README = root, root / "docs" / "contract.md", root / "README.md"
    for f in CACHED:
        f.cache_clear()
    try:
        check()
    except (AssertionError, pytest.fail.Exception):
        return True
    finally:
        T.ROOT, T.CONTRACT, T.README = saved
        for f in CACHED:
            f.cache_clear()
    return False


DOCUMENTED_CODES = frozenset(T.first_column(T.section(T.contract(), "Dead letters")))
# a failing example is the finding: no shrinking, and no explain phase (its tracer makes the
# syntax-tree walks minutes long)
FEW = dict(
    max_examples=3,
    deadline=None,
    phases=(Phase.generate,),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
new_names = st.from_regex(r"[a-z]{3,8}_[a-z]{3,8}", fullmatch=True)

# A site of schemas/event.py that rejects with BAD_VALUE (other sites keep BAD_VALUE emitted), and
# ordinary ways to choose between that code and a new one there.
VALUE_SITE = 'return _reject(BAD_VALUE, f"value must be a number, got {_json_type(value)}", raw)'
REASON_SHAPES = (
    'BAD_VALUE if isinstance(value, (int, float)) else "{new}"',  # a conditional expression
    '{{True: BAD_VALUE, False: "{new}"}}[value is None]',  # a table lookup
    '"{head}" + "_{tail}"',  # a name put together
)


@settings(**FEW)
@pytest.mark.parametrize("shape", REASON_SHAPES, ids=("conditional", "lookup", "concatenation"))
@given(new=new_names.filter(lambda n: n not in DOCUMENTED_CODES))
def test_an_undocumented_dead_letter_code_fails_the_contract_check(tmp_path, new, shape):
    head, tail = new.split("_", 1)
    reason = shape.format(new=new, head=head, tail=tail)
    mutated = VALUE_SITE.replace("_reject(BAD_VALUE,", f"_reject({reason},")
    assert _check_fails_on(
        tmp_path, "schemas/event.py", VALUE_SITE, mutated, T.test_every_dead_letter_code_is_documented_and_exists
    ), f"dead-letter code {new!r} emitted as `{reason}` is not in the contract, yet the check passed"


# transforms/validate.py's setup(); a new metric made there in one of the ordinary spellings.
SETUP_SITE = "self._events_in = metrics.counter(metrics.EVENTS_IN)"
METRIC_SHAPES = (
    'metrics.counter(name="{new}")',  # the project's own wrapper, by keyword
    'Metrics.counter(namespace=metrics.NAMESPACE, name="{new}")',  # Beam's, by keyword
    'Metrics.string_set(metrics.NAMESPACE, "{new}")',  # a metric kind the check does not list
)


@settings(**FEW)
@pytest.mark.parametrize("shape", METRIC_SHAPES, ids=("wrapper-keyword", "beam-keyword", "string-set"))
@given(new=new_names)
def test_an_undocumented_metric_fails_the_contract_check(tmp_path, new, shape):
    made = shape.format(new=new)
    mutated = f"{SETUP_SITE}\n        from apache_beam.metrics import Metrics\n\n        self._break4_metric = {made}"
    assert _check_fails_on(
        tmp_path, "transforms/validate.py", SETUP_SITE, mutated, T.test_every_metric_is_documented_and_exists
    ), f"metric {new!r} made as `{made}` is not in the contract, yet the check passed"


@settings(**FEW)
@given(new=new_names.filter(lambda n: n not in DOCUMENTED_CODES))
def test_a_code_given_to_counters_of_unknown_origin_fails_the_contract_check(tmp_path, new):
    """``DeadLetterCounters.inc`` called on a parameter (whose class the reader cannot tell) with
    a new code: the call may be the counters', so its code is read."""
    helper = f"{SETUP_SITE}\n\n        def _count(counters):\n            counters.inc({new!r})\n"
    assert _check_fails_on(
        tmp_path, "transforms/validate.py", SETUP_SITE, helper, T.test_every_dead_letter_code_is_documented_and_exists
    ), f"dead-letter code {new!r} given to counters passed as a parameter, yet the check passed"


def test_the_harness_notices_a_plainly_undocumented_code_and_metric(tmp_path):
    """The copy-and-mutate harness itself: a new code passed as a literal and a new metric passed
    positionally are caught, so the two failures above are the generators' and not the harness's."""
    assert _check_fails_on(
        tmp_path,
        "schemas/event.py",
        VALUE_SITE,
        VALUE_SITE.replace("_reject(BAD_VALUE,", '_reject("brand_new",'),
        T.test_every_dead_letter_code_is_documented_and_exists,
    )
    assert _check_fails_on(
        tmp_path,
        "transforms/validate.py",
        SETUP_SITE,
        f'{SETUP_SITE}\n        self._break4_metric = metrics.counter("brand_new")',
        T.test_every_metric_is_documented_and_exists,
    )
    assert not _check_fails_on(
        tmp_path, "schemas/event.py", VALUE_SITE, VALUE_SITE, T.test_every_dead_letter_code_is_documented_and_exists
    )


# The registries: a name defined beside the others, used nowhere yet, is still to be documented.
REGISTRY_SITES = (
    ("schemas/event.py", 'WRITE_FAILED = "write_failed"', T.test_every_dead_letter_code_is_documented_and_exists),
    ("transforms/metrics.py", 'EVENTS_IN = "events_in"', T.test_every_metric_is_documented_and_exists),
)


@settings(**FEW)
@pytest.mark.parametrize("path, site, check", REGISTRY_SITES, ids=("code", "metric"))
@given(new=new_names.filter(lambda n: n not in DOCUMENTED_CODES))
def test_a_name_added_to_a_registry_fails_the_contract_check(tmp_path, new, path, site, check):
    assert _check_fails_on(tmp_path, path, site, f'{site}\n{new.upper()} = "{new}"', check), (
        f"{new!r} defined in {path} is not in the contract, yet the check passed"
    )
