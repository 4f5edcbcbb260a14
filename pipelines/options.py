"""Pipeline flags (Beam ``PipelineOptions``) and the frozen job config built from them."""
from __future__ import annotations

from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

from schemas import storage
from transforms.validate import AcceptancePolicy

DEFAULT_SUBSCRIPTION = "viewcounts-events-sub"
DEFAULT_TOPIC = "viewcounts-events"
DEFAULT_DEAD_LETTER_TOPIC = "viewcounts-dead-letters"
DEFAULT_TIMESTAMP_ATTRIBUTE = "ts"


class CountingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input_subscription", help="projects/P/subscriptions/S to read events from")
        parser.add_argument("--dead_letter_topic", help="projects/P/topics/T for dead letters")
        parser.add_argument("--dead_letter_path", help="folder (local or gs://) for dead-letter files")
        parser.add_argument("--bigtable_project", default=storage.DEFAULT_PROJECT)
        parser.add_argument("--bigtable_instance", default=storage.DEFAULT_INSTANCE)
        parser.add_argument("--bigtable_table", default=storage.DEFAULT_TABLE)
        parser.add_argument("--archive_path", help="folder (local or gs://) of the raw archive")
        parser.add_argument("--metadata_path", help="JSONL metadata snapshot (video_id, title, channel)")
        parser.add_argument("--metadata_refresh_s", type=int, default=None,
                            help="re-read --metadata_path every N seconds (not on the local runner)")
        parser.add_argument("--timestamp_attribute", default=DEFAULT_TIMESTAMP_ATTRIBUTE,
                            help="Pub/Sub attribute with a message's earliest event time (ms since the epoch or "
                            "RFC 3339); drives the watermark on Prism, Flink and Dataflow")
        parser.add_argument("--allowed_lateness_s", type=int, default=600)
        parser.add_argument("--max_future_skew_s", type=int, default=300)
        parser.add_argument("--max_event_age_s", type=int, default=7 * 24 * 3600)
        parser.add_argument("--no_event_age_check", dest="check_event_age", action="store_false",
                            help="judge no event against the clock (replays of historical data): "
                            "too_old and future_timestamp never fire")
        parser.add_argument("--early_firing_s", type=int, default=30,
                            help="processing-time seconds between early (and late) panes")
        parser.add_argument("--dedup_shards", type=int, default=None,
                            help="keys of the stateful stages (dedup, panes); default: LOCAL_SHARDS on the local "
                            "runner (one worker thread, and every key costs it a bundle), DISTRIBUTED_SHARDS "
                            "elsewhere. Keep it fixed across restores: state is keyed by it")
        parser.add_argument("--archive_flush_s", type=int, default=60,
                            help="processing-time seconds between archive and dead-letter files")


@dataclass(frozen=True)
class SinkConfig:
    bigtable_project: str
    bigtable_instance: str
    bigtable_table: str
    archive_path: str | None
    dead_letter_topic: str | None
    dead_letter_path: str | None
    archive_flush_s: int | None


LOCAL_SHARDS = 4  # measured by viewcounts bench: 16 keys cost the local runner about 3x the time of 4
DISTRIBUTED_SHARDS = 16


def policy_of(o: CountingOptions, check_age: bool = True, local: bool = False) -> AcceptancePolicy:
    return AcceptancePolicy(o.allowed_lateness_s, o.max_future_skew_s, o.max_event_age_s,
                            check_age, o.dedup_shards or (LOCAL_SHARDS if local else DISTRIBUTED_SHARDS))


def sinks_of(o: CountingOptions, streaming: bool = True) -> SinkConfig:
    return SinkConfig(o.bigtable_project, o.bigtable_instance, o.bigtable_table, o.archive_path,
                      o.dead_letter_topic, o.dead_letter_path, o.archive_flush_s if streaming else None)
