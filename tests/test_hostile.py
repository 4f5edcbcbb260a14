"""Hostile input harness (docs/contract.md, "Input events": "No input, whatever its bytes or
attributes, raises out of the job's code, stalls it or makes it retry for ever: every event
ends counted, dropped as a duplicate, or as a dead letter").

Inputs: arbitrary bytes, arbitrary JSON documents, events with mutated fields and batches
mixing good and bad items (hypothesis), plus a corpus of nasty payloads: nesting at
511/512/513/1000/100000 levels, numbers at and beyond every bound, every Unicode decimal
digit and space character in ``event_time`` and in ids, lone surrogates, invalid UTF-8 and
overlong encodings, byte-order marks, NUL bytes, very long strings, 100k-event batches and
10 MiB payloads.

Each is judged against an independent reference (``oracle``: the standard library's JSON
parser and the "Input events" rules written out here, not the product's parser) and driven
through:
* ``parse_payload`` and ``ValidateEvents`` (every input accounted for, nothing raised,
  details ASCII and bounded, every event's ``raw`` replayable as the same event);
* the real pipeline: ``viewcounts.commands.scenario.run_case`` (``CountEvents`` on the local runner
  with a ``TestStream``, the production Bigtable sink on the emulator, dead-letter and
  archive files), then ``get_stats`` on what was stored: ``events_in == accepted +
  duplicates + dead letters``, dead letters per reason as the reference says, every stored
  cell decodes, stored aggregates and query answers equal a plain fold of the reference's
  accepted events;
* ``storage.encode_cell``/``decode_cell``: sums of any number of events at +/-1e15 stay
  finite and round-trip; any stored bytes decode or raise ``CellError``.

Sizes: ``HOSTILE_EXAMPLES`` (environment) sets hypothesis's ``max_examples`` for the fast
properties (default 150: the file runs in about a minute on 2 cores) and, divided by
``PIPELINE_DIVISOR``, the number of generated pipeline runs (at least 3); ``large`` means
3000. Without the variable, runs are derandomized (the same inputs every time).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import random
import sys
import unicodedata
from collections import Counter, defaultdict
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas import storage
from schemas.archive import DeadLetter
from schemas.event import (
    BAD_FIELD,
    BAD_TIMESTAMP,
    BAD_VALUE,
    DECODE_ERROR,
    FUTURE_TIMESTAMP,
    INPUT_REASONS,
    JSON_ERROR,
    MAX_BATCH_ITEMS,
    MAX_DETAIL_CHARS,
    MAX_NESTING,
    MAX_PAYLOAD_BYTES,
    MIN_VALID_EVENT,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    TOO_LARGE,
    TOO_LATE,
    TOO_OLD,
    Event,
    format_time_us,
    parse_event_time,
    parse_payload,
)
from schemas.storage import Aggregate, CellError, decode_cell, encode_cell, merge

pytestmark = [pytest.mark.hostile]

_ENV = os.environ.get("HOSTILE_EXAMPLES")
EXAMPLES = 3000 if _ENV == "large" else int(_ENV) if _ENV else 150
PIPELINE_DIVISOR = 20
PIPELINE_EXAMPLES = max(3, EXAMPLES // PIPELINE_DIVISOR)
# Health checks stay on but for speed: one that finds inputs routinely too large for
# hypothesis would otherwise let a test pass on few or no examples.
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FAST = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=_ENV is None, database=None, suppress_health_check=_QUIET
)

# ---------------------------------------------------------------------------------------
# The reference: docs/contract.md, "Input events", written out independently of schemas/event.py.
# ---------------------------------------------------------------------------------------
US = 1_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
FIRST_US = (dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc) - EPOCH) // dt.timedelta(microseconds=1)
END_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc) - EPOCH) // dt.timedelta(
    microseconds=1
) + 1
ASCII_DIGITS = "0123456789"
EVENT_TYPE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
LIMITS = (("event_id", 128), ("video_id", 256), ("event_type", 64))


class Huge:
    """A JSON number literal beyond the float range, as the reference parser keeps it."""

    def __init__(self, text: str) -> None:
        self.text = text


class RefEvent(NamedTuple):
    event_id: str
    video_id: str
    event_type: str
    time_us: int
    value: float | None


def ref_time_us(v: Any) -> int | None:
    """``event_time`` by position (no regular expression): epoch µs, or None when refused."""
    if type(v) is int:
        return v * 1000 if FIRST_US <= v * 1000 < END_US else None
    if type(v) is not str or not v.isascii() or len(v) < 20:
        return None
    date, sep, clock, rest = v[:10], v[10], v[11:19], v[19:]
    if sep not in "Tt" or date[4] != "-" or date[7] != "-" or clock[2] != ":" or clock[5] != ":":
        return None
    fields = (date[:4], date[5:7], date[8:10], clock[:2], clock[3:5], clock[6:8])
    if not all(c in ASCII_DIGITS for f in fields for c in f):
        return None
    fraction = ""
    if rest[:1] == ".":
        k = 1
        while k < len(rest) and rest[k] in ASCII_DIGITS:
            k += 1
        fraction, rest = rest[1:k], rest[k:]
        if not 1 <= len(fraction) <= 9:
            return None
    if rest in ("Z", "z"):
        offset_min = 0
    elif (
        len(rest) == 6 and rest[0] in "+-" and rest[3] == ":" and all(c in ASCII_DIGITS for c in rest[1:3] + rest[4:6])
    ):
        hh, mm = int(rest[1:3]), int(rest[4:6])
        if hh > 23 or mm > 59:
            return None
        offset_min = (hh * 60 + mm) * (1 if rest[0] == "+" else -1)
    else:
        return None
    try:
        local = dt.datetime(*(int(f) for f in fields), tzinfo=dt.timezone(dt.timedelta(minutes=offset_min)))
    except ValueError:
        return None
    us = (local - EPOCH) // dt.timedelta(microseconds=1) + int((fraction + "000000")[:6])
    return us if FIRST_US <= us < END_US else None


def ref_judge(obj: Any) -> RefEvent | str:
    """One decoded item: a ``RefEvent`` or the contract's reason code, in the contract's order."""
    if type(obj) is not dict:
        return NOT_AN_OBJECT
    for name in ("event_id", "video_id", "event_type", "event_time"):
        if obj.get(name) is None:
            return MISSING_FIELD
    for name, limit in LIMITS:
        v = obj[name]
        if type(v) is not str:
            return BAD_FIELD
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            return BAD_FIELD
        if not 1 <= n <= limit:
            return BAD_FIELD
    if not set(obj["event_type"]) <= EVENT_TYPE_CHARS:
        return BAD_FIELD
    t = ref_time_us(obj["event_time"])
    if t is None:
        return BAD_TIMESTAMP
    v = obj.get("value")
    if v is not None:
        if type(v) is int and abs(v) <= 10**15:
            v = float(v)
        elif not (type(v) is float and math.isfinite(v) and abs(v) <= 1e15):
            return BAD_VALUE
    return RefEvent(obj["event_id"], obj["video_id"], obj["event_type"], t, v)


def nesting(doc: Any) -> int:
    depth, level = 0, [doc]
    while True:
        level = [c for c in level if isinstance(c, (dict, list))]
        if not level:
            return depth
        depth += 1
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)]


def _no_constant(name):
    raise ValueError(name)


def _ref_int(text: str):
    return int(text) if len(text) < 4000 else Huge(text)


def _ref_float(text: str):
    f = float(text)
    return f if math.isfinite(f) else Huge(text)


def oracle(payload: bytes) -> tuple[list, int]:
    """``(outcomes, events_in)`` of one payload: the standard library's JSON parser and
    ``ref_judge``. Outcomes are ``RefEvent``s or reason codes, in item order."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [TOO_LARGE], 1
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return [DECODE_ERROR], 1
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_int=_ref_int, parse_float=_ref_float)
    except (ValueError, RecursionError):
        return [JSON_ERROR], 1
    if nesting(doc) > MAX_NESTING:
        return [JSON_ERROR], 1
    if type(doc) is list:
        if len(doc) > MAX_BATCH_ITEMS:
            return [TOO_LARGE], 1
        return [ref_judge(item) for item in doc], len(doc)
    return [ref_judge(doc)], 1


# ---------------------------------------------------------------------------------------
# Writing test documents as JSON (with literals Python's json cannot write).
# ---------------------------------------------------------------------------------------
class Lit:
    """A JSON number written verbatim (``1e400``, a 5,000-digit integer)."""

    def __init__(self, text: str) -> None:
        self.text = text


def encode(obj: Any, ascii_only: bool = True, spaced: bool = False) -> bytes:
    """JSON bytes of a test document; ``ascii_only=False`` writes characters as UTF-8 (a
    lone surrogate then becomes invalid UTF-8: a ``decode_error``)."""
    comma, colon = (", ", ": ") if spaced else (",", ":")

    def enc(o) -> str:
        if isinstance(o, Lit):
            return o.text
        if o is None:
            return "null"
        if o is True:
            return "true"
        if o is False:
            return "false"
        if type(o) is int:
            return str(o)
        if type(o) is float:
            return repr(o)
        if type(o) is str:
            return json.dumps(o, ensure_ascii=ascii_only)
        if type(o) is list:
            return "[" + comma.join(enc(x) for x in o) + "]"
        return "{" + comma.join(json.dumps(k, ensure_ascii=ascii_only) + colon + enc(v) for k, v in o.items()) + "}"

    return enc(obj).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------
# Nasty characters and values.
# ---------------------------------------------------------------------------------------
NON_ASCII_DIGITS = [
    chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Nd" and chr(c) not in ASCII_DIGITS
]
OTHER_NUMERIC = [
    chr(c) for c in range(sys.maxunicode + 1) if chr(c).isnumeric() and unicodedata.category(chr(c)) != "Nd"
][:400]
SPACES = sorted(
    {
        chr(c)
        for c in range(sys.maxunicode + 1)
        if chr(c).isspace() or unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")
    }
    | {"\u200b", "\u2060", "\ufeff", "\u180e"}
)
SPECIAL = [
    "\x00",
    "\x7f",
    "\ufeff",
    "\u2028",
    "\u2029",
    "#",
    "%",
    "%23",
    "%25",
    "\\",
    '"',
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\U0001f3ae",
    "e\u0301",
    "\u202e",
    "\u00a0",
]
NASTY_CHAR = st.one_of(
    st.characters(exclude_categories=[]),
    st.sampled_from(NON_ASCII_DIGITS),
    st.sampled_from(SPACES),
    st.sampled_from([c for c in SPECIAL if len(c) == 1]),
    st.sampled_from(OTHER_NUMERIC),
)
NASTY_TEXT = st.lists(st.one_of(NASTY_CHAR, st.sampled_from(SPECIAL)), max_size=10).map("".join)
# strange but valid Unicode (no lone surrogates): ids that must be kept exactly
ODD_TEXT = st.lists(
    st.one_of(
        st.characters(exclude_categories=["Cs"]),
        st.sampled_from(NON_ASCII_DIGITS),
        st.sampled_from(SPACES),
        st.sampled_from([c for c in SPECIAL if not any(0xD800 <= ord(x) <= 0xDFFF for x in c)]),
    ),
    min_size=1,
    max_size=10,
).map("".join)
BIG_LITERALS = [
    Lit("1e400"),
    Lit("-1e400"),
    Lit("1E+309"),
    Lit("1" + "0" * 5000),
    Lit("-" + "9" * 4400),
    Lit("1" + "0" * 400 + ".5"),
    Lit("0." + "0" * 400 + "1"),
    Lit("1e-400"),
    Lit("-0"),
    Lit("-0.0"),
    Lit("5e-324"),
    Lit("2.2250738585072014e-308"),
    Lit("18446744073709551615"),
    Lit("18446744073709551616"),
    Lit("-9223372036854775809"),
    Lit("1.7976931348623157e308"),
]
VALUE_EDGES = [
    10**15,
    -(10**15),
    10**15 + 1,
    -(10**15) - 1,
    1e15,
    -1e15,
    1.0000000000000002e15,
    2**53,
    2**63,
    2**64,
    -(2**63) - 1,
    0,
    -0.0,
    5e-324,
    -5e-324,
    1e-310,
    0.1,
    1.7e308,
    -1.7e308,
]
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    NASTY_TEXT,
    st.sampled_from(BIG_LITERALS),
)
JSON_DOCS = st.recursive(
    JSON_SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(NASTY_TEXT, kids, max_size=5)),
    max_leaves=20,
)

START = "2024-05-14T10:00:00Z"
START_US = parse_event_time(START)
PROC_US = START_US + 60 * US  # processing time of the pipeline runs' first messages (they advance 60 s first)
# The pipeline runs' policy: an allowed lateness longer than the age limit, so every event
# old enough to be too_late is too_old first, whatever the product's view of the watermark.
LATENESS_S, SKEW_S, AGE_S = 30 * 86400, 300, 7 * 86400
QUERY_START, QUERY_END = "2024-05-06T00:00:00Z", "2024-05-16T00:00:00Z"


def _rfc3339(us: int, draw) -> str:
    """An RFC 3339 form of an instant: any zone offset, 0..9 fraction digits, T/t, Z/z."""
    offset_min = draw(st.sampled_from([0, 0, 60, -300, 330, 345, -570, 23 * 60 + 59, -(23 * 60 + 59)]))
    try:
        local = EPOCH + dt.timedelta(microseconds=us) + dt.timedelta(minutes=offset_min)
    except OverflowError:  # the local date would leave years 1-9999
        offset_min = 0
        local = EPOCH + dt.timedelta(microseconds=us)
    text = local.strftime("%Y-%m-%d") if local.year >= 1000 else f"{local.year:04d}" + local.strftime("-%m-%d")
    text += draw(st.sampled_from("Tt")) + local.strftime("%H:%M:%S")
    digits = draw(st.integers(0, 9))
    micro = local.microsecond
    if micro and digits < 6:
        digits = 6
    if digits:
        text += "." + (f"{micro:06d}" + "".join(draw(st.sampled_from(ASCII_DIGITS)) for _ in range(3)))[:digits]
    if offset_min == 0:
        return text + draw(st.sampled_from(["Z", "z", "+00:00", "-00:00"]))
    sign = "+" if offset_min > 0 else "-"
    return text + f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


@st.composite
def event_times(draw, on_time_only: bool = False):
    """``event_time`` values: on time in the pipeline runs (mostly near the start, some up to
    the age limit: the runs' allowed lateness is longer than the age limit, so no valid time
    depends on the product's view of the watermark), future, too old, or refused outright."""
    kind = (
        "on_time"
        if on_time_only
        else draw(st.sampled_from(["on_time"] * 6 + ["future", "too_old", "int_ms", "mutated", "odd", "edge_int"]))
    )
    if kind == "on_time":
        near = st.integers(START_US - 580 * US, START_US + 340 * US)
        return _rfc3339(draw(st.one_of(near, near, st.integers(START_US - AGE_S * US, START_US))), draw)
    if kind == "future":
        return _rfc3339(draw(st.integers(START_US + 86400 * US, END_US - 1)), draw)
    if kind == "too_old":
        return _rfc3339(draw(st.integers(FIRST_US, START_US - 8 * 86400 * US)), draw)
    if kind == "int_ms":
        return draw(
            st.one_of(
                st.integers((START_US - AGE_S * US) // 1000, (START_US + 340 * US) // 1000),
                st.integers(FIRST_US // 1000, (START_US - 8 * 86400 * US) // 1000),
            )
        )
    if kind == "edge_int":
        return draw(
            st.sampled_from(
                [
                    FIRST_US // 1000,
                    FIRST_US // 1000 - 1,
                    END_US // 1000,
                    END_US // 1000 - 1,
                    2**63,
                    -(2**63),
                    2**64,
                    0,
                    -1,
                    True,
                    False,
                ]
            )
        )
    if kind == "mutated":  # one character swapped for a nasty one: never a valid time
        text = _rfc3339(START_US + draw(st.integers(-580 * US, 340 * US)), draw)
        i = draw(st.integers(0, len(text) - 1))
        c = draw(
            st.one_of(
                st.sampled_from(NON_ASCII_DIGITS),
                st.sampled_from(SPACES),
                st.sampled_from([c for c in SPECIAL if c not in ASCII_DIGITS]),
                st.sampled_from(OTHER_NUMERIC),
            )
        )
        how = draw(st.sampled_from(["replace", "insert", "append", "prepend"]))
        if how == "replace":
            return text[:i] + c + text[i + 1 :]
        if how == "insert":
            return text[:i] + c + text[i:]
        return text + c if how == "append" else c + text
    return draw(
        st.one_of(
            JSON_SCALARS,
            st.sampled_from(
                [
                    "2024-05-14 10:00:30Z",
                    "2024-05-14T10:00:30",
                    "2024-05-14T10:00:60Z",
                    "2024-05-14T10:00:30+24:00",
                    "2024-05-14T10:00:30.1234567890Z",
                    "NaN",
                    "",
                    "2024-05-14T10:00:30Z\n",
                    "0000-01-01T00:00:00Z",
                ]
            ),
            st.lists(st.integers(), max_size=2),
        )
    )


@st.composite
def events(draw, serial: list, on_time_only: bool = False):
    """An event object (a dict, maybe with ``Lit`` numbers), often valid, often with one or
    more fields mutated. ``serial``: a one-item list counting the events made, so every id
    is unique in a run (copies are made on purpose, elsewhere)."""
    serial[0] += 1
    prefix = draw(st.one_of(st.just("e"), st.just("e"), ODD_TEXT, ODD_TEXT, NASTY_TEXT))
    ev = {
        "event_id": f"{prefix}~{serial[0]}",
        "video_id": draw(
            st.one_of(
                st.sampled_from(
                    ["V1", "V2", "V1#x", "V1%23x", "é", "e\u0301", " V1", "V1 ", "\x00", "\U0001f3ae", "٢", "V" * 256]
                ),
                st.sampled_from(["V1", "V2"]),
                ODD_TEXT,
                ODD_TEXT,
                NASTY_TEXT,
            )
        ),
        "event_type": draw(st.sampled_from(["view", "watch", "like", "a_1", "x" * 64])),
        "event_time": draw(event_times(on_time_only)),
    }
    if draw(st.booleans()):
        ev["value"] = draw(
            st.one_of(
                st.floats(-1e15, 1e15, allow_nan=False),
                st.integers(-(10**15), 10**15),
                st.sampled_from(VALUE_EDGES),
                st.none(),
            )
        )
    mutations = draw(st.sampled_from([0, 0, 0, 1, 1, 2])) if not on_time_only else 0
    for _ in range(mutations):
        field = draw(st.sampled_from(["event_id", "video_id", "event_type", "event_time", "value", "extra", "delete"]))
        if field == "delete":
            ev.pop(draw(st.sampled_from(["event_id", "video_id", "event_type", "event_time", "value"])), None)
        elif field == "extra":
            ev[draw(NASTY_TEXT)] = draw(JSON_DOCS)
        elif field == "value":
            ev["value"] = draw(
                st.one_of(st.sampled_from(VALUE_EDGES), st.sampled_from(BIG_LITERALS), JSON_SCALARS, st.floats())
            )
        elif field == "event_time":
            ev["event_time"] = draw(event_times())
        else:
            ev[field] = draw(
                st.one_of(
                    NASTY_TEXT,
                    JSON_SCALARS,
                    st.text(NASTY_CHAR, min_size=60, max_size=300),
                    st.just("x" * 129),
                    st.just("é" * 64),
                    st.just("é" * 65),
                )
            )
    if draw(st.integers(0, 9)) == 0:
        ev["extra"] = draw(JSON_DOCS)
    return {k: (Lit("1e400") if type(v) is float and not math.isfinite(v) else v) for k, v in ev.items()}


@st.composite
def payloads(draw, serial: list, pool: list):
    """One message: an event, a batch of events (good and bad mixed, with copies of earlier
    events), an arbitrary JSON document, arbitrary bytes, or a valid payload with bytes
    mutated. Valid events go to ``pool`` for later copies."""
    kind = draw(st.sampled_from(["event", "batch", "batch", "copies", "doc", "bytes", "mutated_bytes"]))
    if kind in ("event", "batch", "copies"):
        n = 1 if kind == "event" else draw(st.integers(0, 12))
        items = []
        for _ in range(n):
            if kind == "copies" and pool and draw(st.booleans()):
                items.append(draw(st.sampled_from(pool)))
            elif draw(st.integers(0, 7)) == 0:
                items.append(draw(JSON_SCALARS))
            else:
                e = draw(events(serial))
                items.append(e)
                if type(ref_judge(_plain(e))) is RefEvent:
                    pool.append(e)
        doc = items[0] if kind == "event" and items else items
        return encode(doc, ascii_only=draw(st.booleans()), spaced=draw(st.booleans()))
    if kind == "doc":
        return encode(draw(JSON_DOCS), ascii_only=draw(st.booleans()))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    base = bytearray(encode(draw(events(serial, on_time_only=True))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(base)))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or i == len(base):
            base[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "flip":
            base[i] ^= 1 << draw(st.integers(0, 7))
        else:
            del base[i]
    return bytes(base)


def _plain(obj):
    """A test document as the reference parser reads its JSON (``Lit`` -> number or Huge)."""
    if isinstance(obj, Lit):
        return json.loads(obj.text, parse_int=_ref_int, parse_float=_ref_float)
    if type(obj) is dict:
        return {k: _plain(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# Invariants of one payload through validation.
# ---------------------------------------------------------------------------------------
def check_payload(payload: bytes) -> tuple[list[Event], list]:
    """Run ``parse_payload`` and check it against the oracle and the invariants; returns
    ``(events, rejections)``."""
    events, rejections, n_in = parse_payload(payload)
    want, want_n = oracle(payload)
    assert n_in == want_n == len(events) + len(rejections)
    assert sorted(r.reason for r in rejections) == sorted(o for o in want if isinstance(o, str))
    assert [RefEvent(*e[:5]) for e in events] == [o for o in want if isinstance(o, RefEvent)]
    for r in rejections:
        assert r.reason in INPUT_REASONS
        assert isinstance(r.detail, str) and r.detail.isascii() and len(r.detail) <= MAX_DETAIL_CHARS, r.detail
        assert isinstance(r.payload, bytes)
        line = DeadLetter(r.payload, r.reason, r.detail, PROC_US).to_json()
        assert DeadLetter.from_json(line) == DeadLetter(r.payload, r.reason, r.detail, PROC_US)
    if n_in == 1 and not events and rejections[0].reason in (TOO_LARGE, DECODE_ERROR, JSON_ERROR):
        assert rejections[0].payload == payload
    for e in events:
        assert b"\n" not in e.raw and b"\r" not in e.raw
        e.raw.decode("utf-8")  # the archive's lines are UTF-8
        again, refused, one = parse_payload(e.raw)  # the raw archive is replayable as the same event
        assert one == 1 and not refused and again[0][:5] == e[:5] and again[0].raw == e.raw
        assert e.value is None or (type(e.value) is float and abs(e.value) <= 1e15)
    return events, rejections


# ---------------------------------------------------------------------------------------
# Properties of validation alone (many examples, fast).
# ---------------------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(payload):
    check_payload(payload)


@FAST
@given(JSON_DOCS, st.booleans(), st.booleans())
def test_arbitrary_json_documents(doc, ascii_only, spaced):
    check_payload(encode(doc, ascii_only, spaced))


@FAST
@given(st.data())
def test_events_with_mutated_fields_alone_and_in_mixed_batches(data):
    serial, pool = [0], []
    for _ in range(5):
        check_payload(data.draw(payloads(serial, pool)))


@FAST
@given(events([0]), st.sampled_from(["\t", "\n", "\r", "\r\n", " "]))
def test_whitespace_between_tokens_keeps_one_line_raw(ev, ws):
    payload = encode(ev, spaced=True).replace(b", ", b"," + ws.encode()).replace(b": ", b":" + ws.encode())
    check_payload(ws.encode() + payload + ws.encode())


@FAST
@given(st.integers() | st.floats() | st.none() | st.text() | st.sampled_from([2**70, -(2**70), 10**5000]))
def test_format_time_us_is_total(t):
    text = format_time_us(t)
    assert isinstance(text, str) and text.isascii() and len(text) < 200


def test_too_late_detail_with_a_watermark_view_at_the_ends_of_time():
    """The ``too_late`` detail formats the watermark view, which can be anything the runner
    says (Beam's end of time after the final watermark)."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

    from transforms.dedup import DedupAndJudgeLateness

    class State:
        def __init__(self):
            self.v = None

        def read(self):
            return self.v

        def write(self, v):
            self.v = v

        def add(self, v):
            self.v = (self.v or []) + [v]

        def clear(self):
            self.v = None

        def set(self, *a, **k):
            pass

    ev = parse_payload(MIN_VALID_EVENT)[0][0]
    for stamp in (MAX_TIMESTAMP, GlobalWindow().max_timestamp(), Timestamp(micros=END_US + 10**12)):
        fn = DedupAndJudgeLateness(600, stamped_watermark=True)
        fn.setup()
        out = list(
            fn.process(
                ((0, 0), (PROC_US, [ev])),
                timestamp=stamp,
                ids=State(),
                version=State(),
                view=State(),
                base=State(),
                expiry=State(),
                rung=State(),
            )
        )
        (dead,) = [o.value for o in out]
        assert dead.reason == TOO_LATE and dead.detail.isascii() and "outside years 1-9999" in dead.detail


def test_validate_events_never_raises_and_accounts_for_every_input():
    from transforms.validate import ARCHIVE, DEAD_LETTER, AcceptancePolicy, ValidateEvents

    fn = ValidateEvents(AcceptancePolicy(dedup_shards=4))
    fn.setup()
    rng = random.Random(7)
    for payload in [p for _, p in CORPUS if len(p) < 2_000_000] + [
        bytes(rng.getrandbits(8) for _ in range(n)) for n in range(0, 400, 7)
    ]:
        want, n_in = oracle(payload)
        dead = valid = 0
        for out in fn.process((payload, PROC_US)):
            if getattr(out, "tag", None) == DEAD_LETTER:
                dead += 1
            elif getattr(out, "tag", None) == ARCHIVE:
                continue
            else:
                valid += len(out[1][1])
        assert dead + valid == n_in


# ---------------------------------------------------------------------------------------
# The corpus: nasty payloads with what the contract says of each.
# ---------------------------------------------------------------------------------------
GOOD = {"event_id": "g", "video_id": "V1", "event_type": "view", "event_time": "2024-05-14T10:00:30Z"}


def good(**kw) -> dict:
    return {**GOOD, **kw}


def deep(n: int, inner: bytes = b"", open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * n + inner + close * n


def deep_object(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def with_extra(extra: bytes, **kw) -> bytes:
    return encode(good(**kw))[:-1] + b',"x":' + extra + b"}"


def _corpus() -> list[tuple[str, bytes]]:
    c: list[tuple[str, bytes]] = []
    for n in (511, 512, 513, 1000, 100_000):
        c += [
            (f"array nested {n}", deep(n)),
            (f"object nested {n}", deep_object(n)),
            (f"event with a field nested {n - 1}", with_extra(deep(n - 1), event_id=f"d{n}")),
            (f"batch item with a field nested {n - 2}", b"[" + with_extra(deep(n - 2), event_id=f"b{n}") + b"]"),
            (f"lone surrogate and a field nested {n - 1}", with_extra(deep(n - 1), event_id=f"s{n}", note="\ud800")),
            (
                f"lone surrogate in a batch, item nested {n - 2}",
                b"[" + with_extra(deep(n - 2), event_id=f"t{n}", note="\udfff") + b"]",
            ),
            (f"nested {n} then invalid UTF-8", deep(n)[:n] + b"\xff" + deep(n)[n:]),
            (f"nested {n} objects in a batch", b"[" + deep(n - 1, b"1", b'{"k":', b"}") + b"]"),
            (f"brackets inside strings {n}", encode(good(event_id=f"q{n}", note="[{" * n))),
        ]
    c.append(("unbalanced 1000 opens", b"[" * 1000))
    for lit in BIG_LITERALS:
        c += [
            (f"value {lit.text[:30]}", encode(good(event_id="v" + lit.text[:20], value=lit))),
            (f"event_time {lit.text[:30]}", encode(good(event_id="t" + lit.text[:20], event_time=lit))),
            (f"extra {lit.text[:30]} in a batch", encode([good(event_id="x" + lit.text[:20], x=lit), 17])),
        ]
    for v in VALUE_EDGES:
        c.append((f"value {v!r}", encode(good(event_id=f"edge{v!r}", value=v))))
    for name, b in [
        ("UTF-8 BOM", b"\xef\xbb\xbf"),
        ("UTF-16 LE BOM", b"\xff\xfe"),
        ("UTF-16 BE BOM", b"\xfe\xff"),
        ("UTF-32 LE BOM", b"\xff\xfe\x00\x00"),
    ]:
        c.append((name, b + encode(good(event_id=name))))
    c.append(("UTF-16 LE payload", b"\xff\xfe" + json.dumps(good(event_id="u16")).encode("utf-16-le")))
    c.append(("BOM inside a string", encode(good(event_id="bom\ufeff"), ascii_only=False)))
    for name, b in [
        ("overlong slash", b"\xc0\xaf"),
        ("overlong NUL", b"\xc0\x80"),
        ("overlong 3-byte", b"\xe0\x80\xaf"),
        ("overlong 4-byte", b"\xf0\x80\x80\xaf"),
        ("encoded surrogate", b"\xed\xa0\x80"),
        ("encoded surrogate pair", b"\xed\xa0\xbd\xed\xb2\xa9"),
        ("beyond U+10FFFF", b"\xf4\x90\x80\x80"),
        ("5-byte form", b"\xf8\x88\x80\x80\x80"),
        ("lone continuation", b"\x80"),
        ("truncated sequence", b"\xe2\x82"),
        ("0xFF", b"\xff"),
        ("0xFE", b"\xfe"),
    ]:
        c.append((f"invalid UTF-8: {name}", encode(good(event_id="bad"))[:-2] + b'","x":"' + b + b'"}'))
        c.append((f"invalid UTF-8 alone: {name}", b))
    c += [
        ("raw NUL in a string", encode(good())[:-2] + b'\x00"}'),
        ("NUL outside strings", b"\x00" + encode(good())),
        ("escaped NUL in ids", encode(good(event_id="\x00", video_id="a\x00b"))),
        ("lone high surrogate id", encode(good(event_id="\ud800"))),
        ("lone low surrogate video", encode(good(video_id="\udc00"))),
        ("reversed surrogate pair", encode(good(event_id="r", video_id="\udc00\ud800"))),
        (
            "valid surrogate pair escape",
            b'{"event_id":"p","video_id":"\\ud83c\\udfae","event_type":"view","event_time":"2024-05-14T10:00:30Z"}',
        ),
        ("lone surrogate in an extra field", encode(good(event_id="ls", note="\ud800"))),
        ("lone surrogate as a key", encode({**good(event_id="lk"), "\udfff": 1})),
        ("lone surrogate written raw (CESU)", encode(good(event_id="\ud800"), ascii_only=False)),
        (
            "duplicate keys, last wins",
            b'{"event_id":"dk","event_id":"dk2","video_id":"V1","event_type":"view",'
            b'"event_time":"bad","event_time":"2024-05-14T10:00:30Z"}',
        ),
        ("NaN", with_extra(b"NaN")),
        ("Infinity", with_extra(b"-Infinity")),
        ("trailing garbage", encode(good()) + b"x"),
        ("two documents", encode(good()) + encode(good())),
        ("empty", b""),
        ("spaces", b" \t\r\n"),
        ("empty batch", b"[]"),
        ("batch of nulls", b"[null,null]"),
        ("null", b"null"),
        ("string", b'"x"'),
        ("event_id of 10,000 characters", encode(good(event_id="x" * 10_000))),
        ("video_id of 257 bytes", encode(good(video_id="é" * 128 + "x"))),
        ("video_id of 256 bytes", encode(good(event_id="v256", video_id="é" * 128))),
        ("event_id of 128 bytes", encode(good(event_id="\U0001f3ae" * 32))),
        ("event_type of 65 bytes", encode(good(event_type="x" * 65))),
        ("event_type with a Unicode letter", encode(good(event_type="vıew"))),
        ("extra string of 5 MB", encode(good(event_id="big", note="x" * 5_000_000))),
        ("extra string of 2 MB of emoji", encode(good(event_id="emoji", note="\U0001f3ae" * 500_000), False)),
        ("10,000 extra fields", encode({**good(event_id="wide"), **{f"k{i}": i for i in range(10_000)}})),
    ]
    for i, d in enumerate(NON_ASCII_DIGITS):
        c.append(
            (
                f"event_time digit U+{ord(d):04X}",
                encode(good(event_id=f"nd{i}", event_time="2024-05-14T10:00:3" + d + "Z"), ascii_only=i % 2 == 0),
            )
        )
    for i, s in enumerate(SPACES):
        c.append(
            (
                f"event_time with space U+{ord(s):04X}",
                encode(
                    good(
                        event_id=f"sp{i}",
                        event_time=s + GOOD["event_time"] if i % 2 else GOOD["event_time"].replace("T", s),
                    )
                ),
            )
        )
        c.append(
            (
                f"video_id with space U+{ord(s):04X}",
                encode(good(event_id=f"vs{i}", video_id=f"V{s}1"), ascii_only=i % 2 == 0),
            )
        )
    c.append(
        (
            "video_ids of every non-ASCII digit",
            encode([good(event_id=f"vd{i}", video_id=d) for i, d in enumerate(NON_ASCII_DIGITS)]),
        )
    )
    return c


CORPUS = _corpus()
BIG_CORPUS = [
    ("100k-event batch", encode([good(event_id=f"h{i}", video_id=f"V{i % 50}", value=i % 7) for i in range(100_000)])),
    (
        f"batch of MAX_BATCH_ITEMS ({MAX_BATCH_ITEMS}) shortest events",
        b"[" + b",".join([MIN_VALID_EVENT] * MAX_BATCH_ITEMS) + b"]",
    ),
    (
        "batch of MAX_BATCH_ITEMS + 1 shortest events",
        b"[" + b",".join([MIN_VALID_EVENT] * (MAX_BATCH_ITEMS + 1)) + b"]",
    ),
    ("10 MiB of [{},{},...]", b"[" + b",".join([b"{}"] * ((MAX_PAYLOAD_BYTES - 2) // 3)) + b"]"),
    ("10 MiB + 1 byte", b" " * (MAX_PAYLOAD_BYTES - len(encode(good()))) + encode(good()) + b" "),
    (
        "10 MiB exactly, one event",
        b" " * (MAX_PAYLOAD_BYTES - len(encode(good(event_id="ten")))) + encode(good(event_id="ten")),
    ),
    ("10 MiB of nested arrays", b"[" * (MAX_PAYLOAD_BYTES // 2) + b"]" * (MAX_PAYLOAD_BYTES // 2)),
    (
        "10 MiB string with a lone surrogate, nested 600",
        b"[" * 600 + encode("\ud800" + "y" * (MAX_PAYLOAD_BYTES - 1300)) + b"]" * 600,
    ),
]


@pytest.mark.parametrize("name,payload", CORPUS + BIG_CORPUS, ids=[n for n, _ in CORPUS + BIG_CORPUS])
def test_corpus_payload(name, payload):
    check_payload(payload)


def _reasons(payload: bytes) -> list:
    events, rejections, n_in = parse_payload(payload)
    return ["event"] * len(events) + [r.reason for r in rejections]


@pytest.mark.parametrize(
    "n,reason",
    [(511, NOT_AN_OBJECT), (512, NOT_AN_OBJECT), (513, JSON_ERROR), (1000, JSON_ERROR), (100_000, JSON_ERROR)],
)
def test_nesting_limit_is_512_levels_on_every_path(n, reason):
    assert _reasons(deep(n)) == [reason]
    assert _reasons(deep_object(n)) == [MISSING_FIELD if reason == NOT_AN_OBJECT else reason]
    as_field = "event" if reason == NOT_AN_OBJECT else JSON_ERROR  # the field adds one level
    assert _reasons(with_extra(deep(n - 1))) == [as_field]
    assert _reasons(b"[" + with_extra(deep(n - 2)) + b"]") == [as_field]
    assert _reasons(with_extra(deep(n - 1), note="\ud800")) == [as_field]  # the standard library's path
    assert _reasons(b"[" + with_extra(deep(n - 2), note="\ud800") + b"]") == [as_field]


def test_the_bounds_hold_what_they_say():
    assert len(MIN_VALID_EVENT) == 63 and _reasons(MIN_VALID_EVENT) == ["event"]
    fitting = b"[" + b",".join([MIN_VALID_EVENT] * MAX_BATCH_ITEMS) + b"]"
    assert len(fitting) <= MAX_PAYLOAD_BYTES < len(fitting) + len(MIN_VALID_EVENT) + 1
    assert _reasons(fitting) == ["event"] * MAX_BATCH_ITEMS
    assert _reasons(b"[" + b",".join([b"{}"] * (MAX_BATCH_ITEMS + 1)) + b"]") == [TOO_LARGE]
    assert _reasons(b" " * (MAX_PAYLOAD_BYTES + 1)) == [TOO_LARGE]


def test_every_non_ascii_digit_and_space_is_refused_in_event_time_and_kept_in_ids():
    """docs/contract.md, "Input events": ASCII digits only in event_time; ids are compared exactly."""
    assert len(NON_ASCII_DIGITS) > 600 and len(SPACES) > 25
    for c in NON_ASCII_DIGITS + OTHER_NUMERIC:
        for i in range(len(GOOD["event_time"])):
            t = GOOD["event_time"]
            if t[i] in ASCII_DIGITS:
                assert _reasons(encode(good(event_time=t[:i] + c + t[i + 1 :]))) == [BAD_TIMESTAMP], (ascii(c), i)
    for c in SPACES:
        for i in range(len(GOOD["event_time"]) + 1):
            t = GOOD["event_time"]
            assert _reasons(encode(good(event_time=t[:i] + c + t[i:]))) == [BAD_TIMESTAMP], (ascii(c), i)
    ids = [c for c in NON_ASCII_DIGITS + SPACES if not 0xD800 <= ord(c) <= 0xDFFF]
    events, rejections, _ = parse_payload(encode([good(event_id=c, video_id=c) for c in ids], ascii_only=False))
    assert not rejections and [(e.event_id, e.video_id) for e in events] == [(c, c) for c in ids]


def test_value_bound_and_number_forms():
    assert _reasons(encode(good(value=10**15))) == ["event"]
    assert _reasons(encode(good(value=-(10**15)))) == ["event"]
    assert _reasons(encode(good(value=1e15))) == ["event"]
    for bad in (
        10**15 + 1,
        -(10**15) - 1,
        1.0000000000000002e15,
        2**64,
        Lit("1e400"),
        Lit("-1e400"),
        Lit("1" + "0" * 5000),
        Lit("1e16"),
        True,
        "1",
        [1],
        {"v": 1},
    ):
        assert _reasons(encode(good(value=bad))) == [BAD_VALUE], bad
    events, _, _ = parse_payload(
        encode(
            [
                good(event_id=str(i), value=v)
                for i, v in enumerate(
                    [Lit("-0"), Lit("-0.0"), Lit("5e-324"), Lit("1e-400"), Lit("0." + "0" * 400 + "1"), Lit("1E2")]
                )
            ]
        )
    )
    assert [e.value for e in events] == [0.0, -0.0, 5e-324, 0.0, 0.0, 100.0]
    assert all(type(e.value) is float for e in events)


def test_numbers_beyond_the_float_range_are_kept_verbatim_in_raw():
    payload = encode([good(event_id="k", a=Lit("1e400"), b=Lit("-" + "9" * 5000), c="\ud800", d=Lit("1.5"))])
    (ev,), rejections, _ = parse_payload(payload)
    assert not rejections
    assert b'"a":1e400' in ev.raw and b'"b":-' + b"9" * 5000 in ev.raw and b'"c":"\\ud800"' in ev.raw


# ---------------------------------------------------------------------------------------
# Storage: every cell the pipeline can write decodes as itself.
# ---------------------------------------------------------------------------------------
BOUND_VALUES = st.one_of(
    st.sampled_from([1e15, -1e15, 10**15, -(10**15), 0.0, -0.0, 5e-324]), st.floats(-1e15, 1e15, allow_nan=False)
)


@FAST
@given(st.lists(BOUND_VALUES, min_size=1, max_size=400), st.integers(1, 60), st.integers(0, 50))
def test_sums_of_bounded_values_stay_finite_and_round_trip(values, chunk, copies):
    """Values at the bound, folded in chunks (bundles) and merged (panes), any number of
    times over (``copies`` doublings: up to 2**50 events' worth): the sum stays finite, the
    cell decodes as itself, and so does the pane state a rebuild reads (``FirePanes``)."""
    from transforms.aggregate import aggregate_events, decode_partials, encode_partials

    evs = [Event(f"e{i}", "V", "view", 0, float(v), b"") for i, v in enumerate(values)]
    agg = Aggregate(0, 0, 0.0, None, None)
    for i in range(0, len(evs), chunk):
        agg = merge(agg, aggregate_events(evs[i : i + chunk])[("V", "view")])
    for _ in range(copies):
        agg = merge(agg, agg)
    assert math.isfinite(agg.sum) and abs(agg.sum) <= 1e15 * agg.value_count
    exact = math.fsum(float(v) for v in values)
    assert abs(agg.sum / 2**copies - exact) <= len(values) * 2**-52 * math.fsum(abs(float(v)) for v in values) + 1e-300
    assert decode_cell(encode_cell(agg, "t\u00e9", None)) == (agg, "t\u00e9", None)
    assert decode_partials(encode_partials({("V", "view"): agg})) == {("V", "view"): agg}


@pytest.mark.parametrize(
    "agg,title",
    [
        (Aggregate(2, 2, math.inf, 1e308, 1.7e308), None),
        (Aggregate(1, 1, math.nan, 1.0, 1.0), None),
        (Aggregate(1, 1, 1.0, -math.inf, 1.0), None),
        (Aggregate(1, 1, 1.0, None, 1.0), None),
        (Aggregate(1, 0, 0.0, 1.0, 1.0), None),
        (Aggregate(1, 2, 0.0, 1.0, 1.0), None),
        (Aggregate(True, 0, 0.0, None, None), None),
        (Aggregate(1, 1, 2.0, 3.0, 1.0), None),
        (Aggregate(1, 0, 0.0, None, None), "\ud800"),
        (Aggregate(1, 0, 0.0, None, None), 17),
    ],
)
def test_encode_cell_refuses_what_would_not_read_back(agg, title):
    with pytest.raises(CellError):
        encode_cell(agg, title, None)


@FAST
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda d: json.dumps(d).encode(), JSON_DOCS.map(_plain).filter(lambda d: not _has_huge(d))),
        st.builds(
            lambda d: encode(d),
            st.fixed_dictionaries(
                {k: JSON_SCALARS for k in ("count", "value_count", "sum", "min", "max", "title", "channel")}
            ),
        ),
    )
)
def test_any_stored_bytes_decode_or_raise_cell_error(value):
    try:
        agg, title, channel = decode_cell(value)
    except CellError as exc:
        assert str(exc)
        return
    assert storage.cell_problem(agg, title, channel) is None
    assert decode_cell(encode_cell(agg, title, channel)) == (agg, title, channel)


def _has_huge(d) -> bool:
    return (
        isinstance(d, Huge)
        or (isinstance(d, dict) and any(map(_has_huge, d.values())))
        or (isinstance(d, list) and any(map(_has_huge, d)))
    )


def test_a_null_sum_stored_before_the_value_bound_is_a_cell_error():
    """The old failure: two events at 1.7e308 made the sum inf, stored as null."""
    with pytest.raises(CellError):
        decode_cell(b'{"count":2,"value_count":2,"sum":null,"min":1.7e308,"max":1.7e308,"title":null,"channel":null}')
    assert _reasons(encode([good(event_id="a", value=1.7e308), good(event_id="b", value=1.7e308)])) == [BAD_VALUE] * 2


# ---------------------------------------------------------------------------------------
# Through the real pipeline: run_case (TestStream, local runner, Bigtable emulator).
# ---------------------------------------------------------------------------------------
def expected_run(steps: list) -> dict | None:
    """The reference for a run: metrics, dead letters per reason, archived events and the
    final rows (a plain fold of the accepted events). None when an id stands for two
    different events (the order of arrival would decide which one counts)."""
    proc_us = PROC_US
    seen: dict[str, RefEvent] = {}
    counted: dict[str, tuple] = {}
    dead: Counter = Counter()
    m = Counter()
    archived = 0
    accepted: list[RefEvent] = []
    for kind, arg in steps:
        if kind == "wait":
            proc_us += arg * US
            continue
        outcomes, n_in = oracle(arg)
        m["events_in"] += n_in
        for o in outcomes:
            if isinstance(o, str):
                dead[o] += 1
                continue
            if seen.setdefault(o.event_id, o) != o:
                return None
            if o.time_us > proc_us + SKEW_S * US:
                dead[FUTURE_TIMESTAMP] += 1
                continue
            if o.time_us < proc_us - AGE_S * US:
                dead[TOO_OLD] += 1
                continue
            archived += 1
            assert o.time_us >= START_US - LATENESS_S * US  # never too_late (LATENESS_S)
            if o.event_id in counted:
                m["duplicates_dropped"] += 1
                continue
            counted[o.event_id] = o
            accepted.append(o)
    m["events_accepted"] = len(accepted)
    m["dead_letters"] = sum(dead.values())
    rows: dict[tuple, list] = defaultdict(list)
    for e in accepted:
        s = e.time_us // US
        rows[(e.video_id, e.event_type, "minute", s - s % 60)].append(e.value)
        rows[(e.video_id, e.event_type, "hour", s - s % 3600)].append(e.value)
    return {"metrics": m, "dead": dead, "archived": archived, "rows": rows}


def _case(steps: list, queries: list) -> dict:
    """Consecutive messages share a step (up to 50): fewer TestStream events, same order."""
    out: list[dict] = [{"advance_processing_time_s": 60}]
    for kind, arg in steps:
        if kind == "wait":
            out.append({"advance_processing_time_s": arg})
        elif "publish_base64" in out[-1] and len(out[-1]["publish_base64"]) < 50:
            out[-1]["publish_base64"].append(base64.b64encode(arg).decode("ascii"))
        else:
            out.append({"publish_base64": [base64.b64encode(arg).decode("ascii")]})
    return {
        "name": "hostile",
        "start": START,
        "steps": out,
        "expect": {"queries": queries},
        "config": {
            "allowed_lateness_s": LATENESS_S,
            "max_future_skew_s": SKEW_S,
            "max_event_age_s": AGE_S,
            "early_firing_s": 30,
        },
    }


def _close(got: float, values: list) -> bool:
    exact = math.fsum(values)
    return abs(got - exact) <= len(values) * 2**-52 * math.fsum(map(abs, values)) + 1e-300


def run_and_compare(steps: list) -> dict:
    """Run ``steps`` through the pipeline and compare everything with ``expected_run``."""
    from viewcounts.commands.scenario import run_case

    want = expected_run(steps)
    assert want is not None, "the reference cannot decide this stream"
    entities = sorted({k[:2] for k in want["rows"]})
    random.Random(len(steps)).shuffle(entities)
    queries = [
        {"video_id": v, "event_type": t, "function": f, "start": QUERY_START, "end": QUERY_END, "granularity": g}
        for v, t in entities[:40]
        for f in ("count", "sum", "min", "max")
        for g in ("hour", "total")
    ]
    result = run_case(_case(steps, queries))
    metrics = result["metrics"]
    # every input is accounted for: counted, duplicate or dead letter
    assert metrics.get("events_in", 0) == want["metrics"]["events_in"]
    assert metrics["events_in"] == (
        metrics.get("events_accepted", 0) + metrics.get("duplicates_dropped", 0) + metrics.get("dead_letters", 0)
    )
    for name in ("events_accepted", "duplicates_dropped", "dead_letters"):
        assert metrics.get(name, 0) == want["metrics"][name], name
    assert result["dead_letters"] == dict(want["dead"])  # from the dead-letter files
    assert TOO_LATE not in result["dead_letters"]
    for reason, n in want["dead"].items():
        assert metrics.get(f"dead_letters_{reason}", 0) == n, reason
    assert result["archived_events"] == want["archived"]
    # every stored cell decoded (run_case read them all through decode_cell); each equals the fold
    stored = {
        (r["video_id"], r["event_type"], r["granularity"], parse_event_time(r["window_start"]) // US): r
        for r in result["rows"]
    }
    assert stored.keys() == want["rows"].keys()
    for key, values in want["rows"].items():
        r, vs = stored[key], [v for v in values if v is not None]
        assert (r["count"], r["value_count"]) == (len(values), len(vs)), key
        assert (r["min"], r["max"]) == ((min(vs), max(vs)) if vs else (None, None)), key
        assert _close(r["sum"], vs), (key, r["sum"], math.fsum(vs))
        assert all(x is None or math.isfinite(x) for x in (r["sum"], r["min"], r["max"], r["avg"]))
    # get_stats on what was stored
    for q, got in zip(queries, result["queries"]):
        assert "error" not in got, got
        values = [
            v
            for (vid, et, g, _), vals in want["rows"].items()
            if (vid, et, g) == (q["video_id"], q["event_type"], "hour")
            for v in vals
        ]
        vs = [v for v in values if v is not None]
        want_value = {
            "count": len(values),
            "sum": math.fsum(vs),
            "min": min(vs, default=None),
            "max": max(vs, default=None),
        }[q["function"]]
        if q["function"] == "sum":
            assert _close(got["value"], vs), (q, got)
        else:
            assert got["value"] == want_value, (q, got)
    return result


@pytest.mark.emulator
def test_corpus_through_the_pipeline(bigtable_host):
    """The whole corpus in one run, with the 100k-event batch, an 8.8 MB batch of 110k
    events, payloads over the size and item bounds, and copies of the first 50 payloads."""
    big = dict(BIG_CORPUS)
    steps = [("publish", p) for _, p in CORPUS]
    steps += [
        ("publish", big["100k-event batch"]),
        ("wait", 5),
        ("publish", big["10 MiB of [{},{},...]"]),
        ("publish", big["10 MiB + 1 byte"]),
        ("publish", big["10 MiB of nested arrays"]),
        (
            "publish",
            b"["
            + b",".join(
                [encode(good(event_id=f"n{i}", video_id="N", event_time=1715680830000 + i)) for i in range(110_000)]
            )
            + b"]",
        ),
    ]
    steps += [("publish", p) for _, p in CORPUS[:50]]  # copies: duplicates
    result = run_and_compare(steps)
    assert result["metrics"]["events_accepted"] > 210_000 and result["metrics"]["duplicates_dropped"] > 0


@settings(
    max_examples=PIPELINE_EXAMPLES, deadline=None, derandomize=_ENV is None, database=None, suppress_health_check=_QUIET
)
@given(st.data())
@pytest.mark.emulator
def test_generated_streams_through_the_pipeline(bigtable_host, data):
    """20-35 generated messages per run (as many as hypothesis draws for one example): good
    and bad events, mixed batches, copies, arbitrary documents and bytes, processing time
    moving on between them; half the runs then get every message again in another order (a
    redelivery storm: duplicates, and the same dead letters twice)."""
    serial, pool = [0], []
    steps = []
    for _ in range(data.draw(st.integers(20, 35))):
        if data.draw(st.integers(0, 10)) == 0:
            steps.append(("wait", data.draw(st.integers(1, 120))))
        steps.append(("publish", data.draw(payloads(serial, pool))))
    if data.draw(st.booleans()):
        again = [s for s in steps if s[0] == "publish"]
        random.Random(len(again)).shuffle(again)
        steps += again
    assume(expected_run(steps) is not None)
    run_and_compare(steps)


@pytest.mark.emulator
def test_get_stats_on_a_cell_the_pipeline_cannot_write_raises_cell_error_not_type_error(table):
    """A cell stored by a version before the value bound (a sum of null) or corrupted: the
    query names the cell in a ``CellError``; it never fails halfway with a ``TypeError``."""
    from google.cloud import bigtable

    from query.stats import StatsReader

    h = START_US // US - START_US // US % 3600
    client = bigtable.Client(project=table[0], admin=False)
    bt = client.instance(table[1]).table(table[2])
    for video, value in (
        ("OLD", b'{"count":2,"value_count":2,"sum":null,"min":1.7e308,"max":1.7e308,"title":null,"channel":null}'),
        ("JUNK", b"\xff{"),
        ("OK", encode_cell(Aggregate(2, 2, 2e15, 1e15, 1e15), None, None)),
    ):
        row = bt.direct_row(storage.row_key(video, "view", "hour", h))
        row.set_cell(storage.FAMILY, storage.qualifier(h), value)
        row.commit()
    client.close()
    with StatsReader(*table) as reader:
        assert reader.get_stats("OK", "view", "sum", START, "2024-05-14T11:00:00Z", "hour").value == 2e15
        for video in ("OLD", "JUNK"):
            with pytest.raises(CellError, match="row b'" + video):
                reader.get_stats(video, "view", "sum", START, "2024-05-14T11:00:00Z", "hour")
