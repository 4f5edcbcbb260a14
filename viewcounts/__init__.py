"""Local tooling and the ``viewcounts`` command: demo, replay, stats, scenario."""
