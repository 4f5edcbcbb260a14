"""The query API: ``get_stats`` over the aggregates stored in Bigtable (docs/contract.md, "Queries")."""

from query.stats import Bucket, Stats, StatsReader, get_stats

__all__ = ["Bucket", "Stats", "StatsReader", "get_stats"]
