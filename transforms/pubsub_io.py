"""Portable Pub/Sub I/O: a source (a splittable DoFn that pulls) and a publishing sink.

``ReadFromPubSubPortable`` is a Pub/Sub source built from a splittable DoFn, so it runs
wherever Beam's portable Fn API does; Beam's own Python ``ReadFromPubSub`` is replaced by a
native read only on some (apache/beam#27443). Shape::

    pipeline | ReadFromPubSubPortable("projects/P/subscriptions/S", timestamp_attribute="ts", readers=4)
      -> PCollection[bytes]   # message data, timestamped at the watermark when pulled

Semantics:

* **Several readers on one subscription.** ``readers`` restrictions each pull the same
  subscription on their own (Pub/Sub hands each message to one of the outstanding pulls,
  and redelivers it to any of them), with their own watermark, their own
  acknowledgements and their own backoff; everything below holds per reader. The
  source's watermark is the minimum over the readers. Each reader is an element of its
  own (``reader_elements``), reshuffled between the impulse and the pull. Where the
  splittable DoFn's work is placed by a hash of the element into ``key_groups`` groups
  (``key_group``, given by the pipeline builder), the elements are salted so that reader
  ``i`` of ``n`` falls in the ``i``-th ``n``-th of the groups, which spreads the readers
  evenly over the workers whenever the parallelism divides the number of readers or the
  reverse (no two on one worker when they are equal). A reader that has
  never received a message holds the watermark at its start (the minimum of time) like a
  single reader does before the first message: the job's watermark moves once every
  reader has pulled something (with steady traffic every outstanding pull is served).

* **Acknowledgement after durability.** The ack ids of a pull are acknowledged only once
  the bundle's outputs and state are in a completed checkpoint (``AckLedger``): after the
  bundle's finalization callback and ``ACK_ROUNDS`` later rounds of finalization: a
  finalization notice for checkpoint N may cover bundles that ran after N's barrier (their
  effects are only in N+1), so a notice alone does not prove the bundle durable
  (related: apache/beam#19525, bundle finalization at checkpoints). A crash before the acknowledgement leaves
  the messages unacknowledged, and Pub/Sub
  redelivers them after the subscription's ack deadline; the dedup stage drops the copies
  that were already counted. Acknowledgements thus trail the pulls by about
  ``ACK_ROUNDS + 1`` checkpoint intervals: keep that under the ack deadline (60 s here,
  checkpoints every 5 s) or every message comes back once as a duplicate. Where bundles
  are finalized at checkpoints only, nothing is acknowledged without checkpointing.
  A failed acknowledgement is logged, not raised: the messages are redelivered and dropped
  as duplicates.
* **Event-time watermark.** The publisher sets ``timestamp_attribute`` on each message to
  the earliest event time it carries, in epoch milliseconds as ASCII digits (docs/contract.md,
  "The ``ts`` attribute"; ``message_timestamp_us`` says what is refused). The watermark is the earliest timestamp
  pulled in the last minute (never backwards; ``PullWatermark``). After ``idle_s``
  seconds with nothing to pull it moves to the newest timestamp pulled plus the idle time
  (at most the wall clock), so every window closes when a stream pauses or ends. Java's
  ``PubsubIO`` jumps to the wall clock instead, which would make the rest of a paused
  replay of 2013 data late; here it stays within the allowed lateness for that long.
  ``PullWatermark`` keeps this in the restriction's estimator state, so it survives a
  change of worker and a restore. It never passes the wall clock plus
  ``max_future_skew_s``, whatever the attributes (a restored state that is further ahead
  is brought back to that bound).
* **Elements carry the watermark at arrival.** Each message is emitted with the
  watermark as it stood when the message was pulled as its timestamp (never behind it, so
  nothing is dropped as late here). A message holds many events, so its own time says
  little; this stamp tells the counting core the watermark each message arrived at (the
  watermark at arrival of docs/contract.md, "Acceptance"), which a DoFn cannot read otherwise
  (``transforms.dedup``: ``stamped_watermark``).
* Messages without the attribute, or with one that is malformed, outside years 1-9999 or
  too far ahead, take their publish time.
* **Any message Pub/Sub accepts is received.** Messages go up to 10 MB; the subscriber's
  gRPC channel takes responses up to ``MAX_PULL_RESPONSE_BYTES`` (the emulator's default
  channel stopped at 4 MiB). A pull whose response is larger still fails with
  ``RESOURCE_EXHAUSTED``: the next pulls ask for half as many messages, down to one, and
  double back after each pull that returns messages (the refused messages are redelivered
  after the ack deadline; each pull that succeeds takes at least one, so a backlog of big
  messages drains). Any other failed pull (``UNAVAILABLE``, an emulator restart...) is
  logged and the bundle ends without raising; the restriction resumes after a backoff
  that doubles per consecutive failure up to ``MAX_BACKOFF_S``. Nothing unacknowledged is
  lost, and a failed pull never counts as an empty one for the idle rule (a pull that
  times out does: that is how Pub/Sub's long poll answers an empty subscription).
* **A killed worker's last pull.** A pull waits on the server for at most
  ``pull_deadline_s(poll_s)``. The Pub/Sub emulator keeps the pull of a process that died
  open until then and hands it the messages published meanwhile: nobody receives them, and
  they come back only after the subscription's ack deadline, behind messages published
  later (a new job's watermark may have passed them by then). Messages the killed worker
  pulled and had not acknowledged (``AckLedger``) also come back after the ack deadline.

``WriteToPubSubPortable(topic)`` publishes ``(data, attributes)`` pairs with the
google-cloud-pubsub client, best effort and bounded: it never raises and never holds a
bundle longer than its timeout (``_PublishFn``). It stands in for Beam's ``WriteToPubSub``,
which does not run everywhere the Fn API does (apache/beam#27443).

The restriction is an endless offset range with one position claimed per pull; the DoFn
checkpoints itself (``defer_remainder``) after ``max_pull_s`` of pulling or on an empty
pull, which is when the bundle is committed, and resumes ``pause_s`` later at the
earliest: a pause longer than the bundle-check period of an engine that publishes the
watermark only between bundles lets the watermark through (related: apache/beam#19637,
splittable DoFns in streaming). Pulls use the synchronous ``Pull`` RPC of ``google-cloud-pubsub`` (honours
``PUBSUB_EMULATOR_HOST``). The restriction and
watermark shapes follow Beam's own ``PeriodicImpulse`` (``apache_beam.transforms.periodicsequence``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid

import apache_beam as beam
from apache_beam.io.iobase import WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from schemas.acceptance import DEFAULT_MAX_FUTURE_SKEW_S
from schemas.event import END_EPOCH_MS
from transforms import metrics

_LOG = logging.getLogger(__name__)

MAX_TS_DIGITS = 20  # longer digit strings are refused unread (int() of 5,000 digits raises)
MAX_PULL_RESPONSE_BYTES = 64 * 1024 * 1024  # six 10 MB messages with their attributes
MAX_BACKOFF_S = 30.0  # longest pause between two bundles after failed pulls
ACK_RETRY_S = 10.0  # how long one acknowledge request is retried
ACK_ROUNDS = 3  # finalization rounds after a bundle's own before its messages are acknowledged (AckLedger)
_READER_MARK = "#reader-"


def reader_elements(subscription: str, readers: int, key_group=None, key_groups: int = 1) -> list[str]:
    """The elements of ``readers`` readers of ``subscription``: ``"<subscription>#reader-<i>-<salt>"``.

    ``key_group(element) -> int`` in ``[0, key_groups)``: the group where the work of a reader
    element runs, when work is placed so (group ``g`` on worker ``g * p // key_groups`` of
    ``p``, so worker ``j`` owns ``[ceil(j * m / p), ceil((j + 1) * m / p))``, ``m =
    key_groups``). Each reader ``i`` gets the smallest salt that puts it in groups
    ``[ceil(i * m / readers), ceil((i + 1) * m / readers))``: with ``readers == p`` reader
    ``i`` is on worker ``i``. Without ``key_group`` every salt is 0. Raises ``ValueError``
    when ``readers`` is below 1, or above ``key_groups`` with a ``key_group``."""
    if readers < 1 or (key_group is not None and readers > key_groups):
        raise ValueError(f"readers must be 1..{key_groups if key_group is not None else 'any'}, not {readers}")
    out = []
    for i in range(readers):
        low, high = -(-i * key_groups // readers), -(-(i + 1) * key_groups // readers)
        salt = 0
        while key_group is not None and not low <= key_group(f"{subscription}{_READER_MARK}{i}-{salt}") < high:
            salt += 1
        out.append(f"{subscription}{_READER_MARK}{i}-{salt}")
    return out


def subscription_of(element: str) -> str:
    """The subscription a reader element pulls."""
    return element.split(_READER_MARK, 1)[0]


def pull_deadline_s(poll_s: float) -> float:
    """Seconds one pull may wait on the server for messages (its gRPC deadline), for a source
    that polls an empty subscription every ``poll_s`` seconds: ``poll_s + 5``."""
    return poll_s + 5


def message_timestamp_us(
    attributes,
    publish_time_us: int,
    timestamp_attribute: str | None,
    now_us: int,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> int:
    """Event time of a message in epoch µs: its ``timestamp_attribute``, else ``publish_time_us``.

    The attribute is read when it is 1..``MAX_TS_DIGITS`` ASCII digits of epoch milliseconds
    before year 10000 and at most ``max_future_skew_s`` seconds ahead of ``now_us`` (the
    pull's processing time, epoch µs). Anything else (empty, a sign, RFC 3339, other Unicode
    digits such as ``"²"`` or ``"٣"``, more digits, a later time) falls back to the publish
    time. Never raises for any attribute value."""
    raw = attributes.get(timestamp_attribute) if timestamp_attribute else None
    if raw and len(raw) <= MAX_TS_DIGITS and raw.isascii() and raw.isdigit():
        ms = int(raw)
        if ms < END_EPOCH_MS and ms * 1000 <= now_us + max_future_skew_s * 1_000_000:
            return ms * 1000
    return publish_time_us


def subscriber_transport(max_response_bytes: int = MAX_PULL_RESPONSE_BYTES):
    """The gRPC transport for a ``google.cloud.pubsub_v1.SubscriberClient`` whose channel
    receives responses up to ``max_response_bytes``: to ``PUBSUB_EMULATOR_HOST`` when set
    (the library's own emulator channel keeps gRPC's 4 MiB default), else to Pub/Sub with
    the default credentials."""
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    options = [("grpc.max_receive_message_length", max_response_bytes), ("grpc.max_send_message_length", -1)]
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    channel = (
        grpc.insecure_channel(emulator, options=options)
        if emulator
        else SubscriberGrpcTransport.create_channel(options=options)
    )
    return SubscriberGrpcTransport(channel=channel)


def subscriber_client(max_response_bytes: int = MAX_PULL_RESPONSE_BYTES):
    """A ``SubscriberClient`` on ``subscriber_transport(max_response_bytes)``."""
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient(transport=subscriber_transport(max_response_bytes))


class _EndlessPulls(RestrictionProvider):
    def initial_restriction(self, element):
        return OffsetRange(0, sys.maxsize)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return 1

    def truncate(self, element, restriction):
        return None  # on drain, stop pulling


class PullWatermark(WatermarkEstimator):
    """The source's watermark and what its rules need, kept in the splittable DoFn's
    estimator state, so whichever worker resumes the restriction (or a job restored from a
    checkpoint) carries on from it. State: ``(watermark µs, newest timestamp pulled µs,
    epoch seconds since the pulls came back empty or None, ((pull epoch s, earliest
    timestamp of that pull µs), ...) for the last sample period)``.

    The watermark is the earliest timestamp pulled within the last ``sample_s`` seconds
    (never going back): Pub/Sub does not deliver in publish order, so one pull's earliest
    timestamp can be ahead of a message still on its way. This is the rule of Java's
    ``PubsubUnboundedSource`` (``SAMPLE_PERIOD``, one minute).

    Late data: a timestamp at or below the current watermark (``ts="1"``, a replayed
    backlog, a producer whose clock is behind) is still emitted -- the dedup stage judges it
    ``too_late`` or not -- but it does not enter the samples (nor the newest time). It could
    not raise the watermark anyway, and as a sample it would hold it: one such message every
    ``sample_s`` seconds would freeze the watermark for good. (At, not only below: a constant
    old ``ts`` in the very first pull sets the watermark to itself.)

    Ceiling: the watermark is never raised above the wall clock plus ``max_future_skew_s``
    (``now_s`` of that pull or empty pull), and no timestamp is taken into the samples or the
    newest time above it. A wall clock that steps back (an NTP correction, the restriction
    resumed on a worker whose clock is behind) does not lower the watermark: it only stops it
    rising until the clock has caught up. A state restored above the ceiling of the restoring
    clock (written by a job that followed a far-future attribute) is lowered to it at
    construction; that is the only way the watermark goes back."""

    def __init__(self, state, max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S, now_s: float | None = None) -> None:
        self._skew_us = round(max_future_skew_s * 1_000_000)
        watermark_us, newest_us, self._empty_since_s, samples = state or (
            MIN_TIMESTAMP.micros,
            MIN_TIMESTAMP.micros,
            None,
            (),
        )
        ceiling = self._ceiling_us(time.time() if now_s is None else now_s)
        self._watermark_us, self._newest_us = min(watermark_us, ceiling), min(newest_us, ceiling)
        self._samples = [(t, min(ts, ceiling)) for t, ts in samples]

    def _ceiling_us(self, now_s: float) -> int:
        return round(now_s * 1_000_000) + self._skew_us

    def observe_timestamp(self, timestamp) -> None:
        pass

    def current_watermark(self) -> Timestamp:
        return Timestamp(micros=self._watermark_us)

    def get_estimator_state(self):
        return self._watermark_us, self._newest_us, self._empty_since_s, tuple(self._samples)

    def pulled(self, timestamps_us: list[int], now_s: float, sample_s: float) -> None:
        """A non-empty pull at ``now_s`` (epoch seconds)."""
        ceiling = self._ceiling_us(now_s)
        on_time = [ts for ts in (min(t, ceiling) for t in timestamps_us) if ts > self._watermark_us]
        if on_time:  # late ones (at or below the watermark) are no samples, see the class docstring
            self._samples.append((now_s, min(on_time)))
            self._newest_us = max(self._newest_us, max(on_time))
        self._empty_since_s = None
        self._advance(now_s, sample_s)

    def empty(self, now_s: float, idle_s: float, sample_s: float) -> None:
        """An empty pull: after ``idle_s`` seconds of them nothing is on its way any more, and
        the watermark moves to the newest timestamp pulled plus the time the pulls have been
        empty, never past the wall clock (for live data) -- so the newest message's windows
        close too, while a paused replay of old data resumes within the allowed lateness."""
        if self._empty_since_s is None:
            self._empty_since_s = now_s
        elif now_s - self._empty_since_s >= idle_s and self._newest_us > MIN_TIMESTAMP.micros:
            self._samples = []
            idle_us = round((now_s - self._empty_since_s) * 1_000_000)
            self._raise(min(self._newest_us + idle_us, max(self._newest_us, round(now_s * 1_000_000))), now_s)
        self._advance(now_s, sample_s)

    def _advance(self, now_s: float, sample_s: float) -> None:
        self._samples = [(t, ts) for t, ts in self._samples if t > now_s - sample_s]
        if self._samples:
            self._raise(min(ts for _, ts in self._samples), now_s)

    def _raise(self, to_us: int, now_s: float) -> None:
        """Raises the watermark towards ``to_us``, never above this clock's ceiling, never lowers it."""
        self._watermark_us = max(self._watermark_us, min(to_us, self._ceiling_us(now_s)))


class AckLedger:
    """The ack ids of finalized bundles, released for acknowledgement once a completed
    checkpoint surely holds their bundle (see the module docstring).

    A *round* is seen when a bundle that started after the previous round is finalized: the
    engine finalizes a bundle only at a checkpoint's completion notice, so a bundle started
    after notice N is finalized at a notice M > N, and every round is a later checkpoint.
    ``finalized`` files a bundle's ids when its own callback runs (that notice's checkpoint
    may not hold it) and releases them after ``rounds`` more rounds: checkpoint N + 1 was
    triggered after N completed, so with ``rounds=1`` its barrier reaches this stage after
    the bundle ended unless notice N was delivered after barrier N + 1; ``rounds=2`` also
    covers that. The ledger is shared by the subtasks a process serves, whose notices of one
    checkpoint arrive one after the other, so one of the rounds may be a second notice of
    the same checkpoint: ``ACK_ROUNDS`` is 3.

    A restore invalidates what it lost: ``started(reader, position)`` with a position at or
    below the first position an entry of that reader pulled means the job went back to a
    state before that bundle, so the entry is dropped, never acknowledged (its messages come
    back after the ack deadline). One ledger serves every instance of the DoFn in a process
    (``_PullFn.setup``): the SDK keeps a bundle's processor (its DoFn instance) until the
    bundle is finalized and reuses processors last-in first-out, so a ledger per instance
    could wait for ever for its instance's next bundle. Entries live in this process only;
    after a crash they are lost and their messages redelivered (which is safe only if no
    worker process is kept across a job restart). Thread-safe (callbacks and bundles run on the
    SDK's threads). Times are ``time.monotonic()`` seconds."""

    def __init__(self, rounds: int = ACK_ROUNDS) -> None:
        self._rounds = rounds
        self._lock = threading.Lock()
        self._entries: list[list] = []  # [reader, first position, ack ids, oldest publish µs, rounds left, mark]

    def started(self, reader: str, position: int) -> None:
        """A bundle of ``reader`` resumes at ``position`` (its restriction's start)."""
        with self._lock:
            self._entries = [e for e in self._entries if e[0] != reader or e[1] < position]

    def finalized(
        self,
        reader: str,
        first_position: int,
        ack_ids: list[str],
        oldest_us: int | None,
        started_s: float,
        now_s: float,
    ) -> list[str]:
        """The bundle of ``reader`` that started at ``started_s`` and pulled from
        ``first_position`` on is finalized at ``now_s``: files its ids and returns the ids
        now due for acknowledgement (possibly empty)."""
        with self._lock:
            return self._finalized(reader, first_position, ack_ids, oldest_us, started_s, now_s)

    def _finalized(self, reader, first_position, ack_ids, oldest_us, started_s, now_s) -> list[str]:
        due: list[str] = []
        kept = []
        for e in self._entries:
            if started_s > e[5]:
                e[4], e[5] = e[4] - 1, now_s
            if e[4] <= 0:
                due.extend(e[2])
            else:
                kept.append(e)
        self._entries = kept
        if ack_ids:
            if self._rounds <= 0:
                due.extend(ack_ids)
            else:
                self._entries.append([reader, first_position, ack_ids, oldest_us, self._rounds, now_s])
        return due

    def oldest_publish_us(self) -> int | None:
        """Publish time (epoch µs) of the oldest message filed and not yet released."""
        with self._lock:
            return min((e[3] for e in self._entries if e[3] is not None), default=None)


_LEDGERS: dict[str, AckLedger] = {}  # per process: one ledger per ReadFromPubSubPortable (its _PullFn token)
_LEDGERS_LOCK = threading.Lock()


class _PullFn(beam.DoFn, WatermarkEstimatorProvider):
    """Pulls the subscription of a reader element (``reader_elements``); is its own watermark
    estimator provider, so the estimators it makes know ``max_future_skew_s``. Reports the
    source metrics of ``transforms.metrics`` for the readers it runs."""

    def __init__(
        self,
        timestamp_attribute: str | None,
        max_messages: int,
        max_pull_s: float,
        poll_s: float,
        idle_s: float,
        pause_s: float,
        sample_s: float,
        max_future_skew_s: float,
    ) -> None:
        self._timestamp_attribute = timestamp_attribute
        self._max_messages, self._max_pull_s = max_messages, max_pull_s
        self._poll_s, self._idle_s, self._pause_s, self._sample_s = poll_s, idle_s, pause_s, sample_s
        self._max_future_skew_s = max_future_skew_s
        self._client = None
        self._token = uuid.uuid4().hex  # names this transform's ledger in every worker (_LEDGERS)

    def initial_estimator_state(self, element, restriction):
        return None

    def create_watermark_estimator(self, estimator_state) -> PullWatermark:
        return PullWatermark(estimator_state, self._max_future_skew_s)

    def setup(self) -> None:
        self._client = subscriber_client()
        self._pulled, self._reported_s = 0, time.monotonic()
        self._batch, self._failures = self._max_messages, 0
        self._pulled_counter = metrics.counter(metrics.MESSAGES_PULLED)
        self._acked_counter = metrics.counter(metrics.MESSAGES_ACKED)
        self._oldest_unacked = metrics.gauge(metrics.OLDEST_UNACKED_AGE_MS)
        self._acked_unreported = 0  # acknowledged by finalization callbacks since the last bundle
        self._unacked: dict[object, int] = {}  # per bundle awaiting finalization: oldest publish µs
        with _LEDGERS_LOCK:
            self._ledger = _LEDGERS.setdefault(self._token, AckLedger())

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        reader: str,
        bundle_finalizer=beam.DoFn.BundleFinalizerParam,  # before the SDF params: Beam passes those by name
        restriction_tracker=beam.DoFn.RestrictionParam(_EndlessPulls()),  # noqa: B008 (Beam: the provider, once)
        watermark=beam.DoFn.WatermarkEstimatorParam(),
    ):
        started = time.monotonic()
        subscription = subscription_of(reader)
        # Every bundle asks for finalization, even one that pulled nothing: a FinalizeBundle
        # request may come for every bundle of the stage, and fails on a released one.
        acks: list[str] = []
        bundle = object()
        position = restriction_tracker.current_restriction().start
        self._ledger.started(reader, position)
        bundle_finalizer.register(lambda first=position: self._finalized(reader, first, acks, bundle, started))
        resume_after = Duration(seconds=self._pause_s)
        while time.monotonic() - started < self._max_pull_s:
            received = self._pull(subscription)
            if received is None:
                resume_after = Duration(seconds=max(self._pause_s, min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))))
                break
            if not received:
                watermark.empty(time.time(), self._idle_s, self._sample_s)
                resume_after = Duration(seconds=max(self._poll_s, self._pause_s))
                break
            if not restriction_tracker.try_claim(position):
                resume_after = None  # the rest is split off; these go unacked and are redelivered
                break
            position += 1
            at_arrival = watermark.current_watermark()
            for m in received:
                yield TimestampedValue(m.message.data, at_arrival)
            now_s = time.time()
            now_us = round(now_s * 1_000_000)
            published_us = [_publish_us(m.message) for m in received]
            watermark.pulled(
                [
                    message_timestamp_us(
                        m.message.attributes, p, self._timestamp_attribute, now_us, self._max_future_skew_s
                    )
                    for m, p in zip(received, published_us)
                ],
                now_s,
                self._sample_s,
            )
            self._pulled += len(received)
            self._pulled_counter.inc(len(received))
            acks.extend(m.ack_id for m in received)
            self._unacked[bundle] = min(self._unacked.get(bundle, now_us), *published_us)
        self._report_metrics()
        self._report(subscription, watermark)
        if resume_after is not None:
            restriction_tracker.defer_remainder(resume_after)

    def _report_metrics(self) -> None:
        """Source metrics at the end of a bundle: the acknowledgements confirmed since the last
        bundle (callbacks run outside bundles, where metrics are not collected) and the age of
        the oldest message still awaiting one, by publish time (0 when none)."""
        acked, self._acked_unreported = self._acked_unreported, 0
        if acked:
            self._acked_counter.inc(acked)
        filed_us = self._ledger.oldest_publish_us()
        oldest_us = min([*self._unacked.values(), *([] if filed_us is None else [filed_us])], default=None)
        self._oldest_unacked.set(0 if oldest_us is None else max(0, time.time_ns() // 1000 - oldest_us) // 1000)

    def _report(self, subscription: str, watermark: PullWatermark, every_s: float = 30.0) -> None:
        """An INFO line at most every ``every_s`` seconds: messages this worker pulled, watermark."""
        if time.monotonic() - self._reported_s >= every_s:
            self._reported_s = time.monotonic()
            _LOG.info(
                "%s: %d messages pulled by this worker; watermark %s",
                subscription,
                self._pulled,
                watermark.current_watermark(),
            )

    def _finalized(
        self, reader: str, first_position: int, ack_ids: list[str], bundle: object, started_s: float
    ) -> None:
        """A bundle's finalization callback: file its ids in the ledger, acknowledge what is due."""
        oldest_us = self._unacked.pop(bundle, None)
        due = self._ledger.finalized(reader, first_position, ack_ids, oldest_us, started_s, time.monotonic())
        if due:
            self._acknowledge(subscription_of(reader), due)

    def _acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        """Acknowledge in requests of 2,500 ids (well under the 512 KiB request limit), each
        retried for at most ``ACK_RETRY_S`` seconds; a failure is logged: those messages come
        back after their ack deadline and are dropped as duplicates (and pulled again, so they
        no longer count as unacknowledged here)."""
        from google.api_core.exceptions import GoogleAPIError
        from google.api_core.retry import Retry

        for i in range(0, len(ack_ids), 2500):
            try:
                self._client.acknowledge(
                    request={"subscription": subscription, "ack_ids": ack_ids[i : i + 2500]},
                    retry=Retry(initial=0.1, maximum=2.0, timeout=ACK_RETRY_S),
                    timeout=ACK_RETRY_S,
                )
                self._acked_unreported += len(ack_ids[i : i + 2500])
            except GoogleAPIError as e:
                _LOG.warning(
                    "%s: acknowledging %d messages failed (they will be redelivered): %s",
                    subscription,
                    len(ack_ids[i : i + 2500]),
                    e,
                )

    def _pull(self, subscription: str):
        """One pull of at most the current batch size: the received messages; ``[]`` on a
        timeout, or when ``teardown`` closed the client under a pull in progress (a
        cancelled job: nothing was received, so nothing goes unacknowledged); ``None`` when
        the pull failed (logged; ``RESOURCE_EXHAUSTED`` also halves the batch size). No
        client-side retry: the caller backs off by ending the bundle, so a long outage never
        holds a bundle (and the checkpoint behind it) open."""
        from google.api_core.exceptions import Cancelled, DeadlineExceeded, GoogleAPIError, ResourceExhausted

        asked = self._batch
        try:
            received = self._client.pull(
                request={"subscription": subscription, "max_messages": asked},
                retry=None,
                timeout=pull_deadline_s(self._poll_s),
            ).received_messages
        except (DeadlineExceeded, Cancelled):
            return []
        except (GoogleAPIError, ValueError) as e:  # ValueError: a channel closed under the call
            self._failures += 1
            if isinstance(e, ResourceExhausted):
                self._batch = max(1, self._batch // 2)
            _LOG.warning(
                "%s: pull of up to %d messages failed (%d in a row; next pull asks for %d): %s",
                subscription,
                asked,
                self._failures,
                self._batch,
                e,
            )
            return None
        self._failures = 0
        if received:
            self._batch = min(self._max_messages, self._batch * 2)
        return received


def _publish_us(message) -> int:
    published = message.publish_time
    return int(published.timestamp() * 1_000_000) if published else time.time_ns() // 1000


class ReadFromPubSubPortable(beam.PTransform):
    """``PBegin -> PCollection[bytes]`` read from ``subscription`` (``projects/P/subscriptions/S``).

    ``max_messages`` per pull (Pub/Sub allows up to 1,000), ``max_pull_s`` seconds of
    pulling per bundle, ``poll_s`` seconds between pulls when the subscription is empty,
    ``idle_s`` seconds of emptiness before the watermark moves on from the newest timestamp
    pulled (``PullWatermark.empty``),
    ``pause_s`` seconds at least between two bundles of pulls (see the module docstring),
    ``sample_s`` seconds of
    pulls whose earliest timestamp holds the watermark (``PullWatermark``),
    ``max_future_skew_s``: how far ahead of the wall clock a timestamp attribute may be read,
    and the watermark's ceiling above it; ``readers``: how many readers pull the subscription
    (module docstring), spread over ``key_groups`` groups by ``key_group`` when it is given
    (``reader_elements``, which raises ``ValueError`` for a ``readers`` it refuses).
    """

    def __init__(
        self,
        subscription: str,
        timestamp_attribute: str | None = None,
        max_messages: int = 1000,
        max_pull_s: float = 1.0,
        poll_s: float = 0.5,
        idle_s: float = 5.0,
        pause_s: float = 0.0,
        sample_s: float = 60.0,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
        readers: int = 1,
        key_group=None,
        key_groups: int = 1,
    ) -> None:
        super().__init__()
        self._readers = reader_elements(subscription, readers, key_group, key_groups)
        self._fn = _PullFn(
            timestamp_attribute, max_messages, max_pull_s, poll_s, idle_s, pause_s, sample_s, max_future_skew_s
        )

    def expand(self, pbegin):
        readers = (
            pbegin
            | "impulse" >> beam.Impulse()
            | "readers" >> beam.FlatMap(lambda _, r=tuple(self._readers): r).with_output_types(str)
        )
        if len(self._readers) > 1:  # one reader stays fused with the impulse, as before readers existed
            readers = readers | "spread readers" >> beam.Reshuffle()
        return readers | "pull" >> beam.ParDo(self._fn)


class _PublishFn(beam.DoFn):
    """Publish ``(data, attributes)``; never raises, never waits more than ``timeout_s`` per bundle.

    Each publish is retried by the client on transient errors for at most ``timeout_s``
    seconds; ``finish_bundle`` waits for the bundle's publishes until one deadline
    ``timeout_s`` after it starts waiting. A message that is refused (topic deleted,
    permission, too large, invalid attributes) or not confirmed by then is given up: it is
    counted (``publish_failures``) and logged, once per bundle. After a bundle where the
    topic itself failed (not found, permission, unavailable, timed out), publishing is
    skipped for ``backoff_s`` seconds (those messages are counted too), so a dead topic costs
    at most one timeout per ``backoff_s``. Callers keep a durable copy of what they publish
    (the dead letters' files); a retried bundle may publish a message twice."""

    def __init__(self, topic: str, timeout_s: float, backoff_s: float) -> None:
        self._topic, self._timeout_s, self._backoff_s = topic, timeout_s, backoff_s
        self._client = None

    def setup(self) -> None:
        from google.api_core import exceptions, retry
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.PublisherClient()
        self._retry = retry.Retry(
            initial=0.1,
            maximum=5.0,
            timeout=self._timeout_s,
            predicate=retry.if_exception_type(
                exceptions.ServiceUnavailable,
                exceptions.DeadlineExceeded,
                exceptions.InternalServerError,
                exceptions.Aborted,
                exceptions.ResourceExhausted,
                exceptions.Unknown,
            ),
        )
        self._topic_errors = (
            exceptions.NotFound,
            exceptions.PermissionDenied,
            exceptions.Unauthenticated,
            exceptions.ServiceUnavailable,
            exceptions.DeadlineExceeded,
            exceptions.RetryError,
            TimeoutError,
        )
        self._failures = metrics.counter(metrics.PUBLISH_FAILURES)
        self._skip_until = 0.0

    def start_bundle(self) -> None:
        self._futures = []
        self._failed, self._first_error, self._topic_failed = 0, None, False

    def process(self, message: tuple[bytes, dict[str, str]]) -> None:
        if time.monotonic() < self._skip_until:
            self._give_up(None)
            return
        data, attributes = message
        try:
            self._futures.append(
                self._client.publish(self._topic, data, retry=self._retry, timeout=self._timeout_s, **attributes)
            )
        except Exception as e:  # refused before sending: too large, bad attributes
            self._give_up(e)

    def finish_bundle(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        for f in self._futures:
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:
                self._give_up(e)
        self._futures = []
        if self._topic_failed:
            self._skip_until = time.monotonic() + self._backoff_s
        if self._failed:
            _LOG.warning(
                "%s: %d messages of this bundle not published (first error: %r)%s",
                self._topic,
                self._failed,
                self._first_error,
                f"; not publishing for {self._backoff_s:g} s" if self._topic_failed else "",
            )

    def _give_up(self, error: Exception | None) -> None:
        self._failed += 1
        self._failures.inc()
        if error is not None:
            self._first_error = self._first_error or error
            self._topic_failed = self._topic_failed or isinstance(error, self._topic_errors)

    def teardown(self) -> None:
        if self._client is not None:
            try:
                self._client.stop()
            except RuntimeError:  # already stopped
                pass


class WriteToPubSubPortable(beam.PTransform):
    """``PCollection[(bytes, {str: str})] -> None``: publish to ``topic`` (``projects/P/topics/T``),
    best effort within ``timeout_s`` seconds per bundle, skipping the topic for ``backoff_s``
    seconds after it failed (``_PublishFn``)."""

    def __init__(self, topic: str, timeout_s: float = 30.0, backoff_s: float = 60.0) -> None:
        super().__init__()
        if timeout_s <= 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff_s >= 0")
        self._fn = _PublishFn(topic, timeout_s, backoff_s)

    def expand(self, messages):
        return messages | "publish" >> beam.ParDo(self._fn)
