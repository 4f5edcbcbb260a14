"""Parquet archive: the raw archive's closed hours as typed, deduplicated Parquet
(docs/contract.md, "Parquet archive").

Layout (Hive-style partitions, one file per hour, written by ``pipelines.compact``)::

    <parquet root>/dt=YYYY-MM-DD/hour=HH/part-0.parquet

``dt``/``hour`` are the UTC date and hour of the *event time*, like the raw archive's
``YYYY/MM/DD/HH`` folders (``schemas.archive``); files being written wait under
``<parquet root>/_staging/`` (outside every ``dt=`` folder, so no reader sees them).

Columns (``SCHEMA``), one row per distinct ``event_id`` of the hour:

==============  =========================  =====================================================
column          type                       meaning
==============  =========================  =====================================================
event_id        string, not null           the dedup key
video_id        string, not null           the counted entity
event_type      string, not null           ``[a-z0-9_]+``
event_time      timestamp[us, UTC], not    the event time to the microsecond (an RFC 3339 string
                null                       with any offset, or integer milliseconds, as sent)
value           float64, nullable          the value; null when absent or ``null``
extra           string, not null           the other fields as one compact JSON object (``{}``
                                           when none), numbers and strings exactly as archived
written_ms      int64, not null            the archive file's ``<written>`` time, epoch ms
source_file     string, not null           the archive file's name (``events-....jsonl``; its
                                           folder is the row's hour)
line            int32, not null            the line number in that file, from 1
==============  =========================  =====================================================

Rows are in *archive order* ``(written_ms, source_file, line)`` (``ORDER_KEY``), and of
the copies of one ``event_id`` the hour keeps the first in that order: the copy a
recompute from the JSONL counts too (``transforms.batch_count``'s ``(written_ms, file_name, line)`` key is the same
triple: the file's name and 1-based line number). The footer's key-value metadata
``viewcounts.source_files`` is the JSON list of every archive file merged so far (a file
whose lines were all duplicates included), so a later run merges only files that arrived
since (late events are archived in their event time's hour, whenever they come).

Reading back (``hour_payloads``, ``range_payloads``): each row becomes the compact JSON of
an event object ``{"event_id", "video_id", "event_type", "event_time": RFC 3339 UTC with
6 fraction digits, "value"?, <extra fields>}``, which parses (``schemas.event.parse_payload``) to the same
fields, the same microsecond and the same float value as the archived line; field order
and the spelling of ``event_time`` are normalised, and a ``"value": null`` reads back
absent (both mean "no value", docs/contract.md, "Input events").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.archive import ARCHIVE_WINDOW_S, outside_its_hour
from schemas.event import MAX_NESTING, Event, _dumps, _loads, validate_object

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("extra", pa.string(), nullable=False),
        pa.field("written_ms", pa.int64(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("line", pa.int32(), nullable=False),
    ]
)
ORDER_KEY = ("written_ms", "source_file", "line")
KNOWN_FIELDS = ("event_id", "video_id", "event_type", "event_time", "value")
PART_NAME = "part-0.parquet"
STAGING_FOLDER = "_staging"
SOURCE_FILES_KEY = b"viewcounts.source_files"
RFC3339_US = "%Y-%m-%dT%H:%M:%SZ"  # Arrow's %S of a timestamp[us] has the 6 fraction digits

# DuckDB recipe (README; tests/test_parquet_archive.py runs it): the hour
# aggregates per (video_id, event_type) straight from the Parquet folders. Dedup across hours
# keeps the first copy in archive order, as the recompute does (a re-stamped copy may sit in
# another hour); ``dt``/``hour`` come from the folder names, and a WHERE on them reads only
# those folders. ``{root}``: the Parquet root (a local folder, or gs:// with DuckDB's httpfs).
DUCKDB_HOURLY_SQL = """
SELECT video_id, event_type, dt, hour,
       count(*) AS count, count(value) AS value_count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM (
    SELECT * FROM read_parquet('{root}/dt=*/hour=*/*.parquet', hive_partitioning = true)
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY written_ms, source_file, line) = 1
)
GROUP BY video_id, event_type, dt, hour
ORDER BY video_id, event_type, dt, hour
"""

# One archive position: (written_ms, source_file name, line from 1), the order key of transforms.batch_count.
OrderKey = tuple[int, str, int]


def hour_partition(root: str, hour_s: int) -> str:
    """The folder of one hour (epoch seconds of its start): ``<root>/dt=YYYY-MM-DD/hour=HH``."""
    t = dt.datetime.fromtimestamp(hour_s, dt.timezone.utc)
    return f"{root.rstrip('/')}/dt={t:%Y-%m-%d}/hour={t:%H}"


def hour_part_path(root: str, hour_s: int) -> str:
    return f"{hour_partition(root, hour_s)}/{PART_NAME}"


class RowBuilder:
    """Columns of ``SCHEMA`` built one archived event at a time; ``table()`` when done."""

    def __init__(self) -> None:
        self._cols: dict[str, list] = {f.name: [] for f in SCHEMA}

    def add(self, event: Event, extra: bytes, key: OrderKey) -> None:
        """``extra``: compact JSON object of the event's other fields (``b"{}"`` for none)."""
        c = self._cols
        c["event_id"].append(event.event_id)
        c["video_id"].append(event.video_id)
        c["event_type"].append(event.event_type)
        c["event_time"].append(event.time_us)
        c["value"].append(event.value)
        c["extra"].append(extra.decode("utf-8"))
        c["written_ms"].append(key[0])
        c["source_file"].append(key[1])
        c["line"].append(key[2])

    def add_line(self, line: bytes, key: OrderKey, folder_hour_s: int | None = None) -> int:
        """Add one archived line: an event object, or a JSON array of them (a batch line, each
        item judged on its own and added under the line's ``key``, as the recompute reads it:
        ``transforms.batch_count``). Returns how many items were no valid event (a line that is
        not JSON counts as one), adding nothing for them (the archive holds only valid ones: a
        damaged file). With ``folder_hour_s``, an event whose time is not in that hour counts as
        no valid event too (``schemas.archive.outside_its_hour``, as the recompute reads it)."""
        try:
            doc = _loads(line)
        except ValueError:  # UnicodeDecodeError and the nesting limit included
            return 1
        bad = 0
        for obj in doc if type(doc) is list else [doc]:
            event = validate_object(obj, line)
            if type(event) is not Event or (folder_hour_s is not None and outside_its_hour(event, folder_hour_s)):
                bad += 1
                continue
            extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
            self.add(event, _dumps(extra, MAX_NESTING) if extra else b"{}", key)
        return bad

    def __len__(self) -> int:
        return len(self._cols["event_id"])

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self._cols, schema=SCHEMA)


def first_in_archive_order(table: pa.Table) -> pa.Table:
    """The rows of a ``SCHEMA`` table sorted by ``ORDER_KEY``, keeping the first of each ``event_id``."""
    table = table.sort_by([(k, "ascending") for k in ORDER_KEY])
    firsts = (
        pa.table({"event_id": table["event_id"], "i": pa.array(range(len(table)), pa.int64())})
        .group_by("event_id", use_threads=False)
        .aggregate([("i", "min")])
    )
    if len(firsts) == len(table):
        return table
    i_min = firsts["i_min"]
    return table.take(pc.take(i_min, pc.sort_indices(i_min)))


def with_sources(table: pa.Table, sources: Iterable[str]) -> pa.Table:
    """``table`` carrying ``sources`` (sorted, distinct) as its ``viewcounts.source_files`` metadata."""
    return table.replace_schema_metadata({SOURCE_FILES_KEY: orjson.dumps(sorted(set(sources)))})


def _open(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, mime_type="application/octet-stream", compression_type="uncompressed")


def read_part(path: str) -> pa.Table:
    """A Parquet part (local or ``gs://``, through Beam's ``FileSystems``) as a ``SCHEMA`` table
    without metadata. Raises ``OSError``/``ArrowInvalid`` for a missing or broken file."""
    with _open(path) as f:
        return pq.ParquetFile(f).read().cast(SCHEMA)


def part_sources(path: str) -> tuple[list[str], int]:
    """``(viewcounts.source_files, rows)`` of a Parquet part, from its footer alone."""
    with _open(path) as f:
        meta = pq.ParquetFile(f).metadata
    kv = meta.metadata or {}
    return (orjson.loads(kv[SOURCE_FILES_KEY]) if SOURCE_FILES_KEY in kv else []), meta.num_rows


def payload_of(
    event_id: str, video_id: str, event_type: str, event_time: str, value: float | None, extra: str
) -> bytes:
    """An event object's compact JSON from its columns (``event_time`` already as RFC 3339 text)."""
    known = {"event_id": event_id, "video_id": video_id, "event_type": event_type, "event_time": event_time}
    if value is not None:
        known["value"] = value
    head = orjson.dumps(known)
    # extra is already JSON (it may hold numbers orjson cannot read): spliced, not re-encoded
    return head if extra == "{}" else head[:-1] + b"," + extra[1:].encode("utf-8")


def table_columns(batch: pa.RecordBatch | pa.Table) -> dict[str, list]:
    """The columns of ``SCHEMA`` rows as Python lists, in row order, for code that needs no
    JSON: ``event_id``, ``video_id``, ``event_type``, ``extra`` (str), ``time_us`` (epoch µs,
    int: ``event_time``), ``value`` (float or None), ``written_ms``, ``source_file``, ``line``."""
    cols = {name: _pylist(batch[name]) for name in ("event_id", "video_id", "event_type", "extra", *ORDER_KEY)}
    cols["time_us"] = _pylist(batch["event_time"].cast(pa.int64()))
    # value is finite where not null (schemas.event.MAX_ABS_VALUE): NaN marks the nulls in numpy's copy
    cols["value"] = [None if v != v else v for v in _pylist(batch["value"])]
    return cols


def _pylist(column) -> list:
    """``column.to_pylist()``, ten times faster through numpy (measured; null floats become NaN)."""
    return column.to_numpy(zero_copy_only=False).tolist()


def table_payloads(table: pa.Table) -> Iterator[tuple[bytes, OrderKey]]:
    """``(payload, (written_ms, source_file, line))`` per row of a ``SCHEMA`` table, in its order."""
    for batch in table.to_batches():
        c = table_columns(batch)
        times = _pylist(pc.strftime(batch["event_time"], format=RFC3339_US))
        for row in zip(
            c["event_id"],
            c["video_id"],
            c["event_type"],
            times,
            c["value"],
            c["extra"],
            c["written_ms"],
            c["source_file"],
            c["line"],
        ):
            yield payload_of(*row[:6]), row[6:]


def _hour_table(root: str, hour_s: int) -> pa.Table | None:
    from apache_beam.io.filesystems import FileSystems

    path = hour_part_path(root, hour_s)
    return read_part(path) if FileSystems.exists(path) else None


def hour_payloads(root: str, hour_s: int) -> Iterator[tuple[bytes, OrderKey]]:
    """The compacted events of one hour (epoch seconds of its start) under a Parquet root, local
    or ``gs://``: ``(payload bytes, (written_ms, source_file, line))`` in archive order, one per
    distinct ``event_id``; nothing for an hour not compacted (no part)."""
    table = _hour_table(root, hour_s)
    if table is not None:
        yield from table_payloads(table)


def hour_columns(root: str, hour_s: int) -> dict[str, list] | None:
    """``table_columns`` of one hour's part (archive order, one row per distinct ``event_id``),
    or None for an hour not compacted: the recompute's input without a JSON round trip."""
    table = _hour_table(root, hour_s)
    return None if table is None else table_columns(table)


def range_payloads(root: str, start_s: int, end_s: int) -> Iterator[tuple[bytes, OrderKey]]:
    """``hour_payloads`` of every hour in ``[start_s, end_s)`` (hour-aligned epoch seconds), in hour order."""
    for hour_s in range(start_s - start_s % ARCHIVE_WINDOW_S, end_s, ARCHIVE_WINDOW_S):
        yield from hour_payloads(root, hour_s)
