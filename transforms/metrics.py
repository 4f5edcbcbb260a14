"""Beam metric names (docs/contract.md, "Metrics"), all in the ``viewcounts`` namespace. Names are
stable: dashboards and the bench read them (``viewcounts.local.job_metrics``).

Counting core: ``events_in``, ``events_accepted``, ``duplicates_dropped``, ``dead_letters``
(and ``dead_letters_<reason>``), ``aggregates_written``, ``write_failures``,
``publish_failures``.

Source (``transforms.pubsub_io.ReadFromPubSubPortable``, reported by each worker that runs
source readers):

* ``messages_pulled`` (counter): Pub/Sub messages received by pulls, copies included;
* ``messages_acked`` (counter): messages whose acknowledgement Pub/Sub confirmed (after the
  checkpoint that holds them); reported with the worker's next bundle of the source, since
  acknowledgement runs in a bundle-finalization callback, outside any bundle;
* ``oldest_unacked_age_ms`` (gauge): age in ms, by publish time, of the oldest message the
  worker's readers pulled and have not yet acknowledged; 0 when there is none. Set at the
  end of each of the source's bundles on that worker.
"""

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
MESSAGES_PULLED = "messages_pulled"
MESSAGES_ACKED = "messages_acked"
OLDEST_UNACKED_AGE_MS = "oldest_unacked_age_ms"
TOP_LISTS_WRITTEN = "top_lists_written"  # counter of the sink step writing top lists
UNREADABLE_HOURS = "unreadable_hours"  # string set (batch recompute): epoch seconds of each hour it could not read


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


def gauge(name: str):
    return Metrics.gauge(NAMESPACE, name)


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
