"""Deterministic benchmark workloads and the one aggregate format every measured system returns.

A workload is a folder with
* ``messages.jsonl``: one Pub/Sub message payload per line (a JSON array of events, or one
  event object when ``events_per_message == 1``), in arrival order;
* ``events.jsonl``: the same events, one object per line, in the same order (for peers
  that read one row per line, such as PyFlink SQL's ``json`` format);
* ``workload.json``: the parameters and facts (``arrival_us``: a processing time at which
  every event is inside the acceptance checks of docs/contract.md, Acceptance).

Events: ``event_id`` a UUID-shaped string (36 characters, the realistic size for the
dedup-state figure), ``video_id`` drawn from a Zipf law (exponent ``zipf_s``) over
``videos`` ranks, ``event_type`` ``view`` (80%), ``like`` (10%) or ``watch`` (10%, with an
integer ``value`` of seconds, so every system's sums are exact and comparable bit for bit),
``event_time`` RFC 3339 with milliseconds. Stream time runs evenly over ``span_s``; each
event's time lags its place in the stream by up to ``disorder_s`` (out-of-order arrival);
a ``duplicate_rate`` share of events is sent again, with the same id and event time, up
to ``disorder_s`` later (a redelivery).

Aggregates: ``{(video_id, event_type, granularity, window_start_s): (count, value_count,
sum, min, max)}`` with ``granularity`` ``minute`` or ``hour`` (docs/contract.md, Aggregates; ``avg``
is derived). Stored as JSON lines by ``write_aggregates``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

Key = tuple  # (video_id, event_type, granularity, window_start_s)
Agg = tuple  # (count, value_count, sum, min, max)
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
_TYPES = ("view", "like", "watch")
_TYPE_P = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class WorkloadSpec:
    events: int = 200_000
    videos: int = 100_000
    events_per_message: int = 1000
    duplicate_rate: float = 0.0
    disorder_s: int = 30
    span_s: int = 3600
    zipf_s: float = 1.1
    seed: int = 7

    def __post_init__(self) -> None:
        if self.events < 1 or self.videos < 1 or self.events_per_message < 1 or self.span_s < 1:
            raise ValueError(f"events, videos, events_per_message and span_s must be >= 1: {self}")
        if not 0 <= self.duplicate_rate < 1:
            raise ValueError(f"duplicate_rate must be in [0, 1), got {self.duplicate_rate}")

    def name(self) -> str:
        digest = hashlib.sha1(orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]
        return f"e{self.events}-v{self.videos}-m{self.events_per_message}-d{self.duplicate_rate:g}-{digest}"


@dataclass(frozen=True)
class Workload:
    folder: Path
    spec: WorkloadSpec
    messages: int
    arrival_us: int

    @property
    def messages_path(self) -> Path:
        return self.folder / "messages.jsonl"

    @property
    def events_path(self) -> Path:
        return self.folder / "events.jsonl"


def _zipf_ranks(rng: np.random.Generator, n: int, ranks: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, ranks + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")


def generate(spec: WorkloadSpec, root: Path) -> Workload:
    """Write (or reuse, when the same spec was generated before under ``root``) a workload."""
    folder = Path(root) / spec.name()
    meta_path = folder / "workload.json"
    if meta_path.exists():
        meta = orjson.loads(meta_path.read_bytes())
        return Workload(folder, spec, meta["messages"], meta["arrival_us"])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    n = spec.events
    video = _zipf_ranks(rng, n, spec.videos, spec.zipf_s)
    kind = rng.choice(len(_TYPES), size=n, p=_TYPE_P)
    value = rng.integers(1, 3601, size=n)
    stream_ms = np.arange(n, dtype=np.int64) * spec.span_s * 1000 // n
    event_ms = stream_ms - rng.integers(0, spec.disorder_s * 1000 + 1, size=n)
    ids = rng.bytes(16 * n)
    start_ms = int(START.timestamp() * 1000)
    events = []
    for i in range(n):
        h = ids[16 * i : 16 * i + 16].hex()
        t = START + dt.timedelta(milliseconds=int(event_ms[i]))
        ev = {
            "event_id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
            "video_id": f"video-{video[i]:07d}",
            "event_type": _TYPES[kind[i]],
            "event_time": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
        }
        if kind[i] == 2:
            ev["value"] = int(value[i])
        events.append((int(stream_ms[i]), ev))
    copies = np.flatnonzero(rng.random(n) < spec.duplicate_rate)
    delays = rng.integers(0, spec.disorder_s * 1000 + 1, size=len(copies))
    events += [(events[i][0] + int(d), events[i][1]) for i, d in zip(copies, delays)]
    events.sort(key=lambda e: e[0])  # stable: a copy never precedes its original
    per = spec.events_per_message
    with open(folder / "messages.jsonl", "wb") as msgs, open(folder / "events.jsonl", "wb") as flat:
        for i in range(0, len(events), per):
            batch = [ev for _, ev in events[i : i + per]]
            msgs.write(orjson.dumps(batch[0] if per == 1 else batch) + b"\n")
            flat.write(b"".join(orjson.dumps(ev) + b"\n" for ev in batch))
    messages = -(-len(events) // per)
    arrival_us = (start_ms + spec.span_s * 1000 + spec.disorder_s * 1000) * 1000
    meta_path.write_bytes(
        orjson.dumps({"spec": asdict(spec), "messages": messages, "events_sent": len(events), "arrival_us": arrival_us})
    )
    return Workload(folder, spec, messages, arrival_us)


def own_peak_rss_mb() -> float:
    """This process's peak resident memory since its ``exec`` (``VmHWM``; ``ru_maxrss``
    would include the forking parent's memory on Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_aggregates(aggs: dict, path: Path) -> None:
    with open(path, "wb") as f:
        for key, agg in aggs.items():
            f.write(orjson.dumps([*key, *agg]) + b"\n")


def read_aggregates(path: Path) -> dict:
    out = {}
    with open(path, "rb") as f:
        for line in f:
            row = orjson.loads(line)
            out[tuple(row[:4])] = (row[4], row[5], float(row[6]), *(None if v is None else float(v) for v in row[7:9]))
    return out


def differences(expected: dict, actual: dict, limit: int = 5) -> list[str]:
    """Up to ``limit`` human-readable differences between two aggregate maps (empty when equal)."""
    out = []
    for key in sorted(expected.keys() | actual.keys(), key=repr):
        if expected.get(key) != actual.get(key):
            out.append(f"{key}: expected {expected.get(key)}, got {actual.get(key)}")
            if len(out) >= limit:
                break
    return out
