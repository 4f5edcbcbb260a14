"""The contract's rules at their boundaries, as scenario cases of our own (the format of
docs/contract.md, "Scenario cases").

The shared cases are single examples; these pin the edges of each rule: the future-skew
and event-age limits to the microsecond, many keys in one window, one very hot key,
entities and types that share a prefix or a delimiter, and queries that must be refused.
"""

import pytest

from viewcounts.commands.scenario import check_case, run_case

pytestmark = [pytest.mark.emulator, pytest.mark.slow]
START = "2024-05-14T10:00:00Z"


def ev(eid, t, vid="V1", et="view", **kw):
    return {"event_id": eid, "video_id": vid, "event_type": et, "event_time": t, **kw}


def row(vid, et, g, start, count, value_count=0, s=0, mn=None, mx=None):
    avg = s / value_count if value_count else None
    return {
        "video_id": vid,
        "event_type": et,
        "granularity": g,
        "window_start": start,
        "count": count,
        "value_count": value_count,
        "sum": s,
        "avg": avg,
        "min": mn,
        "max": mx,
    }


def run(steps, expect, config=None):
    case = {
        "name": "rule",
        "start": START,
        "steps": steps,
        "expect": expect,
        "config": {"allowed_lateness_s": 600, "max_future_skew_s": 300, "early_firing_s": 30, **(config or {})},
    }
    result = run_case(case)
    assert check_case(case, result) == []
    return result


def test_future_skew_boundary_to_the_microsecond(bigtable_host):
    run(
        [
            {"advance_processing_time_s": 60},
            {
                "publish": [
                    [
                        ev("in", "2024-05-14T10:06:00Z"),
                        ev("out", "2024-05-14T10:06:00.000001Z"),
                        ev("in2", "2024-05-14T11:06:00+01:00"),
                    ]
                ]
            },
        ],
        {
            "dead_letters": {"future_timestamp": 1},
            "rows": [
                row("V1", "view", "minute", "2024-05-14T10:06:00Z", 2),
                row("V1", "view", "hour", "2024-05-14T10:00:00Z", 2),
            ],
            "rows_exact": True,
        },
    )


def test_event_age_boundary_to_the_microsecond(bigtable_host):
    # lateness made larger than the age limit, so only the age rule can refuse
    run(
        [
            {"advance_processing_time_s": 3600},
            {"publish": [[ev("in", "2024-05-14T10:00:00Z"), ev("out", "2024-05-14T09:59:59.999999Z")]]},
        ],
        {"dead_letters": {"too_old": 1}, "metrics": {"events_accepted": 1}},
        config={"max_event_age_s": 3600, "allowed_lateness_s": 7200},
    )


def test_lateness_is_checked_after_age_and_before_dedup(bigtable_host):
    run(
        [
            {"advance_processing_time_s": 30},
            {"publish": [ev("a", "2024-05-14T10:00:10Z")]},
            {"advance_processing_time_s": 700},
            {"advance_watermark": "2024-05-14T10:11:00Z"},
            {"publish": [[ev("a", "2024-05-14T10:00:10Z"), ev("b", "2024-05-14T10:00:10Z")]]},
        ],
        {"dead_letters": {"too_late": 2}, "metrics": {"duplicates_dropped": 0, "events_accepted": 1}},
    )


def test_many_keys_in_one_window(bigtable_host):
    n = 1500
    events = [ev(f"e{i}", "2024-05-14T10:00:30Z", vid=f"video-{i:05d}", value=i) for i in range(n)]
    result = run(
        [{"advance_processing_time_s": 60}, {"publish": [events[i : i + 100] for i in range(0, n, 100)]}],
        {
            "metrics": {"events_accepted": n},
            "rows": [row("video-01499", "view", "minute", "2024-05-14T10:00:00Z", 1, 1, 1499, 1499, 1499)],
        },
    )
    assert len(result["rows"]) == 2 * n


def test_one_very_hot_key_with_duplicates_across_messages(bigtable_host):
    n = 6000
    events = [ev(f"h{i}", f"2024-05-14T10:00:{i % 60:02d}.{i:06d}Z", value=1) for i in range(n)]
    copies = events[::7]
    steps = [{"advance_processing_time_s": 61}]
    steps += [{"publish": [events[i : i + 500]]} for i in range(0, n, 500)]
    steps += [{"publish": [copies]}, {"advance_processing_time_s": 30}, {"publish": [copies[:10]]}]
    run(
        steps,
        {
            "metrics": {"events_accepted": n, "duplicates_dropped": len(copies) + 10},
            "rows": [
                row("V1", "view", "minute", "2024-05-14T10:00:00Z", n, n, n, 1, 1),
                row("V1", "view", "hour", "2024-05-14T10:00:00Z", n, n, n, 1, 1),
            ],
            "rows_exact": True,
        },
    )


def test_entities_and_types_sharing_prefixes_and_delimiters_stay_apart(bigtable_host):
    pairs = [
        ("V1", "view"),
        ("V10", "view"),
        ("V1", "view_2"),
        ("V1#view", "m"),
        ("V1%23view", "m"),
        ("V1#", "view"),
        ("v1", "view"),
        ("Ⅴ1", "view"),
        ("V1 ", "view"),
    ]
    events = [ev(f"p{i}", "2024-05-14T10:00:30Z", vid=v, et=t, value=i + 1) for i, (v, t) in enumerate(pairs)]
    rows = [
        row(v, t, g, "2024-05-14T10:00:00Z", 1, 1, i + 1, i + 1, i + 1)
        for i, (v, t) in enumerate(pairs)
        for g in ("minute", "hour")
    ]
    queries = [
        {
            "video_id": v,
            "event_type": t,
            "function": "sum",
            "start": "2024-05-14T10:00:00Z",
            "end": "2024-05-14T11:00:00Z",
            "granularity": "hour",
            "value": i + 1,
        }
        for i, (v, t) in enumerate(pairs)
    ]
    run(
        [{"advance_processing_time_s": 60}, {"publish": [events]}],
        {"rows": rows, "rows_exact": True, "queries": queries},
    )


def test_refused_queries(bigtable_host):
    bad = [
        ("2024-05-14T10:00:30Z", "2024-05-14T10:01:00Z", "minute"),
        ("2024-05-14T10:00:00Z", "2024-05-14T10:30:00Z", "hour"),
        ("2024-05-14T10:00:00Z", "2024-05-15T10:00:00Z", "day"),
        ("2024-05-14T10:00:00Z", "2024-05-14T09:00:00Z", "hour"),
    ]
    run(
        [{"publish": [ev("a", "2024-05-14T10:00:00Z")]}],
        {
            "queries": [
                {
                    "video_id": "V1",
                    "event_type": "view",
                    "function": "count",
                    "start": s,
                    "end": e,
                    "granularity": g,
                    "error": True,
                }
                for s, e, g in bad
            ]
            + [
                {
                    "video_id": "V1",
                    "event_type": "view",
                    "function": "count",
                    "start": "2024-05-14T10:00:00Z",
                    "end": "2024-05-14T10:00:00Z",
                    "granularity": "minute",
                    "value": 0,
                }
            ]
        },
    )


@pytest.mark.parametrize(
    "zero",
    ["\u0660", "\u06f0", "\u0966", "\uff10", "\U0001d7ce"],
    ids=["arabic-indic", "extended-arabic-indic", "devanagari", "full-width", "math-bold"],
)
def test_section_1_bounds_through_the_pipeline(bigtable_host, zero):
    """ASCII digits only in event_time, |value| <= 1e15, nesting <= 512 levels and the size
    bounds (``too_large``, an extension: schemas/event.py) through the whole pipeline: each
    refused input is one dead letter with its counter, and the events around them count."""
    import base64

    from schemas.event import MAX_BATCH_ITEMS, MAX_PAYLOAD_BYTES

    def digits(text):
        return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in text)

    good = ev("g", "2024-05-14T10:00:30Z")
    field = (
        '{"event_id": "%s", "video_id": "V1", "event_type": "view", "event_time": "2024-05-14T10:00:40Z", '
        '"value": %s, "x": %s}'
    )
    steps = [
        {"advance_processing_time_s": 60},
        {
            "publish": [
                [
                    good,
                    ev("d1", digits("2024-05-14T10:00:30Z")),
                    ev("d2", "2024-05-14T10:00:3" + zero + "Z"),
                    ev("d3", digits("2024") + "-05-14T10:00:30Z"),
                ]
            ]
        },
        {
            "publish_raw": [
                field % ("v1", "1e15", "1"),
                field % ("v2", "-1000000000000000", "1"),
                field % ("v3", "1000000000000001", "1"),
                field % ("v4", "1.7e308", "1"),
                field % ("v5", "-1e400", "1"),
                field % ("v6", "1" + "0" * 5000, "1"),
                field % ("n1", "1", "[" * 511 + "]" * 511),
                field % ("n2", "1", "[" * 512 + "]" * 512),
                "[" + field % ("n3", "1", "[" * 510 + "]" * 510) + "]",
                "[" + field % ("n4", "1", "[" * 511 + "]" * 511) + "]",
            ]
        },
        {
            "publish_base64": [
                base64.b64encode(b" " * MAX_PAYLOAD_BYTES + b"{}").decode(),
                base64.b64encode(b"[" + b",".join([b"0"] * (MAX_BATCH_ITEMS + 1)) + b"]").decode(),
            ]
        },
        {"publish": [ev("last", "2024-05-14T10:00:50Z", value=2)]},
    ]
    # counted: g, v1, v2, n1, n3, last (values 1e15, -1e15, 1, 1, 2)
    run(
        steps,
        {
            "dead_letters": {"bad_timestamp": 3, "bad_value": 4, "json_error": 2, "too_large": 2},
            "metrics": {
                "events_in": 6 + 3 + 4 + 2 + 2,
                "events_accepted": 6,
                "dead_letters": 11,
                "dead_letters_too_large": 2,
                "dead_letters_json_error": 2,
            },
            "rows": [
                row("V1", "view", "minute", "2024-05-14T10:00:00Z", 6, 5, 4, -1e15, 1e15),
                row("V1", "view", "hour", "2024-05-14T10:00:00Z", 6, 5, 4, -1e15, 1e15),
            ],
            "rows_exact": True,
        },
    )
