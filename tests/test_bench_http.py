"""The ``http`` part of ``viewcounts bench`` (``viewcounts.bench.http``, harness ``http``): the
step rule on generated attack results, the part selection of ``--parts``/``--skip``, and a
real short Vegeta attack on the emulator-backed service through the harness part (keys and
plumbing; no timing is asserted: timings belong to the harness)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viewcounts.bench import http as bench_http
from viewcounts.bench.harness import CORE_PARTS, HTTP_KEYS, PARTS, QUICK, http, parts_skipped
from viewcounts.bench.http import HELD_SHARE, KINDS, TARGET_P99_MS, Result, summary

results_st = st.lists(
    st.tuples(st.floats(0.1, 200.0), st.sampled_from([200, 200, 200, 500, 0]), st.floats(0.0, 5.0)),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(rows=results_st, offered=st.integers(1, 400))
def test_a_step_is_held_exactly_when_p99_errors_and_rate_allow(rows, offered):
    results = [
        Result(f"u{i}", code, ms, "" if code else "connection refused", 1e9 + sent)
        for i, (ms, code, sent) in enumerate(rows)
    ]
    s = summary(results, offered)
    ok = [r for r in results if r.status == 200]
    assert s["requests"] == len(results) and s["errors"] == len(results) - len(ok)
    span = max(r.sent_s + r.latency_ms / 1e3 for r in results) - min(r.sent_s for r in results)
    achieved = len(ok) / span if span > 0 else 0.0
    assert s["achieved_rps"] == pytest.approx(achieved, abs=0.06)
    ms = [r.latency_ms for r in results]
    assert min(ms) - 0.01 <= s["p50_ms"] <= s["p99_ms"] <= max(ms) + 0.01
    p99 = float(np.percentile(ms, 99))
    held = p99 <= TARGET_P99_MS and len(ok) == len(results) and achieved >= HELD_SHARE * offered
    if abs(p99 - TARGET_P99_MS) > 0.01 and abs(achieved - HELD_SHARE * offered) > 0.1:  # clear of rounding
        assert s["held"] == held


@given(parts=st.sets(st.sampled_from(PARTS)), skip=st.sets(st.sampled_from(PARTS)))
def test_parts_run_only_what_is_named_and_skip_wins(parts, skip):
    skipped = parts_skipped([",".join(sorted(parts))] if parts else [], [",".join(sorted(skip))])
    run = set(PARTS) - skipped
    assert not run & skip
    if not parts:
        assert run == set(PARTS) - skip
    else:
        wanted = parts | ({"core"} if parts & set(CORE_PARTS) else set())
        assert run == wanted - skip


def test_unknown_parts_are_refused_by_name():
    with pytest.raises(ValueError, match="htp"):
        parts_skipped(["http,htp"], [])


@pytest.mark.emulator
@pytest.mark.skipif(not os.path.exists(bench_http.VEGETA), reason="needs `make vegeta`")
def test_the_http_part_attacks_the_service_and_reports_every_key():
    cfg = replace(QUICK, http_rate=100, http_seconds=2.0, http_step_rates=(100, 50), http_step_s=1.0, http_videos=2)
    res = http(cfg, progress=print)
    assert set(HTTP_KEYS) <= set(res)
    assert res["http_offered_rps"] == 100 and res["http_requests"] == 200 and res["http_videos"] == 2
    assert res["http_errors"] == 0 and res["http_achieved_rps"] > 0
    assert set(res["http_kinds"]) == set(KINDS)
    assert sum(k["requests"] for k in res["http_kinds"].values()) == 200
    for kind, k in res["http_kinds"].items():
        assert k["requests"] > 0, kind
        assert 0 < res[f"http_{kind}_p50_ms"] <= res[f"http_{kind}_p99_ms"] < 10_000
    # the steps are offered in ascending order; the maximum held is the last step held
    steps = res["http_steps"]
    assert [s["offered_rps"] for s in steps] == [50, 100][: len(steps)] and steps
    assert all(s["held"] for s in steps[:-1])
    assert res["http_max_rps_p99_50ms"] == max([s["offered_rps"] for s in steps if s["held"]], default=0)
    assert all(0 <= res[f"http_{p}_cpu_share"] < 4 for p in ("server", "emulator", "vegeta", "other"))
    assert all(0 <= s["other_cpu_share"] < 4 for s in steps)
