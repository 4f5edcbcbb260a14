"""Schemas: the input event, the dead-letter record, the raw archive and the storage layout.

Everything that fixes a byte layout or a field rule lives here, in one place, so the
pipeline, the batch recompute, the query API and the tests all read the same contract
(SPEC.md sections 1, 3 and 4).
"""
