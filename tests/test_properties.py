"""Property tests (hypothesis): random streams against a straightforward model of SPEC.md.

Random event streams with duplicates (same-time copies, and copies re-stamped while their
id is remembered), out-of-order arrival, late and too-late events and watermark moves run
through the real pipeline (the scenario runner: TestStream, the local runner and an
embedded Flink at parallelism 2, Bigtable emulator). The stored aggregates and the metrics
must equal a reference model of SPEC.md sections 2-3, and must not depend on how the
events are batched into messages. Events are kept at least 10 s away from the
``too_late`` boundary, where SPEC lets the product's watermark view decide either way.
"""

import math
from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas.event import US_PER_S, format_time_us, parse_event_time
from viewcounts.commands.scenario import run_case

pytestmark = [pytest.mark.emulator, pytest.mark.slow]
START = "2024-05-14T10:00:00Z"
START_US = parse_event_time(START)
LATENESS_S = 600
SKEW_S = 300


@st.composite
def streams(draw):
    """A list of steps: ("publish", [event, ...]), ("wait", s), ("watermark", us)."""
    steps, known = [], []
    proc_us = wm_us = START_US
    n_steps = draw(st.integers(3, 14))
    for _ in range(n_steps):
        kind = draw(st.sampled_from(["publish", "publish", "publish", "wait", "watermark"]))
        if kind == "wait":
            s = draw(st.integers(1, 240))
            proc_us += s * US_PER_S
            steps.append(("wait", s))
        elif kind == "watermark":
            wm_us = min(wm_us + draw(st.integers(0, 400)) * US_PER_S, proc_us + 60 * US_PER_S)
            steps.append(("watermark", wm_us))
        else:
            events = []
            for _ in range(draw(st.integers(1, 6))):
                if known and draw(st.integers(0, 3)) == 0:
                    copy = dict(draw(st.sampled_from(known)))  # a copy: retry, redelivery
                    first_us = parse_event_time(copy["event_time"])
                    if draw(st.booleans()) and wm_us < first_us + (LATENESS_S - 30) * US_PER_S:
                        # re-stamped while its id is surely remembered (SPEC section 2)
                        copy["event_time"] = format_time_us(wm_us + draw(st.integers(-300, 200)) * US_PER_S)
                    events.append(copy)
                    continue
                t = wm_us + draw(st.integers(-900 * US_PER_S, 200 * US_PER_S))
                boundary = wm_us - LATENESS_S * US_PER_S
                if abs(t - boundary) < 10 * US_PER_S:
                    t = boundary + 20 * US_PER_S
                e = {
                    "event_id": f"e{len(known)}",
                    "video_id": draw(st.sampled_from(["V1", "V2", "V1#x", "é"])),
                    "event_type": draw(st.sampled_from(["view", "watch"])),
                    "event_time": format_time_us(t),
                }
                value = draw(st.one_of(st.none(), st.integers(-50, 50), st.floats(-1e3, 1e3, allow_nan=False)))
                if value is not None:
                    e["value"] = value
                events.append(e)
                known.append(e)
            steps.append(("publish", events))
    return steps


def _case(steps, per_message):
    out = []
    for kind, arg in steps:
        if kind == "wait":
            out.append({"advance_processing_time_s": arg})
        elif kind == "watermark":
            out.append({"advance_watermark": format_time_us(arg)})
        elif per_message == 1:
            out.append({"publish": arg})
        else:
            out.append({"publish": [arg[i : i + per_message] for i in range(0, len(arg), per_message)]})
    return {
        "name": "property",
        "start": START,
        "steps": out,
        "config": {"allowed_lateness_s": LATENESS_S, "max_future_skew_s": SKEW_S, "early_firing_s": 30},
    }


def model(steps):
    """SPEC.md sections 2-3, directly: the stored rows and the counters."""
    proc_us = wm_us = START_US
    seen: dict[str, int] = {}
    metrics = Counter()
    rows = defaultdict(lambda: [0, 0, 0.0, None, None])
    for kind, arg in steps:
        if kind == "wait":
            proc_us += arg * US_PER_S
        elif kind == "watermark":
            wm_us = arg
        else:
            for e in arg:
                metrics["events_in"] += 1
                t = parse_event_time(e["event_time"])
                if t > proc_us + SKEW_S * US_PER_S:
                    metrics["dead_letters_future_timestamp"] += 1
                elif t < wm_us - LATENESS_S * US_PER_S:
                    metrics["dead_letters_too_late"] += 1
                elif e["event_id"] in seen:
                    metrics["duplicates_dropped"] += 1
                else:
                    seen[e["event_id"]] = t
                    metrics["events_accepted"] += 1
                    for g, size in (("minute", 60), ("hour", 3600)):
                        w = t // US_PER_S - (t // US_PER_S) % size
                        r = rows[(e["video_id"], e["event_type"], g, w)]
                        r[0] += 1
                        v = e.get("value")
                        if v is not None:
                            r[1] += 1
                            r[2] += v
                            r[3] = v if r[3] is None else min(r[3], v)
                            r[4] = v if r[4] is None else max(r[4], v)
    return {k: tuple(v) for k, v in rows.items()}, metrics


def _stored(result):
    return {
        (r["video_id"], r["event_type"], r["granularity"], parse_event_time(r["window_start"]) // US_PER_S): (
            r["count"],
            r["value_count"],
            r["sum"],
            r["min"],
            r["max"],
        )
        for r in result["rows"]
    }


def _diff(got, want):
    """Keys whose rows differ (or exist on one side only), with both values."""
    out = {}
    for k in got.keys() | want.keys():
        g, w = got.get(k), want.get(k)
        if (
            g is None
            or w is None
            or any(
                (x is None) != (y is None) or (x is not None and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9))
                for x, y in zip(g, w)
            )
        ):
            out[k] = {"stored": g, "model": w}
    return out


def _check_against_the_model(steps, runner="local", parallelism=1):
    """Run the stream one event per message and four per message; both must equal ``model``."""
    want_rows, want_metrics = model(steps)
    one_per_message = run_case(_case(steps, 1), runner, parallelism)
    batched = run_case(_case(steps, 4), runner, parallelism)
    assert _diff(_stored(one_per_message), want_rows) == {}
    assert _diff(_stored(batched), want_rows) == {}
    for name in (
        "events_in",
        "events_accepted",
        "duplicates_dropped",
        "dead_letters_too_late",
        "dead_letters_future_timestamp",
    ):
        assert one_per_message["metrics"].get(name, 0) == want_metrics[name], name
        assert batched["metrics"].get(name, 0) == want_metrics[name], name
    valid = want_metrics["events_in"] - want_metrics["dead_letters_future_timestamp"]
    assert one_per_message["archived_events"] == batched["archived_events"] == valid  # late ones too


# Each example runs two pipelines (~3 s each locally, ~15 s each on Flink); no shrinking
# phase, which would run hundreds.
_EXAMPLES = dict(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@settings(max_examples=12, **_EXAMPLES)
@given(streams())
def test_stored_aggregates_equal_the_model_for_any_batching(bigtable_host, steps):
    _check_against_the_model(steps)


@pytest.mark.flink
@settings(max_examples=5, **_EXAMPLES)
@given(streams())
def test_stored_aggregates_equal_the_model_on_flink_at_parallelism_2(bigtable_host, steps):
    _check_against_the_model(steps, "flink", 2)
