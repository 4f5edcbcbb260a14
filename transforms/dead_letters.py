"""Dead letters to durable files, and a bounded copy to a Pub/Sub topic.

``WriteDeadLetters(path, topic, run_id)``: ``PCollection[DeadLetter] -> None``.

* **Files, always:** every dead letter is a line of a JSONL file under ``path`` (folder of
  its processing-time hour, ``schemas.archive``), written before the bundle that carried
  it commits (``transforms.files.WriteJsonlByHour``), so before its message is
  acknowledged. The files are the dead letters' durable record; the redrive reads them.
* **Pub/Sub, best effort (when ``topic``):** ``DeadLetter.pubsub_message``: the payload cut
  to ``max_published_payload_bytes`` (1 MB by default; attributes say ``truncated`` and the
  full ``payload_bytes``), published by ``WriteToPubSubPortable``, which never raises and
  never holds a bundle more than its timeout: a topic that is deleted, refuses or hangs
  costs the job nothing but the ``publish_failures`` counter and a log line per bundle.
"""

from __future__ import annotations

import apache_beam as beam

from schemas.archive import MAX_PUBLISHED_PAYLOAD_BYTES, hour_of_us
from transforms.files import WriteJsonlByHour
from transforms.pubsub_io import WriteToPubSubPortable

FILE_PREFIX = "dead-letters"


class WriteDeadLetters(beam.PTransform):
    def __init__(
        self, path: str, topic: str | None, run_id: str, max_published_payload_bytes: int = MAX_PUBLISHED_PAYLOAD_BYTES
    ) -> None:
        super().__init__()
        if not path:
            raise ValueError("dead letters need a folder for their files")
        self._path, self._topic, self._run_id = path, topic, run_id
        self._max_published = max_published_payload_bytes

    def expand(self, dead):
        (
            dead
            | "by hour" >> beam.Map(lambda d: (hour_of_us(d.processing_time_us), [d.to_json()]))
            | "files" >> WriteJsonlByHour(self._path, FILE_PREFIX, self._run_id)
        )
        if self._topic:
            (
                dead
                | "to Pub/Sub messages" >> beam.Map(lambda d, n=self._max_published: d.pubsub_message(n))
                | "to Pub/Sub" >> WriteToPubSubPortable(self._topic)
            )
