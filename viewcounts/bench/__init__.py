"""``viewcounts bench``: the benchmark harness (issue 5). See ``viewcounts.bench.harness``."""
