"""The input event (SPEC.md section 1): field rules, timestamp parsing and validation.

Shapes:
    ``Event`` is a ``NamedTuple`` ``(event_id, video_id, event_type, time_us, value, raw)``:
    ``time_us`` is the event time in integer microseconds since the Unix epoch (UTC),
    ``value`` a ``float`` or ``None``, ``raw`` the event object re-encoded as compact
    one-line JSON (``bytes``), kept for the raw archive and for dead letters.

Errors are never raised to the pipeline: ``parse_payload`` returns the events it could
read and a ``Rejection`` (reason code, detail, original bytes) for each one it could not.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any, NamedTuple

import orjson

# Reason codes (SPEC.md section 4), in the order the checks run.
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

REQUIRED_FIELDS = ("event_id", "video_id", "event_type", "event_time")
MAX_EVENT_ID_BYTES = 128
MAX_VIDEO_ID_BYTES = 256
MAX_EVENT_TYPE_BYTES = 64
_EVENT_TYPE_RE = re.compile(r"[a-z0-9_]+\Z")

US_PER_S = 1_000_000
# Years 1..9999 as epoch milliseconds, half-open.
MIN_EPOCH_MS = -62_135_596_800_000
END_EPOCH_MS = 253_402_300_800_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
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
    """Why one input was refused: a SPEC.md section 4 reason code, a detail, its bytes."""

    reason: str
    detail: str
    payload: bytes


class BadTimestamp(ValueError):
    """``event_time`` cannot be read as SPEC.md section 1 says."""


def parse_event_time(value: Any) -> int:
    """Read an ``event_time`` field into epoch microseconds.

    Accepts an RFC 3339 string (``T``/``t``, ``Z``/``z`` or ``±hh:mm``, 0..9 fraction
    digits, truncated to the microsecond) or an integer of epoch milliseconds within
    years 1..9999. Raises ``BadTimestamp`` for anything else (no zone, space separator,
    leap second, floats, booleans, numeric strings, out-of-range dates).
    """
    if isinstance(value, bool):
        raise BadTimestamp("a boolean is not a timestamp")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value < END_EPOCH_MS:
            raise BadTimestamp(f"epoch milliseconds {value} are outside years 1-9999")
        return value * 1000
    if not isinstance(value, str):
        raise BadTimestamp(f"expected an RFC 3339 string or integer epoch milliseconds, got {type(value).__name__}")
    m = _RFC3339_RE.match(value)
    if m is None:
        raise BadTimestamp(f"not RFC 3339 with a zone: {value[:64]!r}")
    fraction = m.group(7) or ""
    micros = int((fraction + "000000")[:6])
    if m.group(8):
        whole_s = _utc_seconds.get(value[:19])
        if whole_s is None:
            whole_s = _utc_seconds.put(value[:19], _epoch_seconds(value, m, dt.timedelta(0)))
    else:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise BadTimestamp(f"bad zone offset in {value[:64]!r}")
        whole_s = _epoch_seconds(value, m, dt.timedelta(hours=oh, minutes=om) * (1 if m.group(9) == "+" else -1))
    us = whole_s * US_PER_S + micros
    if not MIN_EPOCH_MS * 1000 <= us < END_EPOCH_MS * 1000:
        raise BadTimestamp(f"{value[:64]!r} is outside years 1-9999 in UTC")
    return us


def _epoch_seconds(value: str, m: re.Match, offset: dt.timedelta) -> int:
    """Whole epoch seconds of a matched RFC 3339 string's date and time at ``offset``."""
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        local = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
        return (local - _EPOCH) // dt.timedelta(seconds=1)
    except (ValueError, OverflowError) as exc:
        raise BadTimestamp(f"not a valid instant: {value[:64]!r} ({exc})") from None


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
    """Epoch microseconds to RFC 3339 UTC (``...Z``), microseconds only when non-zero."""
    t = _EPOCH + dt.timedelta(microseconds=time_us)
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def loads_strict(payload: bytes) -> Any:
    """Parse strict RFC 8259 JSON. Raises ``UnicodeDecodeError`` or ``ValueError``.

    orjson is the fast path; the standard library (with NaN/Infinity refused) settles
    what orjson refuses but RFC 8259 allows (integers beyond 64 bits, lone surrogates).
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        text = payload.decode("utf-8")  # UnicodeDecodeError: decode_error
        return json.loads(text, parse_constant=_reject_constant)


def _check_string(obj: dict, name: str, max_bytes: int) -> str | None:
    """The detail of a bad string field, or None when it follows SPEC.md section 1."""
    v = obj[name]
    if not isinstance(v, str):
        return f"{name} must be a string, got {type(v).__name__}"
    if v.isascii():  # one byte per character: no encoding needed to count bytes
        n = len(v)
    else:
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{name} is not valid Unicode (lone surrogate)"
    if not 1 <= n <= max_bytes:
        return f"{name} must be 1..{max_bytes} bytes of UTF-8, got {n}"
    return None


def validate_object(obj: Any, raw: bytes) -> Event | Rejection:
    """Judge one decoded item by the field rules of SPEC.md section 1, in SPEC order."""
    if not isinstance(obj, dict):
        return Rejection(NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(obj)}", raw)
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            return Rejection(MISSING_FIELD, f"missing field {name}", raw)
    for name, limit in (("event_id", MAX_EVENT_ID_BYTES), ("video_id", MAX_VIDEO_ID_BYTES),
                        ("event_type", MAX_EVENT_TYPE_BYTES)):
        detail = _check_string(obj, name, limit)
        if detail:
            return Rejection(BAD_FIELD, detail, raw)
    if not _EVENT_TYPE_RE.match(obj["event_type"]):
        return Rejection(BAD_FIELD, "event_type must match [a-z0-9_]+", raw)
    try:
        time_us = parse_event_time(obj["event_time"])
    except BadTimestamp as exc:
        return Rejection(BAD_TIMESTAMP, f"event_time: {exc}", raw)
    value = obj.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Rejection(BAD_VALUE, f"value must be a number, got {_json_type(value)}", raw)
        try:
            value = float(value)
        except OverflowError:
            return Rejection(BAD_VALUE, "value is beyond the float range", raw)
        if not math.isfinite(value):
            return Rejection(BAD_VALUE, "value must be finite", raw)
    return Event(obj["event_id"], obj["video_id"], obj["event_type"], time_us, value, raw)


def parse_payload(payload: bytes) -> tuple[list[Event], list[Rejection], int]:
    """Decode one message payload (an event object or a JSON array of them).

    Returns ``(events, rejections, events_in)`` where ``events_in`` is the count for the
    ``events_in`` metric: one per batch item, or one for a payload that yields no item.
    Each batch item is judged on its own; its ``raw`` is its own compact JSON.
    """
    try:
        doc = loads_strict(payload)
    except UnicodeDecodeError as exc:
        return [], [Rejection(DECODE_ERROR, f"payload is not UTF-8: {exc.reason} at byte {exc.start}", payload)], 1
    except (ValueError, RecursionError) as exc:
        return [], [Rejection(JSON_ERROR, f"payload is not JSON: {str(exc)[:200]}", payload)], 1
    if isinstance(doc, list):
        items = [(item, _dumps(item)) for item in doc]
    else:
        one_line = b"\n" not in payload and b"\r" not in payload
        items = [(doc, payload if one_line else _dumps(doc))]
    events: list[Event] = []
    rejections: list[Rejection] = []
    for item, raw in items:
        judged = validate_object(item, raw)
        (events if isinstance(judged, Event) else rejections).append(judged)
    return events, rejections, len(items)


def _dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # big ints, lone surrogates
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"
