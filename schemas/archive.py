"""Raw archive and dead-letter file layout.

Raw archive (every valid event: accepted, late or duplicate; SPEC.md section 2):

    <root>/YYYY/MM/DD/HH/events-<flush window start>-pane<N>-shard<K>-<unique>.jsonl

One line per event: the event object as it was published (compact JSON, unknown fields
kept), so an archive file is itself replayable input. The folder is the UTC hour of the
*event time*, so a batch recompute of a time range reads only that range's folders; an
event that arrives late is one more file in its own hour's folder. Names carry the flush
window (arrival time), the pane index, the shard and a unique part, so no firing ever
overwrites another one's file. A retried bundle may leave a second copy of a file:
readers deduplicate by ``event_id``.

Dead-letter files use the same layout under their own root, with the *processing time*
hour as folder and one JSON object per line (``DeadLetter.to_json``).
"""
from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

import orjson

ARCHIVE_WINDOW_S = 3600


def hour_folder(root: str, window_start_s: int) -> str:
    t = dt.datetime.fromtimestamp(window_start_s, dt.timezone.utc)
    return f"{root.rstrip('/')}/{t:%Y/%m/%d/%H}"


def hour_of_us(time_us: int) -> int:
    """The UTC hour (epoch seconds) holding an instant in epoch microseconds."""
    s = time_us // 1_000_000
    return s - s % ARCHIVE_WINDOW_S


def file_name(prefix: str, window_start_s: int, pane_index: int, shard: int, unique: str) -> str:
    """A flush window's file. Windows before the epoch are named at the epoch: messages
    pulled before the source's first watermark carry Beam's minimum timestamp
    (``transforms.pubsub_io``), whose window has no calendar date."""
    t = dt.datetime.fromtimestamp(max(window_start_s, 0), dt.timezone.utc)
    return f"{prefix}-{t:%Y%m%dT%H%M%SZ}-pane{pane_index:05d}-shard{shard:03d}-{unique}.jsonl"


def local_lines(root: str):
    """Every non-empty line of every ``.jsonl`` file under a local folder (any depth)."""
    import glob

    for path in glob.glob(f"{root}/**/*.jsonl", recursive=True):
        with open(path, "rb") as f:
            yield from (line.rstrip(b"\r\n") for line in f if line.strip())


def hour_folders(root: str, start_s: int, end_s: int) -> list[str]:
    """Folders holding event hours that overlap ``[start_s, end_s)``."""
    first = start_s - start_s % ARCHIVE_WINDOW_S
    return [hour_folder(root, h) for h in range(first, end_s, ARCHIVE_WINDOW_S)]


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input: original bytes, SPEC.md section 4 reason code, detail, and the
    processing time (epoch microseconds) at which it was rejected."""

    payload: bytes
    reason: str
    detail: str
    processing_time_us: int

    def to_json(self) -> bytes:
        return orjson.dumps({
            "reason": self.reason, "detail": self.detail,
            "processing_time_us": self.processing_time_us,
            "payload_base64": base64.b64encode(self.payload).decode("ascii"),
        })

    @classmethod
    def from_json(cls, line: bytes) -> "DeadLetter":
        d = orjson.loads(line)
        return cls(base64.b64decode(d["payload_base64"]), d["reason"], d["detail"], d["processing_time_us"])

    def pubsub_attributes(self) -> dict[str, str]:
        return {"reason": self.reason, "detail": self.detail[:1024],
                "processing_time_us": str(self.processing_time_us)}
