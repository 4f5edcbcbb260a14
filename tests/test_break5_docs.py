"""Breaks of ``tests/test_docs.py``'s dead-letter check: "every reason the product code can give
a dead letter ... is one of [the codes]: a reason the reader cannot tell fails the check". The
reader follows calls by the callee's name and a ``reason`` argument by its parameter, so a
reason given another common way is neither read nor refused:

* ``cls(payload, "reason", ...)`` in a classmethod of ``DeadLetter`` (an alternate constructor:
  calls are indexed by the callee's name, and ``cls`` names no definition);
* ``dataclasses.replace(letter, reason="...")`` (``DeadLetter`` is a frozen dataclass;
  ``replace`` is no product definition with a ``reason`` parameter);
* ``DeadLetter(*fields)`` (a starred argument binds no parameter).

and of its metric check ("every metric the product code makes with one of Beam's ``Metrics``
kinds ... or the project's wrappers of them"): calls are read by the callee's name, so a
metric made through another name is not read:

* ``from transforms.metrics import counter as count_of; count_of("...")`` (an aliased import);
* ``make = Metrics.counter; make(NAMESPACE, "...")`` (a bound method kept in a name).

Each is added to a copy of the product packages in a temporary folder, ``test_docs``' reader
pointed at the copy, and the reason it gives must be found (then refused as no code), or the
reader must say it cannot tell it.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import test_docs

CACHED = ("modules", "definitions", "calls", "codes_in_code", "defined_codes", "metrics_in_code")

GIVEN_BY = {
    "alternate constructor": '''
    @classmethod
    def break5(cls, payload: bytes) -> "DeadLetter":
        return cls(payload, "{name}", "made by break5", 0)
''',
    "dataclasses.replace": '''

def break5(letter: DeadLetter) -> DeadLetter:
    import dataclasses

    return dataclasses.replace(letter, reason="{name}")
''',
    "starred arguments": '''

def break5(payload: bytes) -> DeadLetter:
    return DeadLetter(*(payload, "{name}", "made by break5", 0))
''',
}


METRIC_MADE_BY = {
    "aliased import": '''

from transforms.metrics import counter as count_of


def break5():
    return count_of("{name}")
''',
    "bound alias": '''

from apache_beam.metrics import Metrics


def break5():
    make = Metrics.counter
    return make("viewcounts", "{name}")
''',
}


def _clear():
    for name in CACHED:
        getattr(test_docs, name).cache_clear()


@pytest.fixture
def product_copy(tmp_path_factory, monkeypatch):
    """A function that copies the product packages, adds ``code`` to the copy of ``module``
    (default ``schemas/archive.py``; inside ``DeadLetter`` when indented) and points
    ``test_docs``' reader at the copy."""
    made = []

    def make(code: str, module: str = "schemas/archive.py"):
        root = tmp_path_factory.mktemp("product")
        for package in test_docs.PRODUCT_PACKAGES:
            shutil.copytree(test_docs.ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
        archive = root / module
        text = archive.read_text()
        if code.startswith("\n    "):  # a method: right after the class's fields
            anchor = "    processing_time_us: int\n"
            assert text.count(anchor) == 1
            text = text.replace(anchor, anchor + code, 1)
        else:
            text += code
        archive.write_text(text)
        monkeypatch.setattr(test_docs, "ROOT", root)
        _clear()
        made.append(root)
        return root

    yield make
    monkeypatch.undo()
    _clear()


# what the check reads, and where the added code goes
READS = {
    "reason": (lambda: test_docs.codes_in_code(), "schemas/archive.py"),
    "metric": (lambda: test_docs.metrics_in_code(), "transforms/validate.py"),
}
ADDED = {("reason", way): code for way, code in GIVEN_BY.items()} | {
    ("metric", way): code for way, code in METRIC_MADE_BY.items()
}


def _read_or_unresolved(kind: str) -> set[str]:
    """What the check reads of ``kind`` in the copy, or ``{"unresolved: ..."}`` when it says it
    cannot tell one (then it refuses the code: the check holds)."""
    try:
        return set(READS[kind][0]())
    except pytest.fail.Exception as exc:
        return {f"unresolved: {exc}"}


def test_the_copy_reads_as_the_product(product_copy):
    """Unchanged but for a reason and a metric given the ways the reader follows, the copy's
    reasons and metrics are read, the new ones included."""
    product_copy(
        '\n\ndef break5(payload: bytes) -> DeadLetter:\n    return DeadLetter(payload, "no_such_code", "", 0)\n'
    )
    assert {"no_such_code", "too_large", "write_failed"} <= _read_or_unresolved("reason")
    product_copy('\n\ndef break5():\n    return metrics.counter("no_such_metric")\n', READS["metric"][1])
    assert {"no_such_metric", "events_in"} <= _read_or_unresolved("metric")


@pytest.mark.parametrize(
    "kind, way",
    [
        pytest.param(kind, way, marks=pytest.mark.xfail(strict=True, reason=f"a {kind} given by {way} is not read"))
        for kind, way in ADDED
    ],
)
@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.from_regex(r"[a-z]{3,12}_[a-z]{3,12}", fullmatch=True))
def test_a_reason_or_metric_given_another_way_is_read(product_copy, kind, way, name):
    product_copy(ADDED[kind, way].format(name=name), READS[kind][1])
    found = _read_or_unresolved(kind)
    assert name in found or any(r.startswith("unresolved") for r in found), sorted(found)
