"""The input event (docs/contract.md, "Input events"): field rules, timestamp parsing and validation.

Shapes:
    ``Event`` is a ``NamedTuple`` ``(event_id, video_id, event_type, time_us, value, raw)``:
    ``time_us`` is the event time in integer microseconds since the Unix epoch (UTC),
    ``value`` a ``float`` or ``None``, ``raw`` the event object as compact one-line JSON
    (``bytes``), kept for the raw archive and for dead letters.

Errors are never raised to the pipeline: ``parse_payload`` returns the events it could
read and a ``Rejection`` (reason code, detail, original bytes) for each one it could not,
for any bytes whatever (every input ends counted, as a duplicate or as a dead letter,
docs/contract.md, "Input events"). Every cost is bounded by the payload's size, and every size is bounded:

* ``MAX_PAYLOAD_BYTES`` (10 MiB): Pub/Sub refuses messages over 10 MB (10**7 bytes per
  publish request), so 10 MiB admits every message it can deliver; a larger payload (from
  a file or a replay) is one ``too_large`` dead letter, not parsed.
* ``MAX_BATCH_ITEMS`` (163,839): the most events a batch within ``MAX_PAYLOAD_BYTES`` can
  hold: the shortest valid event, ``MIN_VALID_EVENT`` (63 bytes), plus its comma. A batch
  with more items cannot consist of valid events only (``[{},{},...]`` in 10 MiB has 3.5
  million items), so it is one ``too_large`` dead letter instead of millions. Parsing such
  a payload before counting its items costs at most about 0.2 s and 300 MB (measured).
* ``MAX_NESTING`` (512): a deeper payload is one ``json_error``. Found
  without walking every value: a payload with at most 512 ``[``/``{`` bytes cannot nest
  deeper; a batch item that orjson re-encodes (its own limit: 254 levels) is shallow
  enough; only the rest is measured.
* ``MAX_ABS_VALUE`` (1e15): a ``value`` beyond it, or not finite, is
  ``bad_value``. So a window's sum stays finite whatever its number of events (reaching
  the float range would take more than 1e293 of them), and every stored number is finite.
* string fields: ``MAX_EVENT_ID_BYTES``, ``MAX_VIDEO_ID_BYTES``, ``MAX_EVENT_TYPE_BYTES``
  (the field table of docs/contract.md, "Input events"); ``event_time`` strings must be ASCII.
* dead-letter details: ASCII (input echoed with ``ascii()`` escapes), at most
  ``MAX_DETAIL_CHARS`` characters, so they fit a Pub/Sub attribute (1,024 bytes) whole.

Reason codes: this module's part of docs/contract.md, "Dead letters". ``too_large``
(``TOO_LARGE``), the one not about a field, is a payload over ``MAX_PAYLOAD_BYTES`` or a
batch of more than ``MAX_BATCH_ITEMS`` items, checked before decoding (bytes) and right after JSON parsing (items); counted by
``dead_letters_too_large`` like every other code. Such a payload counts once in
``events_in``, as a payload that yields no event object does (docs/contract.md, "Metrics").

Numbers: orjson reads integers beyond 64 bits as floats and refuses numbers beyond the
float range (``1e400``, a 5,000-digit integer); the standard library settles those (and
lone surrogates, ``"\\ud800"``), reading the same numbers the same way, and keeping a number
beyond the float range as ``HugeNumber`` (its text): a field holding one is
``bad_timestamp``/``bad_value``, any other field keeps it verbatim in ``raw``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any, NamedTuple

import orjson

# Reason codes (docs/contract.md, "Dead letters"), in the order the checks run.
TOO_LARGE = "too_large"  # size bounds (module docstring), before decoding and after parsing
DECODE_ERROR = "decode_error"
JSON_ERROR = "json_error"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
BAD_TIMESTAMP = "bad_timestamp"
BAD_VALUE = "bad_value"
FUTURE_TIMESTAMP = "future_timestamp"
TOO_OLD = "too_old"
TOO_LATE = "too_late"
WRITE_FAILED = "write_failed"
INPUT_REASONS = (TOO_LARGE, DECODE_ERROR, JSON_ERROR, NOT_AN_OBJECT, MISSING_FIELD, BAD_FIELD, BAD_TIMESTAMP, BAD_VALUE)

REQUIRED_FIELDS = ("event_id", "video_id", "event_type", "event_time")
MAX_EVENT_ID_BYTES = 128
MAX_VIDEO_ID_BYTES = 256
MAX_EVENT_TYPE_BYTES = 64
_EVENT_TYPE_RE = re.compile(r"[a-z0-9_]+\Z")

# Bounds (module docstring).
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
MIN_VALID_EVENT = b'{"event_id":"a","video_id":"b","event_type":"c","event_time":0}'
MAX_BATCH_ITEMS = (MAX_PAYLOAD_BYTES - 2 + 1) // (len(MIN_VALID_EVENT) + 1)  # "[" e ("," e)* "]"
MAX_NESTING = 512
MAX_ABS_VALUE = 1e15
_MAX_ABS_INT_VALUE = 10**15
MAX_DETAIL_CHARS = 512

US_PER_S = 1_000_000
# Years 1..9999 as epoch milliseconds, half-open.
MIN_EPOCH_MS = -62_135_596_800_000
END_EPOCH_MS = 253_402_300_800_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# ASCII digits only ([0-9], not \d: a str pattern's \d is every Unicode decimal digit).
_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))\Z",
    re.ASCII,
)


class Event(NamedTuple):
    """One valid event. ``time_us``: epoch microseconds; ``raw``: compact JSON bytes."""

    event_id: str
    video_id: str
    event_type: str
    time_us: int
    value: float | None
    raw: bytes


class Rejection(NamedTuple):
    """Why one input was refused: a reason code, an ASCII detail of at most
    ``MAX_DETAIL_CHARS`` characters, and the input's bytes."""

    reason: str
    detail: str
    payload: bytes


class BadTimestamp(ValueError):
    """``event_time`` cannot be read as docs/contract.md, "Input events", says."""


class HugeNumber:
    """A JSON number beyond the float range (``1e400``, ``-1e999``, an integer of thousands of
    digits), kept as its text: no field accepts it, and ``raw`` re-encodes it verbatim."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return type(other) is HugeNumber and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"HugeNumber({_clip(self.text)})"


def _reject(reason: str, detail: str, payload: bytes) -> Rejection:
    return Rejection(reason, safe_detail(detail), payload)


def safe_detail(text: str) -> str:
    """``text`` as ASCII (other characters, lone surrogates included, as backslash escapes),
    cut to ``MAX_DETAIL_CHARS`` characters."""
    if not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


def _clip(text: str, limit: int = 64) -> str:
    """A string from the input, quoted for a detail: ASCII escapes, at most ``limit + 3``
    characters."""
    quoted = ascii(text[:limit])
    if len(quoted) <= limit and len(text) <= limit:
        return quoted
    return quoted[:limit] + "..."


def _show(value: Any) -> str:
    """A short, total description of a decoded JSON value for a detail."""
    if value is None or type(value) is bool:
        return _json_type(value)
    if isinstance(value, int):
        if value.bit_length() > 200:  # str() of an int refuses beyond 4,300 digits
            return f"an integer of {value.bit_length()} bits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, HugeNumber):
        return value.text if len(value.text) <= 40 else f"{value.text[:40]}... ({len(value.text)} characters)"
    if isinstance(value, str):
        return _clip(value)
    return _json_type(value)


def parse_event_time(value: Any) -> int:
    """Read an ``event_time`` field into epoch microseconds.

    Accepts an RFC 3339 string (ASCII digits; ``T``/``t``, ``Z``/``z`` or ``±hh:mm``, 0..9
    fraction digits, truncated to the microsecond) or an integer of epoch milliseconds
    within years 1..9999. Raises ``BadTimestamp`` for anything else (no zone, space
    separator, leap second, non-ASCII digits, floats, booleans, numeric strings,
    out-of-range dates); never any other exception.
    """
    if isinstance(value, bool):
        raise BadTimestamp("a boolean is not a timestamp")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value < END_EPOCH_MS:
            raise BadTimestamp(f"epoch milliseconds {_show(value)} are outside years 1-9999")
        return value * 1000
    if not isinstance(value, str):
        if isinstance(value, float):
            kind = f"the non-integer number {_show(value)}"
        elif isinstance(value, HugeNumber):
            kind = f"the number {_show(value)}, beyond the float range"
        else:
            kind = _json_type(value)
        raise BadTimestamp(f"expected an RFC 3339 string or integer epoch milliseconds, got {kind}")
    m = _RFC3339_RE.match(value)
    if m is None:
        raise BadTimestamp(f"not RFC 3339 with a zone and ASCII digits: {_clip(value)}")
    fraction = m.group(7) or ""
    micros = int((fraction + "000000")[:6])
    if m.group(8):
        whole_s = _utc_seconds.get(value[:19])
        if whole_s is None:
            whole_s = _utc_seconds.put(value[:19], _epoch_seconds(value, m, dt.timedelta(0)))
    else:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise BadTimestamp(f"bad zone offset in {_clip(value)}")
        whole_s = _epoch_seconds(value, m, dt.timedelta(hours=oh, minutes=om) * (1 if m.group(9) == "+" else -1))
    us = whole_s * US_PER_S + micros
    if not MIN_EPOCH_MS * 1000 <= us < END_EPOCH_MS * 1000:
        raise BadTimestamp(f"{_clip(value)} is outside years 1-9999 in UTC")
    return us


def _epoch_seconds(value: str, m: re.Match, offset: dt.timedelta) -> int:
    """Whole epoch seconds of a matched RFC 3339 string's date and time at ``offset``."""
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        local = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
        return (local - _EPOCH) // dt.timedelta(seconds=1)
    except (ValueError, OverflowError) as exc:
        raise BadTimestamp(f"not a valid instant: {_clip(value)} ({exc})") from None


class _SecondsCache:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) -> epoch seconds, for the seconds a stream is at: events
    of one message mostly share them. Emptied when it reaches ``size`` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._d: dict[str, int] = {}
        self.get = self._d.get

    def put(self, key: str, seconds: int) -> int:
        if len(self._d) >= self._size:
            self._d.clear()
        self._d[key] = seconds
        return seconds


_utc_seconds = _SecondsCache(100_000)


def format_time_us(time_us: int) -> str:
    """Epoch microseconds to RFC 3339 UTC (``...Z``), microseconds only when non-zero.

    Total: a value outside years 1-9999 (a watermark view at one of Beam's ends of time,
    say) or that is not an integer gives ``<value> us since the epoch (outside years
    1-9999)``; it never raises."""
    try:
        t = _EPOCH + dt.timedelta(microseconds=time_us)
    except (OverflowError, ValueError, TypeError):
        return f"{_show(time_us)} us since the epoch (outside years 1-9999)"
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return f"{text}.{t.microsecond:06d}Z" if t.microsecond else text + "Z"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


_MIN_I64, _MAX_U64 = -(2**63), 2**64 - 1


def _parse_int(text: str) -> Any:
    """An integer literal as orjson reads it: an ``int`` within 64 bits, else a float, else
    (beyond the float range) a ``HugeNumber``. Never ``int()`` of thousands of digits, which
    Python refuses (``sys.get_int_max_str_digits``)."""
    if len(text) <= 20:
        n = int(text)
        if _MIN_I64 <= n <= _MAX_U64:
            return n
    return _parse_float(text)


def _parse_float(text: str) -> Any:
    f = float(text)
    return f if math.isfinite(f) else HugeNumber(text)


class _TooDeep(ValueError):
    """The payload nests deeper than ``MAX_NESTING`` levels."""


_TOO_DEEP = f"nesting deeper than {MAX_NESTING} levels"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# a JSON string in UTF-8 bytes (no byte of a multi-byte character is '"' or '\\')
_STRING_RE = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)


def _brackets_exceed(payload: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the payload has more than ``limit`` ``[``/``{`` bytes: if not, it cannot nest
    deeper than ``limit`` levels. Two scans in C, none for a payload of at most ``limit`` bytes."""
    return len(payload) > limit and payload.count(b"[") + payload.count(b"{") > limit


def _text_depth(payload: bytes) -> int:
    """Nesting depth of JSON text, from its bytes: strings removed, then the running balance
    of brackets. Exact for valid JSON (for other bytes the parser refuses them anyway). In C
    and numpy: 10 MiB in well under a second."""
    import numpy as np

    brackets = _STRING_RE.sub(b"", payload).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    balance = np.cumsum(np.where((steps == 0x5B) | (steps == 0x7B), 1, -1), dtype=np.int64)
    return int(balance.max())


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value (a scalar: 0, ``[]``: 1), counted level by level
    without recursion, up to ``limit + 1``."""
    depth = 0
    level = [value]
    while True:
        containers = [c for c in level if type(c) is dict or type(c) is list]
        if not containers or depth > limit:
            return depth
        depth += 1
        level = [v for c in containers for v in (c.values() if type(c) is dict else c)]


def _loads(payload: bytes) -> Any:
    """Parse strict RFC 8259 JSON. Raises ``UnicodeDecodeError`` (not UTF-8; checked before
    any JSON error) or ``ValueError`` (not JSON, or nesting deeper than ``MAX_NESTING`` where
    orjson refused the payload: the caller checks the depth of what orjson accepts).

    orjson is the fast path; the standard library settles what orjson refuses but RFC 8259
    allows (numbers beyond the float range, lone surrogates), after a depth check on the
    bytes so that it never recurses deeper than ``MAX_NESTING``.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        orjson_error = str(exc)
    text = payload.decode("utf-8")  # UnicodeDecodeError: decode_error
    if "depth limit" in orjson_error:  # orjson stops at 1,024 levels
        raise _TooDeep(_TOO_DEEP)
    if _brackets_exceed(payload) and _text_depth(payload) > MAX_NESTING:
        raise _TooDeep(_TOO_DEEP)
    return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float)


def _check_string(obj: dict, name: str, max_bytes: int) -> str | None:
    """The detail of a bad string field, or None when it follows the field table (docs/contract.md, "Input events")."""
    v = obj[name]
    if not isinstance(v, str):
        return f"{name} must be a string, got {_json_type(v)}"
    if v.isascii():  # one byte per character: no encoding needed to count bytes
        n = len(v)
    elif len(v) > max_bytes:  # at least one byte per character
        return f"{name} must be 1..{max_bytes} bytes of UTF-8, got {len(v)} characters"
    else:
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{name} is not valid Unicode (lone surrogate)"
    if not 1 <= n <= max_bytes:
        return f"{name} must be 1..{max_bytes} bytes of UTF-8, got {n}"
    return None


def validate_object(obj: Any, raw: bytes) -> Event | Rejection:
    """Judge one decoded item by the field rules of docs/contract.md, "Input events", in the
    order of "Acceptance" rule 2 (missing field, then each field in table order)."""
    if not isinstance(obj, dict):
        return _reject(NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(obj)}", raw)
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            return _reject(MISSING_FIELD, f"missing field {name}", raw)
    for name, limit in (
        ("event_id", MAX_EVENT_ID_BYTES),
        ("video_id", MAX_VIDEO_ID_BYTES),
        ("event_type", MAX_EVENT_TYPE_BYTES),
    ):
        detail = _check_string(obj, name, limit)
        if detail:
            return _reject(BAD_FIELD, detail, raw)
    if not _EVENT_TYPE_RE.match(obj["event_type"]):
        return _reject(BAD_FIELD, f"event_type must match [a-z0-9_]+, got {_clip(obj['event_type'])}", raw)
    try:
        time_us = parse_event_time(obj["event_time"])
    except BadTimestamp as exc:
        return _reject(BAD_TIMESTAMP, f"event_time: {exc}", raw)
    value = obj.get("value")
    if value is not None:
        t = type(value)
        if t is float:
            if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # false for nan too
                return _reject(
                    BAD_VALUE, f"value must be finite with absolute value at most 1e15, got {_show(value)}", raw
                )
        elif t is int:
            if not -_MAX_ABS_INT_VALUE <= value <= _MAX_ABS_INT_VALUE:
                return _reject(BAD_VALUE, f"value must have absolute value at most 1e15, got {_show(value)}", raw)
            value = float(value)
        elif t is HugeNumber:
            return _reject(BAD_VALUE, f"value must have absolute value at most 1e15, got {_show(value)}", raw)
        else:
            return _reject(BAD_VALUE, f"value must be a number, got {_json_type(value)}", raw)
    return Event(obj["event_id"], obj["video_id"], obj["event_type"], time_us, value, raw)


def parse_payload(payload: bytes) -> tuple[list[Event], list[Rejection], int]:
    """Decode one message payload (an event object or a JSON array of them).

    Returns ``(events, rejections, events_in)`` where ``events_in`` is the count for the
    ``events_in`` metric: one per batch item, or one for a payload that yields no item
    (bad bytes, bad JSON, too large). Each batch item is judged on its own; its ``raw``
    is its own compact JSON. Never raises, whatever the bytes (``bytearray``,
    ``memoryview`` and ``str`` are read as their bytes).
    """
    if type(payload) is not bytes:
        payload = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [], [_reject(TOO_LARGE, f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}", payload)], 1
    try:
        doc = _loads(payload)
        if type(doc) is list:
            if len(doc) > MAX_BATCH_ITEMS:
                return (
                    [],
                    [
                        _reject(
                            TOO_LARGE,
                            f"batch of {len(doc)} items; at most {MAX_BATCH_ITEMS} (more "
                            f"than valid events can fit in {MAX_PAYLOAD_BYTES} bytes)",
                            payload,
                        )
                    ],
                    1,
                )
            items = [(item, _dumps(item, MAX_NESTING - 1)) for item in doc]
        else:
            if type(doc) is dict and _brackets_exceed(payload) and _depth(doc, MAX_NESTING) > MAX_NESTING:
                raise _TooDeep(_TOO_DEEP)
            one_line = b"\n" not in payload and b"\r" not in payload
            items = [(doc, payload if one_line else _dumps(doc, MAX_NESTING))]
    except UnicodeDecodeError as exc:
        return [], [_reject(DECODE_ERROR, f"payload is not UTF-8: {exc.reason} at byte {exc.start}", payload)], 1
    except (ValueError, RecursionError) as exc:
        return [], [_reject(JSON_ERROR, f"payload is not JSON: {str(exc)[:200]}", payload)], 1
    events: list[Event] = []
    rejections: list[Rejection] = []
    for item, raw in items:
        judged = validate_object(item, raw)
        (events if type(judged) is Event else rejections).append(judged)
    return events, rejections, len(items)


def _dumps(obj: Any, max_depth: int) -> bytes:
    """Compact one-line JSON of a decoded value. Raises ``_TooDeep`` when it nests deeper
    than ``max_depth`` (only measured when orjson refuses it: orjson's own limit is 254)."""
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # depth over 254, lone surrogates, HugeNumber
        if _depth(obj, max_depth) > max_depth:
            raise _TooDeep(_TOO_DEEP) from None
        return _dumps_fallback(obj)


_END = object()


def _dumps_fallback(obj: Any) -> bytes:
    """Compact JSON of a decoded value that orjson refuses, iteratively (no recursion):
    strings with ASCII escapes (so lone surrogates stay ``\\udXXX`` escapes, and the result
    is valid UTF-8), ``HugeNumber`` as its original text."""
    parts: list[str] = []
    stack: list[list] = []  # [iterator over members, closing bracket, is an object, members written]
    value = obj
    while True:
        t = type(value)
        if t is dict:
            parts.append("{")
            stack.append([iter(value.items()), "}", True, False])
        elif t is list:
            parts.append("[")
            stack.append([iter(value), "]", False, False])
        else:
            parts.append(_scalar_json(value))
        while stack:
            frame = stack[-1]
            member = next(frame[0], _END)
            if member is _END:
                stack.pop()
                parts.append(frame[1])
                continue
            if frame[3]:
                parts.append(",")
            frame[3] = True
            if frame[2]:
                parts.append(json.dumps(member[0]))
                parts.append(":")
                member = member[1]
            value = member
            break
        else:
            return "".join(parts).encode("ascii")


def _scalar_json(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return json.dumps(v)  # ensure_ascii: escapes, lone surrogates included
    if isinstance(v, HugeNumber):
        return v.text
    if isinstance(v, int):  # within 64 bits when it comes from _loads
        if v.bit_length() <= 64:
            return str(v)
        try:
            v = float(v)
        except OverflowError:
            return "null"
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    return "null"


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, HugeNumber)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"
