"""Schemas: the input event, the dead-letter record, the raw archive, restart markers, the
storage layout and when a window is closed.

Everything that fixes a byte layout or a field rule lives here, in one place, so the
pipeline, the batch recompute, the query API and the tests all read the same contract
(docs/contract.md: "Input events", "Dead letters" and "Storage layout").
"""
