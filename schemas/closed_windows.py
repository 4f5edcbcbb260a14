"""When a window is closed: no pane of the streaming job changes its stored aggregate or top
list any more, so a reader may cache it and a batch recompute may overwrite it for good.

A window ``[w, w + size)`` (epoch s) is closed at wall clock ``now`` when

    w + size + allowed_lateness_s + margin_s <= now

The job accepts an event only while its watermark is within ``allowed_lateness_s`` of the
event's time (docs/contract.md, "Acceptance"), so once the watermark passes a window's end
plus the lateness no pane of it fires again. Nothing outside the job reads its watermark:
they take it as the wall clock minus ``margin_s``, by default ``CLOSE_MARGIN_S``.

``CLOSE_MARGIN_S`` (300 s) is how far the watermark of a job that keeps up may trail the wall
clock: the portable source's 60 s sample period (the earliest timestamp pulled in the last
60 s, ``transforms.pubsub_io.PullWatermark``), pulls up to 10 s apart, and up to 230 s of
publish delay (clients that buffer events). A job with a backlog trails by more: let it catch
up first, or pass a larger margin where one is taken (the query service's
``--final-margin-s``). Were the margin too small, a recompute could overwrite a window whose
late panes the job still writes, and those panes (cell timestamps from the job's window
state) would lose to the recompute's newer cell; a reader would cache a window that still
changes. For a replay of old data the wall clock says nothing about the job's watermark:
recompute once the replay's windows have closed in the job.
"""

from __future__ import annotations

import math

CLOSE_MARGIN_S = 300


def closes_at_s(window_start_s: int, window_s: int, allowed_lateness_s: int, margin_s: int = CLOSE_MARGIN_S) -> int:
    """When the window of ``window_s`` seconds starting at ``window_start_s`` closes (epoch s);
    also elementwise over numpy arrays of starts."""
    return window_start_s + window_s + allowed_lateness_s + margin_s


def final_before(size: int, now_s: float, allowed_lateness_s: int, margin_s: int = CLOSE_MARGIN_S) -> int:
    """The first start (epoch s, a multiple of ``size``) of a window of ``size`` s that is not
    closed at ``now_s``: every window starting before it is."""
    t = math.floor(now_s) - allowed_lateness_s - margin_s
    return (t // size) * size
