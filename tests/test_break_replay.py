"""Hostile tests of ``viewcounts replay`` sources (viewcounts/commands/replay.py) found by breaking it:
a damaged dead-letter file (a line shaped as a dead letter whose fields are not what the
pipeline writes) is skipped line by line, never stops the replay of the lines around it."""

from __future__ import annotations

import os
import tempfile

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from viewcounts.commands.replay import DEAD_LETTER_KEYS, read_source

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=5,
)
# base64-ish text (bad padding, stray characters) besides any JSON value
_b64ish = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=!-_ ", max_size=12)
GOOD = {"event_id": "good", "video_id": "V", "event_type": "view", "event_time": "2024-05-14T10:00:00Z"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    letter=st.fixed_dictionaries({k: _json for k in DEAD_LETTER_KEYS - {"payload_base64"}}),
    payload=st.one_of(_b64ish, _json),
    big=st.booleans(),
)
def test_a_damaged_dead_letter_line_is_skipped_and_its_neighbours_replayed(letter, payload, big):
    if big:  # a number beyond the float range: the project's JSON reads it, orjson does not
        letter = {**letter, "processing_time_us": "__BIG__"}
    line = orjson.dumps({**letter, "payload_base64": payload}).replace(b'"__BIG__"', b"1e400")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dead-letters.jsonl")
        with open(path, "wb") as f:
            f.write(orjson.dumps(GOOD) + b"\n" + line + b"\n" + orjson.dumps(GOOD) + b"\n")
        events = read_source([path], None)
    assert events[0] == GOOD and events[-1] == GOOD
