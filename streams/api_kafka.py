"""The scoring API's Kafka side: it produces transactions and fallbacks, and reads every answer.

One :class:`KafkaLink` per API process. It owns an idempotent producer and a consumer
with no group that is assigned every partition of ``scores`` and of
``transactions.dlq``:

- ``scores`` is read from :attr:`Settings.api_lookback_s` back at start (then on), and
  each transaction id's first record goes into the :class:`AnswerBook`, which wakes the
  call waiting for it;
- ``transactions.dlq`` is read from its end at start: a dead letter for a transaction a
  call waits for (a ``duplicate_transaction`` above all) answers that call;
- :meth:`KafkaLink.passed` tells when the consumer has read a ``scores`` partition past
  an offset: after a fallback is acknowledged at offset *F*, the book's first record for
  the transaction is the decision of record (a real decision before *F*, else the fallback).

Every record read is hostile: an unreadable one is skipped and counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flagstream.codec import dumps
from flagstream.streams.api_answers import AnswerBook, dead_letter_of
from flagstream.streams.config import Settings
from flagstream.streams.topics import SCORES, TRANSACTIONS, TRANSACTIONS_DLQ, partition_for

log = logging.getLogger(__name__)


class KafkaLink:
    """Producer and answer reader of one API process (``start()``/``stop()``).

    Parameters
    ----------
    settings
        Broker, topics, partitions, look-back.
    book
        Where the first record of each transaction id on ``scores`` goes.
    """

    def __init__(self, settings: Settings, book: AnswerBook) -> None:
        self.settings = settings
        self.book = book
        self.transactions = settings.topic(TRANSACTIONS)
        self.scores = settings.topic(SCORES)
        self.dlq = settings.topic(TRANSACTIONS_DLQ)
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.reader: asyncio.Task | None = None
        #: next offset to read, per ``scores`` partition, and the calls waiting on one
        self.positions: dict[int, int] = {}
        self.position_waiters: dict[int, list[tuple[int, asyncio.Future]]] = defaultdict(list)
        self.partitions: dict[str, int] = {}
        self.unreadable = 0
        self.ready = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.broker, acks="all",
                                         enable_idempotence=s.producer_idempotence, linger_ms=1,
                                         **s.kafka_security())
        # (the fetch wait as the worker's: a fetch holding only idle partitions, the dead
        # letters, must not keep the answers unread for aiokafka's default 500 ms)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=s.broker, group_id=None,
                                         enable_auto_commit=False,
                                         fetch_max_wait_ms=s.fetch_max_wait_ms, **s.kafka_security())
        await self.producer.start()
        await self.consumer.start()
        for topic in (self.transactions, self.scores, self.dlq):
            parts = await self.producer.partitions_for(topic)
            if not parts:
                raise RuntimeError(f"topic {topic!r} has no partitions (is a worker running?)")
            self.partitions[topic] = len(parts)
        scores = [TopicPartition(self.scores, p) for p in range(self.partitions[self.scores])]
        dlq = [TopicPartition(self.dlq, p) for p in range(self.partitions[self.dlq])]
        self.consumer.assign(scores + dlq)
        since = int((time.time() - s.api_lookback_s) * 1000)
        found = await self.consumer.offsets_for_times({tp: since for tp in scores})
        ends = await self.consumer.end_offsets(scores + dlq)
        for tp in scores:
            at = found.get(tp)
            offset = at.offset if at is not None else ends[tp]
            self.consumer.seek(tp, offset)
            self.positions[tp.partition] = offset
        for tp in dlq:
            self.consumer.seek(tp, ends[tp])
        self.reader = asyncio.ensure_future(self._read())
        self.ready.set()
        log.info("scoring API reads %s (%d partitions, from %.0f s back) and %s", self.scores,
                 len(scores), s.api_lookback_s, self.dlq)

    async def stop(self) -> None:
        self.ready.clear()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
            self.reader = None
        for client in (self.consumer, self.producer):
            if client is not None:
                await client.stop()
        self.consumer = self.producer = None

    # --- produce -----------------------------------------------------------------------------
    async def send_transaction(self, transaction_id: str, account_id: str, value: bytes) -> None:
        """One transaction to its account's partition; returns once the broker has it."""
        assert self.producer is not None
        n = self.partitions[self.transactions]
        await self.producer.send_and_wait(self.transactions, value, key=account_id.encode(),
                                          partition=partition_for(account_id, n))

    async def send_fallback(self, transaction_id: str, record: dict) -> tuple[int, int]:
        """A fallback record to the transaction's ``scores`` partition (where its decision
        goes); returns ``(partition, offset)`` once the broker has it."""
        assert self.producer is not None
        part = partition_for(transaction_id, self.partitions[self.scores])
        meta = await self.producer.send_and_wait(self.scores, dumps(record),
                                                 key=transaction_id.encode(), partition=part)
        return meta.partition, meta.offset

    async def passed(self, transaction_id: str, partition: int, offset: int, timeout_s: float) -> bool:
        """Whether the consumer reads ``scores`` ``partition`` past ``offset`` within the time
        (so the book holds ``transaction_id``'s first record, whichever it is)."""
        if self.positions.get(partition, 0) > offset:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self.position_waiters[partition].append((offset, waiter))
        try:
            await asyncio.wait_for(waiter, timeout_s)
            return True
        except TimeoutError:
            return False

    # --- read --------------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=5_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client reconnects; keep reading
                log.warning("reading answers failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                if tp.topic == self.scores:
                    for r in records:
                        self.book.record(r.key, r.value)
                    if records:
                        self._moved(tp.partition, records[-1].offset + 1)
                else:
                    for r in records:
                        self._dead_letter(r.value)

    def _dead_letter(self, value: bytes | None) -> None:
        letter = dead_letter_of(value)
        if letter is None:
            self.unreadable += 1
            return
        self.book.dead_lettered(*letter)

    def _moved(self, partition: int, position: int) -> None:
        self.positions[partition] = position
        waiters = self.position_waiters.get(partition)
        if not waiters:
            return
        keep = []
        for offset, waiter in waiters:
            if position > offset:
                if not waiter.done():
                    waiter.set_result(None)
            elif not waiter.done():
                keep.append((offset, waiter))
        self.position_waiters[partition] = keep
