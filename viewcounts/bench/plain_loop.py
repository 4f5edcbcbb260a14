"""The single-core limit: a plain Python loop computing the same aggregates.

orjson + a ``set`` of seen ids + a ``dict`` of running aggregates; ``datetime.fromisoformat``
for the event time. No validation, no windows, no state backend: what one core can do
when nothing but the arithmetic is left. ``count(path) -> (aggregates, events_read)``.

It is also the reference every system's aggregates are cross-checked against
(``harness.cross_check``), so it shares no code with the product: the fold is written out
here, not ``transforms.aggregate``'s, and a fault in the product's cannot pass unseen.
"""

from __future__ import annotations

import datetime as dt

import orjson

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def count(messages_path) -> tuple[dict, int]:
    seen: set = set()
    accs: dict = {}
    fromiso = dt.datetime.fromisoformat
    read = 0
    with open(messages_path, "rb") as f:
        for line in f:
            doc = orjson.loads(line)
            for ev in doc if isinstance(doc, list) else (doc,):
                read += 1
                eid = ev["event_id"]
                if eid in seen:
                    continue
                seen.add(eid)
                t = ev["event_time"]
                s = int(t) // 1000 if isinstance(t, int) else int((fromiso(t) - _EPOCH).total_seconds())
                v = ev.get("value")
                for gran, start in (("minute", s - s % 60), ("hour", s - s % 3600)):
                    key = (ev["video_id"], ev["event_type"], gran, start)
                    a = accs.get(key)
                    if a is None:
                        a = accs[key] = [0, 0, 0.0, None, None]
                    a[0] += 1
                    if v is not None:
                        a[1] += 1
                        a[2] += v
                        if a[3] is None or v < a[3]:
                            a[3] = v
                        if a[4] is None or v > a[4]:
                            a[4] = v
    return {
        k: (a[0], a[1], float(a[2]), *(None if x is None else float(x) for x in a[3:])) for k, a in accs.items()
    }, read


def main(argv: list[str] | None = None) -> int:
    """``python -m viewcounts.bench.plain_loop MESSAGES_JSONL OUT_AGGREGATES_JSONL``: prints
    ``{"events", "seconds", "peak_rss_mb"}`` as one JSON line."""
    import sys
    import time

    from viewcounts.bench.workload import own_peak_rss_mb, write_aggregates

    messages, out = argv if argv is not None else sys.argv[1:]
    started = time.perf_counter()
    aggs, events = count(messages)
    seconds = time.perf_counter() - started
    write_aggregates(aggs, out)
    sys.stdout.write(
        orjson.dumps({"events": events, "seconds": seconds, "peak_rss_mb": own_peak_rss_mb()}).decode() + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
