"""Write enriched aggregates to Bigtable as idempotent overwrites (layout: schemas/storage.py).

Input: ``list[EnrichedRow]`` (the rows of one firing), or ``list[transforms.top.TopRow]`` (top
lists; any mix: ``cell_of`` addresses and encodes either). Each pane becomes one
``SetCell`` with an explicit millisecond timestamp (the pane's ``cell_timestamp_us``) in the
row of its window's period. Cells for the same row are grouped into one row mutation; one ``MutateRows``
request carries at most ``max_mutations_per_request`` cells (Bigtable's limit is 100,000).

Write budget (docs/decisions.md, "The sink writes raw protobuf requests with a write budget":
no outage stalls the job for ever; docs/contract.md, "Dead letters", ``write_failed``). Each bundle
has ``write_budget_s`` seconds of wall time in all, counted from the start of its first write,
for all its flushes (the pending cells, written at the end of the bundle or whenever
``max_mutations_per_request`` cells are pending), requests and retries: a bundle of many
flushes is not held flushes x budget (nor a checkpoint waiting for the bundle). Within the
budget the sink makes attempts of at most
``attempt_timeout_s`` seconds each (one ``MutateRows`` call, no retry inside it: every cell
carries an explicit timestamp, so every entry is idempotent), and retries the cells that
failed with a retryable code (``RETRYABLE_CODES``: unavailable, deadline exceeded, aborted,
internal, resource exhausted, unknown, cancelled) after a backoff of 0.5 s doubling up to
5 s. When every cell of an attempt failed that way (the service or the channel is down),
the client and its channel are closed and a new client made for the next attempt: a gRPC
connection that met refused connections waits up to two minutes between reconnections,
a new one connects at once. Cells that fail with any other code (not found, invalid
argument, permission denied...), or whose mutation cannot be built, are not retried.
Whatever has not been written when the budget is spent leaves the sink as ``write_failed``
dead letters (the row as JSON, redrivable by ``pipelines.redrive`` with its original cell
timestamp) instead of failing the bundle. A flush of the bundle after its budget is spent
makes one attempt, with no retry, if the bundle's previous attempt wrote every cell it sent
(Bigtable is answering: a long bundle of healthy writes is not cut); if that attempt failed
(Bigtable is down), the flush's cells become ``write_failed`` dead letters at once, without
an attempt. So while Bigtable fails, a bundle is held at most about
``write_budget_s + attempt_timeout_s`` seconds, however many flushes it makes, and no
exception from the client (channel errors, retry errors, gRPC errors on close) leaves the DoFn.

The request is built as raw protobuf messages (``google.bigtable.v2.MutateRowsRequest``)
and sent through the GAPIC client of google-cloud-bigtable's data client (its channel,
credentials and routing headers): the client's own ``RowMutationEntry``/``SetCell`` objects
and their proto-plus conversion cost about eight times as much CPU per cell, which was most
of a worker's time at high rates.

Output: ``DeadLetter`` for rows that could not be written, timestamped with the
processing time of the failure.
"""

from __future__ import annotations

import logging
import time

import apache_beam as beam
import orjson
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from google.cloud.bigtable_v2.types import bigtable as _bigtable_types
from google.rpc import code_pb2

from schemas import storage
from schemas.archive import DeadLetter
from schemas.event import WRITE_FAILED
from transforms import metrics
from transforms.enrich import EnrichedRow
from transforms.top import TopRow

_LOG = logging.getLogger(__name__)


def cell_of(e) -> tuple[bytes, bytes]:
    """``(row key, qualifier)`` of an ``EnrichedRow`` or a ``TopRow``."""
    if isinstance(e, TopRow):
        return storage.top_row_key(e.event_type, e.granularity, e.window_start_s), storage.qualifier(e.window_start_s)
    r = e.row
    return storage.row_key(r.video_id, r.event_type, r.granularity, r.window_start_s), storage.qualifier(
        r.window_start_s
    )


def cell_timestamp_of(e) -> int:
    """The cell timestamp (µs) of an ``EnrichedRow`` or a ``TopRow``."""
    return e.cell_timestamp_us if isinstance(e, TopRow) else e.row.cell_timestamp_us


def cell_value(e) -> bytes:
    """The cell value of an ``EnrichedRow`` or a ``TopRow``; raises ``storage.CellError``."""
    if isinstance(e, TopRow):
        return storage.encode_top(e.items)
    return storage.encode_cell(e.row.aggregate, e.title, e.channel)


def row_to_json(e) -> bytes:
    """An ``EnrichedRow`` or a ``TopRow`` (``"top": true``) as the JSON of a ``write_failed`` dead letter."""
    if isinstance(e, TopRow):
        return orjson.dumps({"top": True, **e._asdict()})
    r = e.row
    a = r.aggregate
    return orjson.dumps(
        {
            "video_id": r.video_id,
            "event_type": r.event_type,
            "granularity": r.granularity,
            "window_start_s": r.window_start_s,
            "pane_index": r.pane_index,
            "cell_timestamp_us": r.cell_timestamp_us,
            "count": a.count,
            "value_count": a.value_count,
            "sum": a.sum,
            "min": a.min,
            "max": a.max,
            "title": e.title,
            "channel": e.channel,
        }
    )


def row_from_json(payload: bytes):
    """The inverse of ``row_to_json``: a ``write_failed`` dead letter back into a row to write
    (with its original cell timestamp, so a redrive never overwrites a newer pane)."""
    from transforms.aggregate import AggregateRow

    d = orjson.loads(payload)
    if d.get("top"):
        return TopRow(
            d["event_type"],
            d["granularity"],
            d["window_start_s"],
            tuple((v, c) for v, c in d["items"]),
            d["cell_timestamp_us"],
        )
    agg = storage.Aggregate(d["count"], d["value_count"], d["sum"], d["min"], d["max"])
    return EnrichedRow(
        AggregateRow(
            d["video_id"],
            d["event_type"],
            d["granularity"],
            d["window_start_s"],
            agg,
            d["pane_index"],
            d["cell_timestamp_us"],
        ),
        d["title"],
        d["channel"],
    )


WRITE_BUDGET_S = 120.0  # seconds of retries per bundle: Bigtable's own default deadline for mutate_rows
ATTEMPT_TIMEOUT_S = 20.0  # seconds per attempt: a 10,000-cell request takes well under 1 s on the emulator
# gRPC status codes worth another attempt (the client's own retryable set, plus throttling,
# UNKNOWN for errors that carry no code, and CANCELLED for a channel closed under a call)
RETRYABLE_CODES = frozenset(
    {
        code_pb2.ABORTED,
        code_pb2.DEADLINE_EXCEEDED,
        code_pb2.UNAVAILABLE,
        code_pb2.INTERNAL,
        code_pb2.RESOURCE_EXHAUSTED,
        code_pb2.UNKNOWN,
        code_pb2.CANCELLED,
    }
)
_BACKOFF_S, _MAX_BACKOFF_S = 0.5, 5.0
# the raw protobuf classes under google-cloud-bigtable's proto-plus types: built directly, a
# cell costs a few microseconds where the client's RowMutationEntry/SetCell objects cost ~25
_MutateRowsRequest = _bigtable_types.MutateRowsRequest.pb()


class WriteAggregates(beam.DoFn):
    """``write_budget_s``, ``attempt_timeout_s``: the write budget (module docstring), seconds > 0;
    ``written_counter``: the counter of cells written (``aggregates_written``; the top lists'
    step counts ``transforms.metrics.TOP_LISTS_WRITTEN``)."""

    def __init__(
        self,
        project: str,
        instance: str,
        table: str,
        max_mutations_per_request: int = 10_000,
        write_budget_s: float = WRITE_BUDGET_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        written_counter: str = metrics.AGGREGATES_WRITTEN,
    ) -> None:
        if not 1 <= max_mutations_per_request <= storage.MAX_MUTATIONS_PER_REQUEST:
            raise ValueError(f"max_mutations_per_request must be 1..{storage.MAX_MUTATIONS_PER_REQUEST}")
        if not (write_budget_s > 0 and attempt_timeout_s > 0):
            raise ValueError("write_budget_s and attempt_timeout_s must be > 0")
        self._project, self._instance, self._table = project, instance, table
        self._max_mutations = max_mutations_per_request
        self._budget_s, self._attempt_timeout_s = write_budget_s, attempt_timeout_s
        self._written_counter = written_counter

    def setup(self) -> None:
        self._client = self._bt_table = None
        try:
            self._connected_table()
        except Exception as exc:  # noqa: BLE001 -- e.g. credentials not yet readable: the first write tries again
            _LOG.warning("no Bigtable client yet: %s", exc)
        self._last_attempt_ok = True  # the previous attempt wrote every cell it sent (see _write)
        self._written = metrics.counter(self._written_counter)
        self._failures = metrics.counter(metrics.WRITE_FAILURES)
        self._dead = metrics.DeadLetterCounters()

    def start_bundle(self) -> None:
        self._pending: dict[tuple[bytes, bytes], EnrichedRow | TopRow] = {}
        self._deadline: float | None = None  # the bundle's write budget ends: set by its first flush

    def process(self, batch: list):
        pending = self._pending
        for e in batch:
            cell = cell_of(e)
            old = pending.get(cell)
            if old is None or cell_timestamp_of(old) <= cell_timestamp_of(e):  # a tie: the later pane
                pending[cell] = e
        if len(pending) >= self._max_mutations:
            for dead in self._flush():
                yield beam.window.TimestampedValue(dead, Timestamp(micros=dead.processing_time_us))

    def finish_bundle(self):
        for dead in self._flush():
            yield WindowedValue(dead, Timestamp(micros=dead.processing_time_us), [GlobalWindow()])

    def teardown(self) -> None:
        self._close_client()

    def _flush(self):
        """Write every pending cell, ``max_mutations_per_request`` cells per request, within the
        bundle's write budget; yield a ``write_failed`` dead letter per cell not written."""
        pending, self._pending = list(self._pending.items()), {}
        if pending and self._deadline is None:
            self._deadline = time.monotonic() + self._budget_s
        for i in range(0, len(pending), self._max_mutations):
            for e, why in self._write(dict(pending[i : i + self._max_mutations]), self._deadline):
                self._failures.inc()
                self._dead.inc(WRITE_FAILED)
                yield DeadLetter(row_to_json(e), WRITE_FAILED, f"Bigtable write failed: {why}", time.time_ns() // 1000)

    def _write(
        self, cells: dict[tuple[bytes, bytes], EnrichedRow], deadline: float | None = None
    ) -> list[tuple[EnrichedRow, str]]:
        """Write cells until they are written or ``deadline`` (``time.monotonic()``; default: one
        write budget from now) passes; return ``(row, why)`` for each cell not written. Never raises.
        Past the deadline: one attempt without retries if the previous attempt wrote every cell
        it sent, else none (module docstring)."""
        deadline = time.monotonic() + self._budget_s if deadline is None else deadline
        todo = dict(cells)
        failed: list[tuple[EnrichedRow, str]] = []
        attempt = 0
        started = time.monotonic()
        while todo:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if attempt or not self._last_attempt_ok:
                    break
                remaining = self._attempt_timeout_s  # the budget was spent by earlier flushes
            attempt += 1
            codes = self._attempt(todo, min(self._attempt_timeout_s, remaining))
            retry: dict[tuple[bytes, bytes], EnrichedRow] = {}
            written = 0
            for cell, e in todo.items():
                code, message = codes.get(cell[0], (code_pb2.UNKNOWN, "no status returned"))
                if code == code_pb2.OK:
                    written += 1
                elif code in RETRYABLE_CODES:
                    retry[cell] = e
                else:  # not worth retrying: a dead letter at once
                    failed.append((e, f"{_code_name(code)}: {message}"))
            if written:
                self._written.inc(written)
            if retry and len(retry) == len(todo):
                _LOG.warning(
                    "Bigtable unreachable (attempt %d, %d cells): %s; reconnecting",
                    attempt,
                    len(todo),
                    next(iter(codes.values()))[1][:300],
                )
                self._close_client()
            self._last_attempt_ok = not retry
            todo = retry
            if todo:
                time.sleep(max(0.0, min(_BACKOFF_S * 2 ** (attempt - 1), _MAX_BACKOFF_S, deadline - time.monotonic())))
        if todo:
            _LOG.error(
                "Bigtable write budget spent: %d cells become write_failed dead letters after %d attempts in %.1f s",
                len(todo),
                attempt,
                time.monotonic() - started,
            )
            why = (
                f"unreachable for the write budget ({attempt} attempts in {time.monotonic() - started:.1f} s)"
                if attempt
                else "the bundle's write budget was spent with Bigtable unreachable (no attempt)"
            )
            failed += [(e, why) for e in todo.values()]
        return failed

    def _attempt(self, cells: dict[tuple[bytes, bytes], EnrichedRow], timeout_s: float) -> dict[bytes, tuple]:
        """One ``MutateRows`` call of at most ``timeout_s`` seconds, without retries;
        ``{row key: (code, message)}`` for the row keys of ``cells`` that got a status (a row
        the stream ended without is absent: ``_write`` retries it as ``UNKNOWN``). A row whose
        mutation cannot be built is ``INVALID_ARGUMENT`` (not sent); an error of the call
        (channel down, deadline, ...) is the status of every row sent that has none yet."""
        by_key: dict[bytes, list[tuple[bytes, EnrichedRow]]] = {}
        for (key, q), e in cells.items():
            by_key.setdefault(key, []).append((q, e))
        codes: dict[bytes, tuple] = {}
        try:
            table = self._connected_table()
        except Exception as exc:  # noqa: BLE001 -- e.g. no credentials yet: a failed attempt, retried
            return {key: (code_pb2.UNKNOWN, f"{type(exc).__name__}: {exc}") for key in by_key}
        request = _MutateRowsRequest(table_name=table.table_name, app_profile_id=table.app_profile_id or "")
        entries = request.entries
        sent: list[bytes] = []  # entry index -> row key
        for key, qualified in by_key.items():
            try:
                values = [(q, cell_value(e), cell_timestamp_of(e)) for q, e in qualified]
                mutations = entries.add(row_key=key).mutations
                try:
                    for q, value, ts in values:  # field by field: the cheapest way to fill upb messages
                        cell = mutations.add().set_cell
                        cell.family_name, cell.column_qualifier, cell.timestamp_micros, cell.value = (
                            storage.FAMILY,
                            q,
                            ts,
                            value,
                        )
                except BaseException:
                    del entries[-1]  # not half a row
                    raise
            except Exception as exc:  # noqa: BLE001 -- this row only: it must not hold up the others
                codes[key] = (code_pb2.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")
                continue
            sent.append(key)
        if not sent:
            return codes
        try:
            for response in self._mutate_rows(table, request, timeout_s):
                for entry in response.entries:
                    codes[sent[entry.index]] = (entry.status.code, entry.status.message)
        except Exception as exc:  # noqa: BLE001 -- the client's errors are many; all count as failed attempts
            status = _status_of(exc)
            for key in sent:
                codes.setdefault(key, status)
        return codes

    @staticmethod
    def _mutate_rows(table, request, timeout_s: float):
        """The responses (raw ``google.bigtable.v2.MutateRowsResponse``) of one ``MutateRows``
        call of ``request`` (a raw ``MutateRowsRequest``) through the GAPIC client of
        ``table``'s data client (its channel, routing headers and credentials), no retry.
        Raises ``google.api_core.exceptions.GoogleAPICallError`` for a failed call."""
        responses = table.client._gapic_client.mutate_rows(
            request=_bigtable_types.MutateRowsRequest.wrap(request), timeout=timeout_s, retry=None
        )
        return (_bigtable_types.MutateRowsResponse.pb(r) for r in responses)

    def _connected_table(self):
        """The table of the current client, made anew after ``_close_client``."""
        if self._bt_table is None:
            from google.cloud.bigtable.data import BigtableDataClient

            self._client = BigtableDataClient(project=self._project)
            self._bt_table = self._client.get_table(self._instance, self._table)
        return self._bt_table

    def _close_client(self) -> None:
        """Close the client and its channel (gRPC shares a connection between the channels to
        one address while any of them is open, so a new client alone would inherit the old
        connection's reconnect backoff)."""
        client, self._client, self._bt_table = getattr(self, "_client", None), None, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 -- a broken channel may fail to close; it is dropped anyway
                _LOG.warning("closing the Bigtable client failed: %s", exc)


def _status_of(exc: BaseException) -> tuple[int, str]:
    """``(gRPC code, message)`` of a failed call: the code of a ``GoogleAPICallError``,
    ``UNKNOWN`` for an error without one."""
    code = getattr(exc, "grpc_status_code", None)
    return (code.value[0] if code is not None else code_pb2.UNKNOWN), f"{type(exc).__name__}: {exc}"


def _code_name(code: int) -> str:
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else f"code {code}"
