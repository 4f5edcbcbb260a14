"""Bigtable outages through a fault-injecting TCP proxy (Toxiproxy, ``viewcounts.faultproxy``)
between the writer and the real Bigtable emulator (the emulator keeps its data: it is never
restarted). Two kinds of outage: connections refused (the proxy disabled) and a partition
(connections accepted, no byte through: the client hangs until its own deadlines).

* The sink alone (``WriteAggregates``): an outage that ends within the write budget is ridden
  out with no dead letter, one reconnection healing the channel; an outage longer than the
  budget turns every cell of the flush into a ``write_failed`` dead letter within the budget,
  the same sink writes again as soon as the outage ends, and ``pipelines.redrive`` over
  those dead letters leaves every cell equal to its newest pane.
* The streaming job on an embedded Flink with checkpoints, flights replayed with their real
  2013 times, writing through the proxy with a 20 s budget: mid-stream, connections refused
  for 60 s, then a partition of 45 s. During each outage the job keeps reading (the events
  published then reach the raw archive) and checkpoints keep completing; the flushes that
  meet the outage become ``write_failed`` dead letters; the redrive over the dead-letter
  files then leaves every stored aggregate equal to the polars reference (0 mismatches).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pipelines.runners import runner_flags
from query.stats import StatsReader
from schemas.archive import DeadLetter, local_lines
from schemas.event import WRITE_FAILED
from schemas.storage import Aggregate, cell_timestamp_us, wall_clock_ms
from tests.streaming_jobs import INSTANCE, PROJECT, Deployment, archive_missing, kill
from tests.test_streaming_runners import HISTORICAL, _flights, _some_rows, _wait_for
from transforms.aggregate import AggregateRow
from transforms.bigtable_sink import WriteAggregates, row_to_json
from transforms.enrich import EnrichedRow
from viewcounts.faultproxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.emulator, pytest.mark.slow]

H = 1_715_680_800  # 2024-05-14T10:00:00Z
ENV = "BIGTABLE_EMULATOR_HOST"


@pytest.fixture(scope="module")
def toxiproxy():
    with FaultProxy() as server:
        yield server


@pytest.fixture
def bigtable_proxy(toxiproxy, bigtable_host):
    proxy = toxiproxy.proxy(f"bigtable-{uuid.uuid4().hex[:8]}", bigtable_host)
    yield proxy
    proxy.delete()


FAULTS = {"refused": ("refuse", "restore"), "partition": ("blackhole", "remove_toxics")}


@contextlib.contextmanager
def _bigtable_at(host: str):
    """Point this process's Bigtable clients at ``host`` (clients made inside read it)."""
    old = os.environ[ENV]
    os.environ[ENV] = host
    try:
        yield
    finally:
        os.environ[ENV] = old


def _rows(n: int, count: int, ts_ms: int) -> list[EnrichedRow]:
    """``n`` minute panes of one video, each with ``count`` events."""
    return [EnrichedRow(AggregateRow("V1", "view", "minute", H + 60 * i, Aggregate(count, 0, 0.0, None, None), 0,
                                     cell_timestamp_us(ts_ms, count)), None, None) for i in range(n)]


def _flush(sink: WriteAggregates, rows: list[EnrichedRow]) -> list[DeadLetter]:
    sink.start_bundle()
    return [d for d in sink.process(rows)] + [wv.value for wv in sink.finish_bundle()]


def _counts(table) -> dict[int, int]:
    with StatsReader(*table) as reader:
        return {c.window_start_s: c.aggregate.count for c in reader.all_cells()}


class _OnLog(logging.Handler):
    """Calls ``action`` once, at the first record whose message contains ``text``."""

    def __init__(self, text: str, action) -> None:
        super().__init__()
        self.text, self.action, self.seen = text, action, 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen += 1
            if self.seen == 1:
                self.action()


@pytest.mark.parametrize("fault", FAULTS)
def test_outage_within_the_budget_is_ridden_out(table, bigtable_proxy, fault):
    start, end = (getattr(bigtable_proxy, name) for name in FAULTS[fault])
    ends = _OnLog("Bigtable unreachable", end)  # the first failed attempt ends the outage
    logging.getLogger("transforms.bigtable_sink").addHandler(ends)
    try:
        with _bigtable_at(bigtable_proxy.listen):
            sink = WriteAggregates(*table, write_budget_s=60, attempt_timeout_s=2)
            sink.setup()
            start()
            dead = _flush(sink, _rows(30, 3, wall_clock_ms()))
            sink.teardown()
    finally:
        logging.getLogger("transforms.bigtable_sink").removeHandler(ends)
    assert dead == []
    assert ends.seen == 1  # the outage was met, and one new client healed the channel at once
    assert _counts(table) == {H + 60 * i: 3 for i in range(30)}


@pytest.mark.parametrize("fault", FAULTS)
def test_outage_longer_than_the_budget_becomes_write_failed_and_the_redrive_restores_it(
        table, bigtable_proxy, fault, tmp_path):
    from pipelines import redrive

    start, end = (getattr(bigtable_proxy, name) for name in FAULTS[fault])
    budget_s, attempt_s = 3.0, 1.0
    base = wall_clock_ms()
    with _bigtable_at(bigtable_proxy.listen):
        sink = WriteAggregates(*table, write_budget_s=budget_s, attempt_timeout_s=attempt_s)
        sink.setup()
        assert _flush(sink, _rows(10, 1, base)) == []  # the first panes land
        start()
        started = time.monotonic()
        dead = _flush(sink, _rows(10, 2, base))  # the second panes meet the outage
        blocked_s = time.monotonic() - started
        end()
        # the same sink writes at once after the outage: a third pane of the first 4 windows
        assert _flush(sink, _rows(4, 3, base)) == []
        sink.teardown()
        assert [d.reason for d in dead] == [WRITE_FAILED] * 10
        assert blocked_s < budget_s + attempt_s + 30  # bounded (generous slack for a loaded machine)
        assert _counts(table) == {**{H + 60 * i: 1 for i in range(10)}, **{H + 60 * i: 3 for i in range(4)}}
        letters = tmp_path / "dead-letters" / "x.jsonl"
        letters.parent.mkdir()
        letters.write_bytes(b"".join(d.to_json() + b"\n" for d in dead))
        redrive.build_pipeline([f"--dead_letter_glob={tmp_path}/dead-letters/**", "--runner=DirectRunner",
                                f"--bigtable_project={table[0]}", f"--bigtable_instance={table[1]}",
                                f"--bigtable_table={table[2]}"]).run().wait_until_finish()
    # each window holds its newest pane: the third where it was written, else the redriven second
    assert _counts(table) == {**{H + 60 * i: 2 for i in range(10)}, **{H + 60 * i: 3 for i in range(4)}}
