"""Beam metric names (SPEC.md section 5): the same counters on every runner."""
from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "viewcounts"
EVENTS_IN = "events_in"
EVENTS_ACCEPTED = "events_accepted"
DUPLICATES_DROPPED = "duplicates_dropped"
DEAD_LETTERS = "dead_letters"
AGGREGATES_WRITTEN = "aggregates_written"
WRITE_FAILURES = "write_failures"
PUBLISH_FAILURES = "publish_failures"  # Pub/Sub copies of dead letters given up (they stay in the files)


def committed_counters(result) -> dict[str, int]:
    """``{name: committed value}`` of this namespace's counters in a pipeline result,
    summed over the steps that report them."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + c.committed
    return out


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


class DeadLetterCounters:
    """``dead_letters`` plus one ``dead_letters_<code>`` counter per reason code."""

    def __init__(self) -> None:
        self._total = counter(DEAD_LETTERS)
        self._by_reason: dict = {}

    def inc(self, reason: str, n: int = 1) -> None:
        c = self._by_reason.get(reason)
        if c is None:
            c = self._by_reason[reason] = counter(f"{DEAD_LETTERS}_{reason}")
        c.inc(n)
        self._total.inc(n)
