"""Raw archive and dead-letter file layout (docs/contract.md, "Raw archive" and "Dead-letter files").

Raw archive (every valid event: accepted, late or duplicate; docs/contract.md, "Acceptance"):

    <root>/YYYY/MM/DD/HH/events-<written>-<run id>-<unique>.jsonl

One line per event: the event object as it was published (compact JSON, unknown fields
kept), so an archive file is itself replayable input. The folder is the UTC hour of the
*event time*, so a batch recompute of a time range reads only that range's folders; an
event that arrives late is one more file in its own hour's folder. A file holds one
bundle's lines of one hour (``transforms.files``): ``<written>`` is when it was written
(UTC, milliseconds: ``20240514T100012.345Z``), ``<run id>`` the job run that wrote it
(``new_run_id``: one per job start), ``<unique>`` random, so no bundle, retry or worker
ever overwrites another's file. A retried bundle may leave a second copy of its lines:
readers deduplicate by ``event_id``.

Dead-letter files use the same layout under their own root, with the *processing time*
hour as folder and one JSON object per line (``DeadLetter.to_json``).

Restart markers live beside the archive, under its ``_restarts`` folder (``schemas.restart_markers``).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from dataclasses import dataclass

import orjson

from schemas.event import Event, Rejection

ARCHIVE_WINDOW_S = 3600
ARCHIVE_FILE_PREFIX = "events"


def hour_folder(root: str, window_start_s: int) -> str:
    t = dt.datetime.fromtimestamp(window_start_s, dt.timezone.utc)
    return f"{root.rstrip('/')}/{t:%Y/%m/%d/%H}"


def hour_of_us(time_us: int) -> int:
    """The UTC hour (epoch seconds) holding an instant in epoch microseconds."""
    s = time_us // 1_000_000
    return s - s % ARCHIVE_WINDOW_S


def outside_its_hour(event: Event, folder_hour_s: int) -> Rejection | None:
    """The rejection of an archived event whose event time is not in the hour of the folder
    holding it (``bad_timestamp``), or None. The streaming job archives every event in its
    event time's hour, so such a line was put there by hand or copied from elsewhere; readers
    of an hour (the recompute, compaction) count only that hour's events, so a recompute of
    some hours never writes windows outside them."""
    if hour_of_us(event.time_us) == folder_hour_s:
        return None
    return Rejection(
        "bad_timestamp",
        f"event_time is outside the archive hour of its folder "
        f"({dt.datetime.fromtimestamp(folder_hour_s, dt.timezone.utc):%Y-%m-%dT%H}:00Z)",
        event.raw,
    )


def new_run_id() -> str:
    """A job run's id in file names: 10 lowercase hex digits, random."""
    return uuid.uuid4().hex[:10]


def file_name(prefix: str, written_ms: int, run_id: str, unique: str) -> str:
    """An archive or dead-letter file's name (see the module docstring)."""
    t = dt.datetime.fromtimestamp(written_ms // 1000, dt.timezone.utc)
    return f"{prefix}-{t:%Y%m%dT%H%M%S}.{written_ms % 1000:03d}Z-{run_id}-{unique}.jsonl"


@dataclass(frozen=True)
class FileName:
    """The parts of a ``file_name``: ``hour_s`` comes from the folder (epoch seconds)."""

    hour_s: int
    written_ms: int
    run_id: str


_FILE_RE = re.compile(r".*/(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+-(\d{8}T\d{6})\.(\d{3})Z-([0-9a-f]+)-[0-9a-f]+\.jsonl$")


def parse_file_path(path: str) -> FileName | None:
    """``FileName`` of an archive file path, or None for a path not laid out by ``file_name``."""
    m = _FILE_RE.match(path)
    if not m:
        return None
    y, mo, d, h, written, ms, run_id = m.groups()
    hour = dt.datetime(int(y), int(mo), int(d), int(h), tzinfo=dt.timezone.utc)
    t = dt.datetime.strptime(written, "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
    return FileName(int(hour.timestamp()), int(t.timestamp()) * 1000 + int(ms), run_id)


def local_lines(root: str):
    """Every non-empty line of every ``.jsonl`` file under a local folder (any depth)."""
    import glob

    for path in glob.glob(f"{root}/**/*.jsonl", recursive=True):
        with open(path, "rb") as f:
            yield from (line.rstrip(b"\r\n") for line in f if line.strip())


# A Pub/Sub copy of a dead letter carries at most this much of its payload: gRPC clients
# refuse received messages over 4 MiB by default (the portable source did), and
# Pub/Sub refuses messages over 10 MB with their attributes.
MAX_PUBLISHED_PAYLOAD_BYTES = 1_000_000
MAX_ATTRIBUTE_BYTES = 1024  # Pub/Sub's limit for one attribute value


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input: original bytes, reason code (docs/contract.md, "Dead letters"), detail, and the
    processing time (epoch microseconds) at which it was rejected."""

    payload: bytes
    reason: str
    detail: str
    processing_time_us: int

    def to_json(self) -> bytes:
        """One dead-letter file line; a detail with lone surrogates has them replaced."""
        return orjson.dumps(
            {
                "reason": self.reason,
                "detail": self.detail.encode("utf-8", "replace").decode("utf-8"),
                "processing_time_us": self.processing_time_us,
                "payload_base64": base64.b64encode(self.payload).decode("ascii"),
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> DeadLetter:
        d = orjson.loads(line)
        return cls(base64.b64decode(d["payload_base64"]), d["reason"], d["detail"], d["processing_time_us"])

    def pubsub_message(self, max_payload_bytes: int = MAX_PUBLISHED_PAYLOAD_BYTES) -> tuple[bytes, dict[str, str]]:
        """The dead letter's Pub/Sub copy ``(data, attributes)``: data is the payload, cut to
        its first ``max_payload_bytes`` bytes when longer (attributes ``truncated: "true"`` and
        ``payload_bytes``: the full size; the full payload is in the dead-letter files).
        Attributes ``reason``, ``detail`` (cut to ``MAX_ATTRIBUTE_BYTES`` UTF-8 bytes, lone
        surrogates replaced), ``processing_time_us``; the whole message stays under
        ``max_payload_bytes`` + 2 KiB, far below Pub/Sub's 10 MB."""
        attributes = {
            "reason": self.reason,
            "detail": _utf8_prefix(self.detail, MAX_ATTRIBUTE_BYTES),
            "processing_time_us": str(self.processing_time_us),
            "payload_bytes": str(len(self.payload)),
        }
        if len(self.payload) <= max_payload_bytes:
            return self.payload, attributes
        return self.payload[:max_payload_bytes], {**attributes, "truncated": "true"}


def _utf8_prefix(text: str, max_bytes: int) -> str:
    """``text`` as valid UTF-8 (lone surrogates replaced), cut to at most ``max_bytes`` bytes
    on a character boundary."""
    return text.encode("utf-8", "replace")[:max_bytes].decode("utf-8", "ignore")
