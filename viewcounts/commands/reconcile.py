"""Independent check of stored aggregates against the events that were published.

``expected_aggregates(manifest_path)`` computes, with polars and none of the pipeline's
code, the minute and hour count/value_count/sum/min/max per (video, type, window) over
the distinct ``event_id``s of a replay manifest. ``reconcile(expected, stored)`` lists
every (video, type, granularity, window) where the two differ or only one has a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

GRANULARITIES = {"minute": 60, "hour": 3600}


def expected_aggregates(manifest_path: str) -> dict[tuple, tuple]:
    """``{(video_id, event_type, granularity, window_start_s): (count, value_count, sum, min, max)}``."""
    df = pl.read_ndjson(manifest_path, schema_overrides={"value": pl.Float64, "event_time": pl.Utf8})
    if "value" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))
    df = df.unique(subset="event_id", keep="first", maintain_order=True).with_columns(
        pl.col("event_time").str.to_datetime(time_zone="UTC", time_unit="us").dt.epoch("s").alias("t_s")
    )
    out = {}
    for granularity, size in GRANULARITIES.items():
        agg = (
            df.with_columns((pl.col("t_s") - pl.col("t_s") % size).alias("w"))
            .group_by("video_id", "event_type", "w")
            .agg(
                pl.len().alias("count"),
                pl.col("value").count().alias("value_count"),
                pl.col("value").sum().alias("sum"),
                pl.col("value").min().alias("min"),
                pl.col("value").max().alias("max"),
            )
        )
        for r in agg.iter_rows(named=True):
            out[(r["video_id"], r["event_type"], granularity, r["w"])] = (
                r["count"],
                r["value_count"],
                float(r["sum"] or 0.0),
                r["min"],
                r["max"],
            )
    return out


@dataclass(frozen=True)
class Mismatch:
    key: tuple
    expected: tuple | None
    stored: tuple | None


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9)


def reconcile(expected: dict[tuple, tuple], stored: dict[tuple, tuple]) -> list[Mismatch]:
    out = []
    for key in expected.keys() | stored.keys():
        e, s = expected.get(key), stored.get(key)
        if e is None or s is None or not all(_same(x, y) for x, y in zip(e, s)):
            out.append(Mismatch(key, e, s))
    return sorted(out, key=lambda m: tuple(str(k) for k in m.key))


def stored_aggregates(reader) -> dict[tuple, tuple]:
    """The same shape as ``expected_aggregates``, read from Bigtable via ``StatsReader``."""
    return {
        (c.video_id, c.event_type, c.granularity, c.window_start_s): (
            c.aggregate.count,
            c.aggregate.value_count,
            c.aggregate.sum,
            c.aggregate.min,
            c.aggregate.max,
        )
        for c in reader.all_cells()
    }
