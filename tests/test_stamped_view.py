"""The dedup stage's stamped watermark view when one key's messages arrive out of order.

Each message is stamped with the watermark it arrived at (SPEC.md section 2's
``watermark_at_arrival``). A runner that fans a source out over parallel subtasks can hand
the dedup stage a key's messages in another order (seen on Flink at parallelism 2). One
dedup shard key is driven directly (``tests.test_parallel_state``: in-memory state), its
messages in a generated order: an event is ``too_late`` exactly when it is more than
``allowed_lateness_s`` below its own message's stamp, whatever order they come in.
"""

import orjson
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.event import TOO_LATE, US_PER_S, format_time_us, parse_event_time, parse_payload
from tests.test_parallel_state import KEY, Cell
from transforms.dedup import DedupAndJudgeLateness
from transforms.validate import DEAD_LETTER

T0_US = parse_event_time("2024-05-14T10:00:00Z")
LATENESS_S = 600


def _event(eid: str, time_us: int):
    (ev,), _, _ = parse_payload(
        orjson.dumps({"event_id": eid, "video_id": "V1", "event_type": "view", "event_time": format_time_us(time_us)})
    )
    return ev


# (stamp: s after T0, event time: s relative to the stamp), each event in its own message
messages = st.lists(
    st.tuples(st.integers(0, 3600), st.integers(-1200, 60).filter(lambda d: abs(d + LATENESS_S) > 5)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.randoms(use_true_random=False))
def test_each_message_is_judged_at_its_own_stamp_in_any_order(stamped, rnd):
    fn = DedupAndJudgeLateness(LATENESS_S, stamped_watermark=True)
    fn.setup()
    state = {"ids": Cell(bag=True), "version": Cell(), "view": Cell(), "base": Cell()}
    order = list(enumerate(stamped))
    rnd.shuffle(order)
    refused = set()
    for n, (stamp_s, delta_s) in order:
        stamp_us = T0_US + stamp_s * US_PER_S
        out = fn.process(
            (KEY, (stamp_us, [_event(f"e{n}", stamp_us + delta_s * US_PER_S)])),
            timestamp=Timestamp(micros=stamp_us),
            expiry=Cell(),
            rung=Cell(),
            **state,
        )
        refused |= {n for o in out if getattr(o, "tag", None) == DEAD_LETTER and o.value.reason == TOO_LATE}
    assert refused == {n for n, (_, delta_s) in enumerate(stamped) if delta_s < -LATENESS_S}
