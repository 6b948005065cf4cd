"""Sending a batch's outputs and waiting until the broker has them all.

The hot path never sends record by record: an :class:`Outbox` collects a batch's
records per topic-partition (keyed records are partitioned exactly like Kafka's
default partitioner, see :func:`flagstream.streams.core.partitions_for`) and hands each group
to the producer as one closed record batch, so it leaves at once and costs one
future instead of one per record. :func:`flagstream.streams.compat.internals.stage_rows` does the
same for Faust table rows: one changelog batch and, once it is acknowledged, one local RocksDB write
batch per partition.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np

from flagstream.codec import dumps
from flagstream.features.merchants import MerchantActivity
from flagstream.streams.app import Pipeline
from flagstream.streams.core import partitions_for
from flagstream.streams.topics import partition_for

Headers = Sequence[tuple[str, bytes]]


async def deliver(pending: Sequence[Awaitable]) -> None:
    """Wait until every send of a batch is acknowledged by the broker."""
    if pending:
        await asyncio.gather(*pending)


async def send_activity(p: Pipeline, activity: MerchantActivity) -> list[Awaitable]:
    """Send merchant counts/labels, one record per merchant-state partition."""
    n = p.settings.partitions
    home = np.fromiter((partition_for(m, n) for m in activity.merchant_ids), np.int64)
    topic = p.topics["merchant_activity"].get_topic_name()
    pending = []
    for part in np.unique(home):
        sel = np.flatnonzero(home == part)
        piece = activity.select(sel)
        pending.append(
            await p.app.producer.send(topic, None, dumps(piece.to_wire()), int(part), None, None)
        )
    return pending


def activity_records(activity: MerchantActivity, partitions: int) -> list[tuple[int, bytes]]:
    """Merchant activity as one ``(partition, value)`` record per merchant-state partition."""
    if not len(activity):
        return []
    home = partitions_for(activity.merchant_ids, partitions)
    out = []
    for part in np.unique(home).tolist():
        sel = np.flatnonzero(home == part)
        piece = activity.select(sel)
        out.append((part, dumps(piece.to_wire())))
    return out


class Outbox:
    """One batch's output records, grouped per topic-partition, sent as record batches.

    Parameters
    ----------
    producer
        An ``aiokafka.AIOKafkaProducer`` (for a Faust app:
        :func:`flagstream.streams.compat.internals.kafka_producer`).
    partition_counts
        A cache of topic partition counts, shared between outboxes.
    """

    def __init__(self, producer: Any, partition_counts: dict[str, int] | None = None) -> None:
        self.producer = producer
        self.groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Headers]]] = (
            defaultdict(list)
        )
        self._partition_counts = partition_counts if partition_counts is not None else {}
        #: ``(topic, partition, records)`` of each batch sent, in order (same as futures).
        self.sent: list[tuple[str, int, int]] = []

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
            headers: Headers = ()) -> None:
        """One record to an explicit partition."""
        self.groups[(topic, int(partition))].append((key, value, headers))

    def extend(self, other: Outbox) -> None:
        """Move every record queued in ``other`` into this outbox, in order."""
        for target, records in other.groups.items():
            self.groups[target].extend(records)
        other.groups.clear()

    def add_keyed(self, topic: str, keys: Sequence[str], values: Sequence[bytes],
                  partitions: int) -> None:
        """Records keyed by ``keys`` (UTF-8), each on the partition its key hashes to
        among ``partitions`` (see :meth:`partition_count`)."""
        if not keys:
            return
        groups = self.groups
        for part, key, value in zip(partitions_for(keys, partitions).tolist(), keys, values,
                                    strict=True):
            groups[(topic, part)].append((key.encode(), value, ()))

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` as the producer's metadata knows them (cached)."""
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = len(await self.producer.partitions_for(topic))
        return count

    async def send(self) -> list[asyncio.Future]:
        """Hand every group to the producer; returns one future per record batch sent.

        Each future's result is the ``RecordMetadata`` of the batch's first record.
        """
        producer = self.producer
        futures = []
        self.sent = []
        for (topic, partition), records in self.groups.items():
            batch, n = producer.create_batch(), 0
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                    futures.append(await self._submit(batch, topic, partition, n))
                    batch, n = producer.create_batch(), 0
                    if batch.append(key=key, value=value, timestamp=None,
                                    headers=list(headers)) is None:
                        raise ValueError(f"a record for {topic} is larger than a producer batch")
                n += 1
            futures.append(await self._submit(batch, topic, partition, n))
        self.groups.clear()
        return futures

    def last_offsets(self, metas: Sequence[Any]) -> dict[tuple[str, int], int]:
        """Last offset written per topic-partition, from the results of :meth:`send`'s futures."""
        out: dict[tuple[str, int], int] = {}
        for (topic, partition, n), meta in zip(self.sent, metas, strict=True):
            last = meta.offset + n - 1
            if last > out.get((topic, partition), -1):
                out[(topic, partition)] = last
        return out

    async def _submit(self, batch: Any, topic: str, partition: int, n: int) -> asyncio.Future:
        batch.close()  # closed: it leaves now instead of lingering for more records
        self.sent.append((topic, partition, n))
        return await self.producer.send_batch(batch, topic, partition=partition)
