"""Composite PTransforms and DoFns of the counting job, shared by streaming and batch."""
