"""docs/contract.md, "Input events": field rules, timestamp forms, batch messages, reason order."""

import pytest

from schemas import event as ev
from schemas.event import parse_event_time, parse_payload

T = 1715680830 * 1_000_000  # 2024-05-14T10:00:30Z


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2024-05-14T10:00:30Z", T),
        ("2024-05-14t10:00:30z", T),
        ("2024-05-14T12:00:30+02:00", T),
        ("2024-05-14T05:30:30-04:30", T),
        ("2024-05-13T23:00:30-11:00", T),
        ("2024-05-14T10:00:30.5Z", T + 500_000),
        ("2024-05-14T10:00:30.123456789Z", T + 123_456),
        ("2024-05-14T10:00:30.000000000Z", T),
        ("2024-05-14T10:00:30.1234567Z", T + 123_456),
        (1715680830000, T),
        (1715680830001, T + 1000),
        (-284169600000, -284169600000 * 1000),
        ("1969-12-31T23:59:59.999999Z", -1),
    ],
)
def test_accepted_timestamp_forms(text, expected):
    assert parse_event_time(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "2024-05-14 10:00:30Z",
        "2024-05-14T10:00:30",
        "2024-05-14T10:00:30.1234567890Z",
        "1715680830000",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-14T10:00:60Z",
        "2024-05-14T24:00:00Z",
        "2024-05-14T10:00:30+24:00",
        "2024-05-14T10:00:30+0200",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        1715680830000.0,
        True,
        None,
        [],
        253402300800000,
        -62135596800001,
        " 2024-05-14T10:00:30Z",
        "2024-05-14T10:00:30Z\n",
    ],
)
def test_refused_timestamp_forms(bad):
    with pytest.raises(ev.BadTimestamp):
        parse_event_time(bad)


def _good(**kw):
    base = {"event_id": "e1", "video_id": "V1", "event_type": "view", "event_time": "2024-05-14T10:00:30Z"}
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "obj,reason",
    [
        ({"video_id": "V1", "event_type": "view", "event_time": "2024-05-14T10:00:30Z"}, ev.MISSING_FIELD),
        (_good(event_id=None), ev.MISSING_FIELD),
        (_good(event_time=None), ev.MISSING_FIELD),
        (_good(event_id=12), ev.BAD_FIELD),
        (_good(event_id=""), ev.BAD_FIELD),
        (_good(event_id="x" * 129), ev.BAD_FIELD),
        (_good(event_id="é" * 65), ev.BAD_FIELD),  # 130 bytes
        (_good(video_id=""), ev.BAD_FIELD),
        (_good(video_id="€" * 86), ev.BAD_FIELD),  # 258 bytes
        (_good(event_type="View"), ev.BAD_FIELD),
        (_good(event_type="vi-ew"), ev.BAD_FIELD),
        (_good(event_type="v" * 65), ev.BAD_FIELD),
        (_good(event_time="2024-05-14T10:00:30"), ev.BAD_TIMESTAMP),
        (_good(value="3"), ev.BAD_VALUE),
        (_good(value=True), ev.BAD_VALUE),
        (_good(value=[1]), ev.BAD_VALUE),
        (_good(event_id=1, event_time="bad"), ev.BAD_FIELD),  # field checks before the timestamp
        (_good(event_time="bad", value="x"), ev.BAD_TIMESTAMP),  # timestamp before the value
        ([1], ev.NOT_AN_OBJECT),
        ("text", ev.NOT_AN_OBJECT),
    ],
)
def test_field_rules(obj, reason):
    judged = ev.validate_object(obj, b"raw")
    assert isinstance(judged, ev.Rejection) and judged.reason == reason, judged


def test_byte_limits_accept_exact_multibyte_lengths():
    judged = ev.validate_object(_good(event_id="é" * 64, video_id="€" * 85 + "x", event_type="v" * 64), b"raw")
    assert isinstance(judged, ev.Event)
    assert judged.value is None


def test_value_null_means_no_value_and_numbers_are_floats():
    assert ev.validate_object(_good(value=None), b"r").value is None
    assert ev.validate_object(_good(value=3), b"r").value == 3.0
    assert ev.validate_object(_good(value=10**400), b"r").reason == ev.BAD_VALUE


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"\xff\xfe\x00\x01", ev.DECODE_ERROR),
        (b'{"event_id": "e3",', ev.JSON_ERROR),
        (b'\xef\xbb\xbf{"a": 1}', ev.JSON_ERROR),
        (b'{"value": NaN}', ev.JSON_ERROR),
        (b'{"value": Infinity}', ev.JSON_ERROR),
        (b'{} x', ev.JSON_ERROR),
        (b'null', ev.NOT_AN_OBJECT),
        (b'17', ev.NOT_AN_OBJECT),
        (b'[[{"event_id": "e"}]]', ev.NOT_AN_OBJECT),
    ],
)
def test_payload_level_rejections(payload, reason):
    events, rejections, n_in = parse_payload(payload)
    assert events == [] and [r.reason for r in rejections] == [reason] and n_in == 1


def test_batch_items_are_judged_one_by_one():
    payload = (
        b'[{"event_id":"a","video_id":"V","event_type":"view","event_time":"2024-05-14T10:00:30Z"},17,'
        b'{"event_id":"b","video_id":"V","event_type":"view","event_time":"2024-05-14T10:00:30"},'
        b'{"event_id":"c","video_id":"V","event_type":"view","event_time":1715680830000,"extra":"Caf\xc3\xa9"}]'
    )
    events, rejections, n_in = parse_payload(payload)
    assert [e.event_id for e in events] == ["a", "c"]
    assert [r.reason for r in rejections] == [ev.NOT_AN_OBJECT, ev.BAD_TIMESTAMP]
    assert n_in == 4
    assert b'"extra":"Caf\xc3\xa9"' in events[1].raw  # unknown fields kept for the archive


def test_empty_batch_is_a_valid_message_with_no_events():
    assert parse_payload(b"[]") == ([], [], 0)


def test_big_integers_are_json_and_refused_field_by_field():
    _, rejections, _ = parse_payload(
        b'{"event_id":"a","video_id":"V","event_type":"view","event_time":123456789012345678901234567890}'
    )
    assert [r.reason for r in rejections] == [ev.BAD_TIMESTAMP]


def test_single_object_keeps_its_original_bytes_and_multiline_is_compacted():
    one = b'{"event_id": "a", "video_id": "V", "event_type": "view", "event_time": 1715680830000}'
    assert parse_payload(one)[0][0].raw == one
    multi = one.replace(b", ", b",\n")
    assert b"\n" not in parse_payload(multi)[0][0].raw


# --- "Input events" bounds: ASCII digits, the value bound, nesting, sizes ----------------
import sys  # noqa: E402
import unicodedata  # noqa: E402

import orjson  # noqa: E402

_GOOD = {"event_id": "e1", "video_id": "V1", "event_type": "view", "event_time": "2024-05-14T10:00:30Z"}
# the zero of every script with decimal digits but ASCII (Arabic-Indic, full-width, Devanagari, ...)
_ZEROS = [
    chr(c)
    for c in range(sys.maxunicode + 1)
    if unicodedata.category(chr(c)) == "Nd" and unicodedata.digit(chr(c)) == 0 and c != 0x30
]


def _reasons(payload: bytes) -> list[str]:
    events, rejections, _ = parse_payload(payload)
    return ["event"] * len(events) + [r.reason for r in rejections]


def _with(**kw) -> bytes:
    return orjson.dumps({**_GOOD, **kw})


@pytest.mark.parametrize("zero", _ZEROS, ids=[f"U+{ord(z):04X}" for z in _ZEROS])
def test_event_time_digits_are_ascii_only(zero):
    t = _GOOD["event_time"]
    for i, c in enumerate(t):
        if c.isdigit():
            other = chr(ord(zero) + int(c))  # the same digit in the other script
            with pytest.raises(ev.BadTimestamp):
                parse_event_time(t[:i] + other + t[i + 1 :])
    assert _reasons(_with(event_time="".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in t))) == [
        ev.BAD_TIMESTAMP
    ]


@pytest.mark.parametrize(
    "literal,accepted",
    [
        (b"1e15", True),
        (b"-1e15", True),
        (b"1000000000000000", True),
        (b"-1000000000000000", True),
        (b"999999999999999.9", True),
        (b"0", True),
        (b"-0", True),
        (b"-0.0", True),
        (b"5e-324", True),
        (b"1e-400", True),
        (b"1000000000000001", False),
        (b"-1000000000000001", False),
        (b"1.0000000000000002e15", False),
        (b"1e16", False),
        (b"1.7e308", False),
        (b"18446744073709551616", False),
        (b"1e400", False),
        (b"-1e400", False),
        (b"1" + b"0" * 5000, False),
        (b"true", False),
        (b'"1"', False),
        (b"[1]", False),
        (b"{}", False),
    ],
)
def test_value_is_finite_and_at_most_1e15_in_absolute_value(literal, accepted):
    payload = _with(event_id="v")[:-1] + b',"value":' + literal + b"}"
    assert _reasons(payload) == (["event"] if accepted else [ev.BAD_VALUE])
    batch = b"[" + payload + b"," + _with(event_id="w") + b"]"  # a bad value never drops its neighbour
    assert sorted(_reasons(batch)) == (["event", "event"] if accepted else [ev.BAD_VALUE, "event"])


def _arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth if depth else b"1"


def _nested(shape: str, depth: int) -> bytes:
    """A payload nested ``depth`` levels deep."""
    if shape == "array":
        return _arrays(depth)
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if shape == "field":  # the event object is one level
        return _with()[:-1] + b',"x":' + _arrays(depth - 1) + b"}"
    if shape == "field with a lone surrogate":  # orjson refuses it: the standard library's path
        return _with()[:-1] + b',"n":"\\ud800","x":' + _arrays(depth - 1) + b"}"
    return b"[" + _with()[:-1] + b',"x":' + _arrays(depth - 2) + b"}]"  # a batch item: two levels


@pytest.mark.parametrize("shape", ["array", "object", "field", "field with a lone surrogate", "batch item"])
@pytest.mark.parametrize("depth", [2, 254, 255, 256, 511, 512, 513, 1024, 1025, 5000])
def test_nesting_deeper_than_512_levels_is_a_json_error(shape, depth):
    reasons = _reasons(_nested(shape, depth))
    if depth > ev.MAX_NESTING:
        assert reasons == [ev.JSON_ERROR]
    else:
        assert reasons == {"array": [ev.NOT_AN_OBJECT], "object": [ev.MISSING_FIELD]}.get(shape, ["event"])


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b" " * (ev.MAX_PAYLOAD_BYTES + 1), ev.TOO_LARGE),
        (b"\xff" * (ev.MAX_PAYLOAD_BYTES + 1), ev.TOO_LARGE),  # sizes are checked before decoding
        (b"[" + b",".join([b"0"] * (ev.MAX_BATCH_ITEMS + 1)) + b"]", ev.TOO_LARGE),
        (b"[" + b",".join([ev.MIN_VALID_EVENT] * 2) + b"]", None),
    ],
)
def test_payloads_over_the_size_bounds_are_one_too_large_dead_letter(payload, reason):
    events, rejections, n_in = parse_payload(payload)
    if reason is None:
        assert len(events) == n_in == 2 and not rejections
    else:
        assert (events, [r.reason for r in rejections], n_in) == ([], [reason], 1)
        assert rejections[0].payload == payload and len(rejections[0].detail) <= ev.MAX_DETAIL_CHARS


_TIMES = [
    0,
    -1,
    ev.MIN_EPOCH_MS * 1000,
    ev.END_EPOCH_MS * 1000 - 1,
    ev.END_EPOCH_MS * 1000,
    ev.MIN_EPOCH_MS * 1000 - 1,
    -(10**15) * 1000 + 7,
    2**63 - 1,
    -(2**63),
    10**5000,
    1.5,
    float("inf"),
    None,
]


@pytest.mark.parametrize("time_us", _TIMES, ids=[f"t{i}" for i in range(len(_TIMES))])
def test_format_time_us_is_total(time_us):
    text = ev.format_time_us(time_us)
    assert text.isascii()
    if isinstance(time_us, int) and ev.MIN_EPOCH_MS * 1000 <= time_us < ev.END_EPOCH_MS * 1000:
        assert parse_event_time(text) == time_us  # RFC 3339 that reads back, years 1-999 included
    elif not isinstance(time_us, float):
        assert "outside years 1-9999" in text
