"""The ``viewcounts`` subcommands' implementations (``viewcounts.cli`` parses and dispatches)."""
