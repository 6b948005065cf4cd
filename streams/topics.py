"""The project's topics: names, partition counts and creation on start.

>>> from flagstream.streams.config import Settings
>>> [t.name for t in topic_specs(Settings(topic_prefix="x."))][:3]
['x.transactions', 'x.transactions.dlq', 'x.scores']
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from flagstream.streams.config import Settings

log = logging.getLogger(__name__)

TRANSACTIONS = "transactions"
TRANSACTIONS_DLQ = "transactions.dlq"
SCORES = "scores"
REVIEW = "review"
FEEDBACK = "feedback"
FEEDBACK_DLQ = "feedback.dlq"
MODELS = "models"
MERCHANT_ACTIVITY = "merchant.activity"
MERCHANT_STATE = "merchant.state"

_COMPACT = {"cleanup.policy": "compact"}
_WEEK_MS = str(7 * 86_400_000)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the pipeline uses, with its partitions and configuration."""
    n = settings.partitions
    retention = str(int(settings.feature_retention_s * 1000))
    return [
        TopicSpec(settings.topic(TRANSACTIONS), n),
        TopicSpec(settings.topic(TRANSACTIONS_DLQ), n, {"retention.ms": _WEEK_MS}),
        TopicSpec(settings.topic(SCORES), n, {"retention.ms": retention}),
        TopicSpec(settings.topic(REVIEW), n),
        TopicSpec(settings.topic(FEEDBACK), n),
        TopicSpec(settings.topic(FEEDBACK_DLQ), n, {"retention.ms": _WEEK_MS}),
        TopicSpec(
            settings.topic(MODELS), n,
            {**_COMPACT, "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1"},
        ),
        TopicSpec(settings.topic(MERCHANT_ACTIVITY), n),
        TopicSpec(settings.topic(MERCHANT_STATE), n, _COMPACT),
    ]


def durability(settings: Settings) -> dict[str, str]:
    """Topic configuration every topic gets: the writes that must land before one counts."""
    return {"min.insync.replicas": str(settings.min_insync_replicas)}


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for a string key.

    >>> partition_for("c-42", 4) == partition_for("c-42", 4)
    True
    """
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


async def create_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Existing ones are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.kafka_security())
    created: list[str] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except Exception:  # the broker may still be starting
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in topic_specs(settings) if s.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, settings.replication_factor,
                              topic_configs={**s.config, **durability(settings)})
                     for s in missing]
                )
            except TopicAlreadyExistsError:
                pass
            created = [s.name for s in missing]
            log.info("created topics %s", created)
        await _wait_until_visible(admin, topic_specs(settings), deadline)
    finally:
        await admin.close()
    return created


async def _wait_until_visible(admin: AIOKafkaAdminClient, specs: list[TopicSpec],
                              deadline: float) -> None:
    """Return once the broker's metadata shows every topic with a leader for each partition.

    A loaded broker can answer "unknown topic" for seconds after creating one; a consumer
    that joins its group then is assigned nothing and waits for its next metadata refresh.
    """
    loop = asyncio.get_running_loop()
    wanted = {s.name: s.partitions for s in specs}
    while True:
        pending = sorted(set(wanted) - _ready(await admin.describe_topics(list(wanted)), wanted))
        if not pending:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics not in the broker's metadata yet: {pending}")
        await asyncio.sleep(0.2)


def _ready(described: list[dict], wanted: dict[str, int]) -> set[str]:
    """Names among ``described`` (metadata topic objects) with every partition led."""
    return {
        t["topic"] for t in described
        if t["error_code"] == 0 and t["topic"] in wanted
        and len(t["partitions"]) >= wanted[t["topic"]]
        and all(p["leader"] >= 0 for p in t["partitions"])
    }
