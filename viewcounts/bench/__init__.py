"""``viewcounts bench``: the benchmark harness. See ``viewcounts.bench.harness``."""
