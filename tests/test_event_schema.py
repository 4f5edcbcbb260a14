"""SPEC.md section 1: field rules, timestamp forms, batch messages, reason order."""
import pytest

from schemas import event as ev
from schemas.event import parse_event_time, parse_payload

T = 1715680830 * 1_000_000  # 2024-05-14T10:00:30Z


@pytest.mark.parametrize("text,expected", [
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
])
def test_accepted_timestamp_forms(text, expected):
    assert parse_event_time(text) == expected


@pytest.mark.parametrize("bad", [
    "2024-05-14 10:00:30Z", "2024-05-14T10:00:30", "2024-05-14T10:00:30.1234567890Z",
    "1715680830000", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-05-14T10:00:60Z",
    "2024-05-14T24:00:00Z", "2024-05-14T10:00:30+24:00", "2024-05-14T10:00:30+0200", "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 1715680830000.0, True, None, [],
    253402300800000, -62135596800001, " 2024-05-14T10:00:30Z", "2024-05-14T10:00:30Z\n",
])
def test_refused_timestamp_forms(bad):
    with pytest.raises(ev.BadTimestamp):
        parse_event_time(bad)


def _good(**kw):
    base = {"event_id": "e1", "video_id": "V1", "event_type": "view", "event_time": "2024-05-14T10:00:30Z"}
    base.update(kw)
    return base


@pytest.mark.parametrize("obj,reason", [
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
])
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


@pytest.mark.parametrize("payload,reason", [
    (b"\xff\xfe\x00\x01", ev.DECODE_ERROR),
    (b'{"event_id": "e3",', ev.JSON_ERROR),
    (b'\xef\xbb\xbf{"a": 1}', ev.JSON_ERROR),
    (b'{"value": NaN}', ev.JSON_ERROR),
    (b'{"value": Infinity}', ev.JSON_ERROR),
    (b'{} x', ev.JSON_ERROR),
    (b'null', ev.NOT_AN_OBJECT),
    (b'17', ev.NOT_AN_OBJECT),
    (b'[[{"event_id": "e"}]]', ev.NOT_AN_OBJECT),
])
def test_payload_level_rejections(payload, reason):
    events, rejections, n_in = parse_payload(payload)
    assert events == [] and [r.reason for r in rejections] == [reason] and n_in == 1


def test_batch_items_are_judged_one_by_one():
    payload = (b'[{"event_id":"a","video_id":"V","event_type":"view","event_time":"2024-05-14T10:00:30Z"},17,'
               b'{"event_id":"b","video_id":"V","event_type":"view","event_time":"2024-05-14T10:00:30"},'
               b'{"event_id":"c","video_id":"V","event_type":"view","event_time":1715680830000,"extra":"Caf\xc3\xa9"}]')
    events, rejections, n_in = parse_payload(payload)
    assert [e.event_id for e in events] == ["a", "c"]
    assert [r.reason for r in rejections] == [ev.NOT_AN_OBJECT, ev.BAD_TIMESTAMP]
    assert n_in == 4
    assert b'"extra":"Caf\xc3\xa9"' in events[1].raw  # unknown fields kept for the archive


def test_empty_batch_is_a_valid_message_with_no_events():
    assert parse_payload(b"[]") == ([], [], 0)


def test_big_integers_are_json_and_refused_field_by_field():
    _, rejections, _ = parse_payload(b'{"event_id":"a","video_id":"V","event_type":"view","event_time":'
                                     b'123456789012345678901234567890}')
    assert [r.reason for r in rejections] == [ev.BAD_TIMESTAMP]


def test_single_object_keeps_its_original_bytes_and_multiline_is_compacted():
    one = b'{"event_id": "a", "video_id": "V", "event_type": "view", "event_time": 1715680830000}'
    assert parse_payload(one)[0][0].raw == one
    multi = one.replace(b", ", b",\n")
    assert b"\n" not in parse_payload(multi)[0][0].raw
