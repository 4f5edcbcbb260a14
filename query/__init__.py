"""The query API: ``get_stats`` over the aggregates stored in Bigtable (SPEC.md section 6)."""

from query.stats import Bucket, Stats, StatsReader, get_stats

__all__ = ["Bucket", "Stats", "StatsReader", "get_stats"]
