"""Per-process state caches when keys move between workers or a job is restored
(``transforms.state_values``).

The stateful DoFns are driven directly with in-memory state, so each test plays one
worker after another on the same key: a "worker" is a process cache of its own (the
module's ``_IDS``/``_WINDOWS`` swapped), a "restore" puts the state back to a snapshot.
The old scheme (a counter bumped after each write) is run through the same steps to show
the hazard the random tokens of ``transforms.state_values`` close.
"""

import copy

import orjson
import pytest
from apache_beam.utils.timestamp import Timestamp

from schemas.event import US_PER_S, format_time_us, parse_event_time, parse_payload
from schemas.storage import Aggregate, cell_timestamp_us
from transforms import aggregate, dedup, state_values
from transforms.aggregate import FirePanes
from transforms.dedup import DedupAndJudgeLateness

T0_US = parse_event_time("2024-05-14T10:00:00Z")
KEY = (0, 3)


class Cell:
    """A value state, bag state or timer in memory (the runner's view of one key)."""

    def __init__(self, bag=False):
        self.bag, self.v = bag, None

    def read(self):
        return list(self.v or []) if self.bag else self.v

    def write(self, v):
        self.v = v

    def add(self, v):
        self.v = (self.v or []) + [v]

    def clear(self):
        self.v = None

    def set(self, *a, **k):
        pass


def _counter_version(view, version_state):
    """The old ``bump_version``, called where ``new_version`` is: the next integer."""
    view.version += 1
    version_state.write(view.version)


@pytest.fixture(params=["token", "counter"])
def scheme(request, monkeypatch):
    if request.param == "counter":
        monkeypatch.setattr(dedup, "new_version", _counter_version)
        monkeypatch.setattr(aggregate, "new_version", _counter_version)
    return request.param


def _event(eid, offset_s=0):
    (ev,), rejected, _ = parse_payload(
        orjson.dumps(
            {
                "event_id": eid,
                "video_id": "V1",
                "event_type": "view",
                "event_time": format_time_us(T0_US + offset_s * US_PER_S),
            }
        )
    )
    return ev


class DedupKey:
    """One dedup shard key's state, run by whichever worker (process cache) is current."""

    def __init__(self):
        self.fn = DedupAndJudgeLateness(600, stamped_watermark=True)
        self.fn.setup()
        self.state = {"ids": Cell(bag=True), "version": Cell(), "view": Cell(), "base": Cell()}

    def send(self, *events) -> list[str]:
        """The ids accepted from one chunk."""
        out = self.fn.process(
            (KEY, (T0_US, list(events))), timestamp=Timestamp(micros=T0_US), expiry=Cell(), rung=Cell(), **self.state
        )
        return [ev.event_id for o in out for ev in o.value[1]]

    def snapshot(self):
        return copy.deepcopy(self.state)


def test_a_restored_key_served_by_another_worker_is_not_read_from_a_stale_cache(scheme, monkeypatch):
    """Worker A accepts e1 after a checkpoint, then the job fails before the next one. The
    restored job replays on worker B, where the redelivery brings e2 first; then the key
    moves back to A (a rescale). With a counter both attempts wrote version 1, A trusts its
    cache ({e1}, never committed): the committed e2 is counted again and e1, never counted,
    is dropped as a duplicate. With random tokens A rebuilds from state."""
    worker_a, worker_b = {}, {}
    key = DedupKey()
    checkpoint = key.snapshot()
    monkeypatch.setattr(dedup, "_IDS", worker_a)
    assert key.send(_event("e1")) == ["e1"]
    key.state = copy.deepcopy(checkpoint)  # failure: restored, e1's acceptance is lost
    monkeypatch.setattr(dedup, "_IDS", worker_b)
    assert key.send(_event("e2")) == ["e2"]
    monkeypatch.setattr(dedup, "_IDS", worker_a)  # the key moves back
    accepted = key.send(_event("e1"), _event("e2"))
    if scheme == "counter":
        assert accepted == ["e2"]  # the hazard: e2 counted twice, e1 never
    else:
        assert accepted == ["e1"]


def test_a_bundle_that_fails_after_changing_the_view_leaves_no_stale_view(monkeypatch):
    """A downstream failure raised into the dedup's output (the yield) after the view took
    the new ids: the runner discards the bundle's state writes and retries. The old code
    bumped the version after the outputs, so the view held the ids at the committed
    version and the retry dropped the event as a duplicate of itself; the version is now
    drawn before the view changes."""
    monkeypatch.setattr(dedup, "_IDS", {})
    key = DedupKey()
    key.send(_event("e0"))
    committed = key.snapshot()
    out = key.fn.process(
        (KEY, (T0_US, [_event("e1")])), timestamp=Timestamp(micros=T0_US), expiry=Cell(), rung=Cell(), **key.state
    )
    next(out)  # the accepted chunk goes downstream, which fails
    with pytest.raises(RuntimeError):
        out.throw(RuntimeError("downstream failed"))
    key.state = committed  # the runner drops the failed bundle's writes
    accepted = key.send(_event("e1"))
    assert accepted == ["e1"]


def test_version_tokens_are_distinct_and_never_the_unwritten_version():
    tokens = {state_values.version_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert state_values.NO_STATE not in tokens and all(0 < t < 2**63 for t in tokens)


class PaneKey:
    """One pane shard key's state (``FirePanes``), early firing every 30 s."""

    def __init__(self):
        self.fn = FirePanes(600, 30)
        self.state = {
            "bag": Cell(bag=True),
            "panes": Cell(),
            "version": Cell(),
            "first_unfired": Cell(),
            "dropped_hours": Cell(),
        }

    def add(self, minute_s, count, arrival_us):
        partials = {("V1", "view"): Aggregate(count, 0, 0.0, None, None)}
        return list(
            self.fn.process((1, (arrival_us, {minute_s: partials})), window_end=Cell(), early=Cell(), **self.state)
        )

    def early(self):
        return [r for rows in self.fn.on_early(key=1, **self.state) if isinstance(rows, list) for r in rows]

    def snapshot(self):
        return copy.deepcopy(self.state)


def test_a_later_pane_wins_across_workers_and_after_failover(monkeypatch):
    """Cell timestamps come from the window's base in state, so a later pane fired by a
    worker whose clock is 10 s behind, or by a restored job, is never older than an
    earlier pane (``storage.cell_timestamp_us``)."""
    minute_s = T0_US // US_PER_S
    clock = {"ms": T0_US // 1000}
    monkeypatch.setattr(aggregate, "wall_clock_ms", lambda: clock["ms"])
    monkeypatch.setattr(aggregate, "_WINDOWS", {})
    key = PaneKey()
    key.add(minute_s, 2, T0_US)
    first = {r.granularity: r for r in key.early()}
    assert first["minute"].cell_timestamp_us == cell_timestamp_us(T0_US // 1000, 2)
    checkpoint = key.snapshot()
    key.add(minute_s, 3, T0_US + 1)
    failed_attempt = {r.granularity: r for r in key.early()}  # written, then the job fails

    clock["ms"] -= 10_000  # worker B: its clock 10 s behind A's
    monkeypatch.setattr(aggregate, "_WINDOWS", {})
    key.state = checkpoint
    key.add(minute_s, 3, T0_US + 2)  # the redelivered events
    key.add(minute_s, 1, T0_US + 3)
    replayed = {r.granularity: r for r in key.early()}
    for g in ("minute", "hour"):
        assert replayed[g].aggregate.count == 6 and replayed[g].pane_index == failed_attempt[g].pane_index
        assert replayed[g].cell_timestamp_us > failed_attempt[g].cell_timestamp_us > first[g].cell_timestamp_us
