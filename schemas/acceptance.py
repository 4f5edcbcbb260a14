"""The acceptance knobs' defaults (docs/contract.md, "Acceptance"), in seconds.

One home for the values the streaming job's flags, ``transforms.validate.AcceptancePolicy``,
the source's future-skew cap, the compaction and the readers that decide when a window is
closed all start from. A deployment that changes a knob on the job passes the same value to
the tools that read its output (``--allowed-lateness-s``).
"""

DEFAULT_ALLOWED_LATENESS_S = 600
"""How far behind the watermark an event's time may be and still be counted."""

DEFAULT_MAX_FUTURE_SKEW_S = 300
"""How far ahead of its arrival time an event's time may be (``future_timestamp`` beyond)."""

DEFAULT_MAX_EVENT_AGE_S = 7 * 24 * 3600
"""How far behind its arrival time an event's time may be (``too_old`` beyond)."""
