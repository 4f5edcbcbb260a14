"""Minimal Prism reproducer: an event-time timer on one key fires at T while on-time
elements with timestamps < T, on other keys of the same stateful stage, are still
waiting in that stage (Beam 2.70.0 Prism).

    python docs/repro/prism_timers_before_data.py --prism_location=/work/main/build/bin/prism   # Prism (default)
    python docs/repro/prism_timers_before_data.py --runner=FlinkRunner ...                      # same job elsewhere

Pipeline: a splittable DoFn source with a ManualWatermarkEstimator, in three steps
(one self-checkpointed bundle each, 1 s apart):

  step 0: watermark := T0, emit ("probe-i", T0) for 4 probe keys
  step 1: emit ("data-j", T0 + 60 s) for 8 data keys      (on time: watermark is T0)
  step 2: watermark := T0 + 1 day                         (nothing earlier will come)

-> a stateful DoFn: a probe element sets an event-time timer at T0 + 1 h; a data element
is only recorded. The data elements are on time, so under the Beam model the stage's
input watermark cannot pass T0 + 60 s before they are processed, and no timer at
T0 + 1 h may fire before them (Flink guarantees it: watermarks travel behind the data).

On Prism 2.70.0 (engine/elementmanager.go):
  * a stateful stage is only scheduled when its watermark moves (stageState.bundleReady,
    "unchanged upstream watermark"), so the data of step 1 waits in the stage until
    step 2 moves the source watermark;
  * that bundle is then built with the *upstream* watermark (bundleReady returns
    upstreamW, not ss.input which does count the pending data), so the probe timers at
    T0 + 1 h are put into the same bundle as the T0 + 60 s data of other keys, in map
    (random) key order: some timers run before the data.
Exit status 1 when the violation is seen.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

T0 = Timestamp(1_357_035_420)  # 2013-01-01T10:17:00Z
TIMER_AT = T0 + Duration(seconds=3600)
PROBES, DATA = 4, 8
# (wall time, what, key, event time µs, bundle) lines, appended by the workers (DoFns are
# pickled by value, so a module-level list would not be shared).
LOG_PATH = os.environ.setdefault("REPRO_PRISM_LOG", tempfile.mktemp(prefix="repro-prism-", suffix=".jsonl"))


def log(what: str, key: str, ts: Timestamp, bundle: str | None = None) -> None:
    with open(LOG_PATH, "a") as f:
        f.write(json.dumps([time.time(), what, key, ts.micros, bundle]) + "\n")


class _Steps(RestrictionProvider):
    def initial_restriction(self, element):
        return OffsetRange(0, 3)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return 1


class Source(beam.DoFn):
    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        _,
        tracker=beam.DoFn.RestrictionParam(_Steps()),  # noqa: B008 (Beam: the provider, once)
        wm=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),  # noqa: B008 (Beam: the provider, once)
    ):
        step = tracker.current_restriction().start
        if not tracker.try_claim(step):
            return
        if step == 0:
            wm.set_watermark(T0)
            for i in range(PROBES):
                yield TimestampedValue((f"probe-{i}", 0), T0)
        elif step == 1:
            for j in range(DATA):
                log("emit", f"data-{j}", T0 + Duration(seconds=60))
                yield TimestampedValue((f"data-{j}", 1), T0 + Duration(seconds=60))
        else:
            time.sleep(3)  # Prism ignores the resume delay; this gives the stateful stage time to take the data
            log("watermark", "source", T0 + Duration(seconds=86400))
            wm.set_watermark(T0 + Duration(seconds=86400))
        tracker.defer_remainder(Duration(seconds=1))


class Judge(beam.DoFn):
    TIMER = TimerSpec("t", TimeDomain.WATERMARK)

    def start_bundle(self):
        self._bundle = uuid.uuid4().hex[:6]

    def process(self, kv, ts=beam.DoFn.TimestampParam, timer=beam.DoFn.TimerParam(TIMER)):
        key, _ = kv
        if key.startswith("probe"):
            timer.set(TIMER_AT)
        else:
            log("process", key, ts, self._bundle)

    @on_timer(TIMER)
    def fired(self, key=beam.DoFn.KeyParam, ts=beam.DoFn.TimestampParam):
        log("timer", key, ts, self._bundle)


def main(argv: list[str]) -> int:
    if not any(a.startswith("--runner") for a in argv):
        argv = [
            "--runner=PrismRunner",
            "--environment_type=LOOPBACK",
            "--experiments=disable_prism_server_singleton",
            *argv,
        ]
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        (p | beam.Impulse() | beam.ParDo(Source()).with_output_types(tuple[str, int]) | beam.ParDo(Judge()))
    with open(LOG_PATH) as f:
        LOG = [(t, what, key, Timestamp(micros=us), b) for t, what, key, us, b in map(json.loads, f)]
    t_start = LOG[0][0]
    for t, what, key, ts, bundle in LOG:  # in the order the worker wrote them
        print(f"{t - t_start:7.3f}s {what:9} {key:8} event time {ts.to_rfc3339()} bundle {bundle}")
    first_timer = next((i for i, r in enumerate(LOG) if r[1] == "timer"), len(LOG))
    late_data = [r for r in LOG[first_timer:] if r[1] == "process"]
    if late_data:
        print(
            f"\nVIOLATION: a timer at {TIMER_AT.to_rfc3339()} fired before {len(late_data)} of {DATA} on-time "
            f"elements at {(T0 + Duration(seconds=60)).to_rfc3339()} (other keys, same stage) were processed."
        )
        return 1
    print("\nOK: every on-time element was processed before any later timer fired.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
