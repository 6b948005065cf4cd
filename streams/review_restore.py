"""Rebuild the review queue after a restart or a rebalance, from Kafka itself.

The review agent acknowledges each flagged record as soon as it is queued in
memory, so the consumer group's committed offset says nothing about what is still
waiting for a person. When this worker gains review partitions it re-reads them
from ``lookback_s`` ago (``offsets_for_times``) up to their current end, reads the
feedback topic over the same span, and queues every flagged transaction that has
no label yet (from any source: review, chargeback, auto). Records the live agent
also delivers are de-duplicated by transaction id.

This uses a plain aiokafka consumer without a group (it only reads, it never
commits), so it is not a second agent on the feedback topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from flagstream.codec import loads
from flagstream.sinks.review.service import ReviewService
from flagstream.streams.config import Settings

log = logging.getLogger(__name__)

#: How far back a rebuild looks for flagged transactions still waiting (7 days).
LOOKBACK_S = 7 * 86_400


async def read_since(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], since_ms: int, deadline: float
) -> list[tuple[int, bytes]]:
    """``(partition, value)`` of every record at or after ``since_ms``, up to today's end."""
    if not tps:
        return []
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    todo: dict[TopicPartition, int] = {}
    for tp in tps:
        start = starts.get(tp)
        if start is not None and start.offset < ends[tp]:
            consumer.seek(tp, start.offset)
            todo[tp] = ends[tp]
    out: list[tuple[int, bytes]] = []
    loop = asyncio.get_running_loop()
    while todo and loop.time() < deadline:
        batch = await consumer.getmany(*todo, timeout_ms=500)
        for tp, messages in batch.items():
            out.extend((tp.partition, m.value) for m in messages if m.offset < todo.get(tp, -1))
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp]:
                del todo[tp]
    if todo:
        log.warning("review rebuild stopped at its deadline; %d partitions unfinished", len(todo))
    return out


def _decode(value: bytes | None) -> dict | None:
    try:
        obj = loads(value) if value is not None else None
    except Exception:  # a bad record is the dead-letter path's business, not ours
        return None
    return obj if isinstance(obj, dict) else None


async def rebuild(
    settings: Settings,
    service: ReviewService,
    review_topic: str,
    feedback_topic: str,
    partitions: Iterable[int],
    owned: Callable[[int], bool],
    lookback_s: float = LOOKBACK_S,
    timeout_s: float = 120.0,
) -> dict:
    """Queue the unlabelled flags of ``partitions`` from the last ``lookback_s`` seconds."""
    started = time.monotonic()
    parts = sorted(partitions)
    since_ms = int((time.time() - lookback_s) * 1000)
    deadline = asyncio.get_running_loop().time() + timeout_s
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker, enable_auto_commit=False, group_id=None,
        **settings.kafka_security(),
    )
    await consumer.start()
    try:
        review = await read_since(
            consumer, [TopicPartition(review_topic, p) for p in parts], since_ms, deadline
        )
        feedback_parts = consumer.partitions_for_topic(feedback_topic) or range(settings.partitions)
        feedback = await read_since(
            consumer, [TopicPartition(feedback_topic, p) for p in sorted(feedback_parts)],
            since_ms, deadline,
        )
    finally:
        await consumer.stop()
    flagged: dict[str, tuple[int, dict]] = {}
    for partition, value in review:
        record = _decode(value)
        if record is not None and isinstance(record.get("transaction_id"), str):
            flagged[record["transaction_id"]] = (partition, record)
    labels: dict[str, dict] = {}
    for _, value in feedback:
        fb = _decode(value)
        if fb is not None and isinstance(fb.get("transaction_id"), str):
            labels[fb["transaction_id"]] = fb
    queued = 0
    for tx, (partition, record) in flagged.items():
        if tx not in labels and owned(partition) and service.ingest(record, partition) is not None:
            queued += 1
    for tx, fb in labels.items():
        if tx in flagged:  # labels of other partitions' flags are not this worker's concern
            service.labelled_elsewhere(flagged[tx][1], fb)
    summary = {
        "partitions": parts, "flagged": len(flagged),
        "labelled": sum(1 for tx in labels if tx in flagged),
        "queued": queued, "seconds": round(time.monotonic() - started, 2),
    }
    log.info("review queue rebuilt from Kafka: %s", summary)
    return summary
