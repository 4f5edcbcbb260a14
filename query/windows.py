"""Stored windows as dense columns, and their buckets: the decoding and merging that the
sync reader (``query.stats``) and the serving reader (``query.cached_reader``) share.

``WindowArrays``: the windows of one size (60 s or 3600 s) starting in ``[first_s, first_s +
n * size)``, one column position per window start, empty windows included:

* ``ints``: int64 array of shape ``(3, n)``: ``count``, ``value_count`` and ``opened_ms``
  (the wall clock, in ms, at which the pipeline created the window's state: a cell's
  timestamp is ``(opened_ms + count) * 1000`` µs, ``schemas.storage.cell_timestamp_us``;
  the window's panes were all written at or after it; 0 for an empty window);
* ``floats``: float64 array of shape ``(3, n)``: ``sum``, ``min``, ``max`` (NaN for
  ``min``/``max`` of a window without values).

``bucket_columns`` merges those windows into buckets of a multiple of their size (1 for
minute and hour buckets, 24 hour windows for a UTC day) and into the combined aggregate
over the range, as ``schemas.storage.merge`` does for two aggregates: counts and sums
added, min/max over the windows that carry values, ``avg`` always recombined as ``sum /
value_count``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas import storage
from schemas.storage import EMPTY, Aggregate

COUNT, VALUE_COUNT, OPENED_MS = 0, 1, 2  # rows of WindowArrays.ints
SUM, MIN, MAX = 0, 1, 2  # rows of WindowArrays.floats


@dataclass
class WindowArrays:
    """Dense columns of windows (module docstring); positions are ``(w - first_s) // size``."""

    first_s: int
    size: int
    ints: np.ndarray
    floats: np.ndarray

    @classmethod
    def empty(cls, first_s: int, end_s: int, size: int) -> WindowArrays:
        """Every window of ``size`` starting in ``[first_s, end_s)`` empty (``first_s`` aligned)."""
        n = max(0, -(-(end_s - first_s) // size))
        floats = np.zeros((3, n))
        floats[MIN:] = np.nan
        return cls(first_s, size, np.zeros((3, n), dtype=np.int64), floats)

    @property
    def end_s(self) -> int:
        return self.first_s + self.ints.shape[1] * self.size

    @property
    def nbytes(self) -> int:
        return self.ints.nbytes + self.floats.nbytes

    def index(self, w: int) -> int:
        return (w - self.first_s) // self.size

    def put(self, w: int, agg: Aggregate, opened_ms: int) -> None:
        """Set window ``w`` (a start inside the columns) to ``agg``."""
        i = self.index(w)
        self.ints[:, i] = (agg.count, agg.value_count, opened_ms)
        self.floats[:, i] = (agg.sum, np.nan if agg.min is None else agg.min, np.nan if agg.max is None else agg.max)

    def copy_range(self, other: WindowArrays, lo_s: int, hi_s: int) -> None:
        """Copy ``other``'s windows starting in ``[lo_s, hi_s)`` (inside both, same size) here."""
        if hi_s <= lo_s:
            return
        a, b = self.index(lo_s), self.index(hi_s)
        c, d = other.index(lo_s), other.index(hi_s)
        self.ints[:, a:b] = other.ints[:, c:d]
        self.floats[:, a:b] = other.floats[:, c:d]

    def aggregates(self) -> dict[int, Aggregate]:
        """The non-empty windows as ``{window_start_s: Aggregate}`` (Python numbers, None for NaN)."""
        nz = np.flatnonzero(self.ints[COUNT])
        ints, floats = self.ints[:, nz].T.tolist(), self.floats[:, nz].T.tolist()
        return {
            self.first_s + int(i) * self.size: _aggregate(c, vc, s, lo, hi)
            for i, (c, vc, _), (s, lo, hi) in zip(nz.tolist(), ints, floats)
        }


def _aggregate(count: int, value_count: int, total: float, lo: float, hi: float) -> Aggregate:
    return Aggregate(count, value_count, total, None if lo != lo else lo, None if hi != hi else hi)


def decode_cells(row_key: bytes, cells, into: WindowArrays, lo_s: int, hi_s: int) -> None:
    """Decode ``cells`` (``(qualifier, value, timestamp_us)`` of the newest cell of each column
    of one row) into ``into``, keeping the windows starting in ``[lo_s, hi_s)``. Raises
    ``storage.CellError`` naming the row and column for a cell the pipeline cannot write."""
    for q, value, timestamp_us in cells:
        w = storage.window_of_qualifier(q)
        if lo_s <= w < hi_s:
            agg = decode(row_key, q, value)[0]
            into.put(w, agg, timestamp_us // 1000 - agg.count)


def decode(row_key: bytes, q: bytes, value: bytes) -> tuple[Aggregate, str | None, str | None]:
    """``storage.decode_cell`` with the row and column named in its ``CellError``."""
    try:
        return storage.decode_cell(value)
    except storage.CellError as exc:
        raise storage.CellError(f"row {row_key!r} column {q!r}: {exc}") from None


@dataclass(frozen=True)
class Columns:
    """Buckets of ``bucket_size`` s from ``first_s`` (``ints``: count, value_count, opened_ms;
    ``floats``: sum, min, max; one column a bucket, ``opened_ms`` the newest of the bucket's
    windows) and the ``combined`` aggregate over all of them."""

    first_s: int
    bucket_size: int
    ints: np.ndarray
    floats: np.ndarray
    combined: Aggregate

    @property
    def starts(self) -> range:
        return range(self.first_s, self.first_s + self.ints.shape[1] * self.bucket_size, self.bucket_size)

    def aggregates(self) -> list[Aggregate]:
        return [
            _aggregate(c, vc, s, lo, hi)
            for (c, vc, _), (s, lo, hi) in zip(self.ints.T.tolist(), self.floats.T.tolist())
        ]


def bucket_columns(windows: WindowArrays, bucket_size: int | None) -> Columns:
    """Merge ``windows`` into buckets of ``bucket_size`` s (a multiple of the window size that
    divides the range; None: no buckets, only the combined aggregate, for ``total``)."""
    ints, floats = windows.ints, windows.floats
    k = 1 if bucket_size is None else bucket_size // windows.size
    if k > 1:
        n = ints.shape[1] // k
        ints = np.concatenate(
            [ints[:OPENED_MS].reshape(2, n, k).sum(axis=2), ints[OPENED_MS:].reshape(1, n, k).max(axis=2)]
        )
        f = floats.reshape(3, n, k)
        floats = np.stack([f[SUM].sum(axis=1), np.fmin.reduce(f[MIN], axis=1), np.fmax.reduce(f[MAX], axis=1)])
    combined = EMPTY
    if windows.ints.shape[1]:
        combined = _aggregate(
            int(ints[COUNT].sum()),
            int(ints[VALUE_COUNT].sum()),
            float(floats[SUM].sum()),
            float(np.fmin.reduce(floats[MIN])),
            float(np.fmax.reduce(floats[MAX])),
        )
        if not combined.count:
            combined = EMPTY
    if bucket_size is None:
        ints, floats = ints[:, :0], floats[:, :0]
    return Columns(windows.first_s, bucket_size or windows.size, ints, floats, combined)
