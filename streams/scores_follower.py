"""Reading ``scores`` back for the API on a worker: one consumer for every call that needs it.

Most calls a worker's API takes are answered from its own steps. The others learn the
first record of their transaction on ``scores`` by reading the topic: a call handed to
the stream path (no worker held the account in time), and a fallback recorded while the
account's partition changed hands. One :class:`ScoresFollower` per worker reads for all
of them, so a rebalance at a thousand calls a second costs one consumer, not a thousand
(each of which read the partition back from before its call).

How it stays right:

- a call says since when its transaction can be on ``scores``: its start, less
  :data:`READ_BACK_MARGIN_MS` for clocks that differ between workers. A partition is
  read without a gap from some time on (its *coverage*); the first record of every key
  read since then is remembered (bounded: :data:`SEEN_PER_PARTITION`; forgetting the
  oldest moves the coverage's start past it);
- a call whose time is inside the coverage finds its first record there, or gets it
  when it is read; a call from before the coverage has the partition read again from
  its time, and what was remembered of it is dropped (the first record read from
  earlier wins);
- only the awaited keys go into the API's book, so the book never holds a "first"
  record that was not the first;
- a partition nobody waits for is paused and forgotten.

>>> follower = ScoresFollower(Settings(), AnswerBook())
>>> follower.waiting_for()
0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from flagstream.streams.api_answers import AnswerBook
from flagstream.streams.config import Settings
from flagstream.streams.topics import SCORES

log = logging.getLogger(__name__)

#: How much earlier than its call a transaction's records may be timed (another worker's
#: clock): a call's partition is read from that much before the call began.
READ_BACK_MARGIN_MS = 10_000
#: First records remembered per partition (about a minute and a half of a partition at
#: 1,000 decisions a second over four partitions).
SEEN_PER_PARTITION = 20_000
#: The longest one fetch waits when nothing comes.
FETCH_TIMEOUT_MS = 100


@dataclass(eq=False)
class _Waiter:
    key: bytes
    partition: int
    #: None: until the key's first record is read; else until the partition is read past it
    offset: int | None
    #: the earliest record time (epoch ms) its transaction can have
    start_ms: int
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ScoresFollower:
    """Reads ``scores`` partitions back for the calls waiting on them (``stop()`` at the end).

    Parameters
    ----------
    settings
        Broker, security, the ``scores`` topic and its partitions.
    book
        Where the first record of each awaited transaction goes (the API's).
    seen_per_partition
        First records remembered per partition.
    """

    def __init__(
        self, settings: Settings, book: AnswerBook, seen_per_partition: int = SEEN_PER_PARTITION
    ) -> None:
        self.settings = settings
        self.book = book
        self.topic = settings.topic(SCORES)
        self.seen_per_partition = seen_per_partition
        self.waiters: dict[int, list[_Waiter]] = {}
        #: keys some call waits for (a call and its retry may wait for one key)
        self.keys: Counter[bytes] = Counter()
        #: per partition read without a gap: the earliest record time (ms) covered
        self.covered: dict[int, int] = {}
        #: per covered partition: each key's first record since, with its time
        self.seen: dict[int, OrderedDict[bytes, tuple[bytes, int]]] = {}
        #: partitions to read again from an earlier time (ms) before the next fetch
        self.rewind: dict[int, int] = {}
        #: per covered partition: the next offset to read
        self.positions: dict[int, int] = {}
        self.assigned: frozenset[int] = frozenset()
        self.consumer: AIOKafkaConsumer | None = None
        self.reader: asyncio.Task | None = None
        self.wake = asyncio.Event()
        #: consumers started (one, unless reading failed and started again)
        self.started = 0

    def waiting_for(self) -> int:
        """How many calls wait for a record now."""
        return sum(len(w) for w in self.waiters.values())

    async def first(self, transaction_id: str, partition: int, since_ms: int) -> bool:
        """Return once the first record of ``transaction_id`` on ``scores`` (``partition``)
        is in the book. Its call began at ``since_ms`` (epoch ms). Cancel it to stop waiting."""
        if self.book.first(transaction_id) is not None:
            return True
        return await self._wait(
            _Waiter(transaction_id.encode(), partition, None, since_ms - READ_BACK_MARGIN_MS)
        )

    async def past(self, transaction_id: str, partition: int, offset: int, since_ms: int) -> bool:
        """Return once ``partition`` is read past ``offset``: the book then holds the
        transaction's first record up to there (whichever it is)."""
        return await self._wait(
            _Waiter(transaction_id.encode(), partition, offset, since_ms - READ_BACK_MARGIN_MS)
        )

    async def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
            self.reader = None
        await self._close()

    async def _wait(self, waiter: _Waiter) -> bool:
        p = waiter.partition
        self.waiters.setdefault(p, []).append(waiter)
        self.keys[waiter.key] += 1
        if p in self.covered and waiter.start_ms >= self.covered[p]:
            first = self.seen[p].get(waiter.key)
            if first is not None:
                self.book.record(waiter.key, first[0])
            self._settle(p)
        elif p in self.covered:  # (from before the coverage: read again, at the next fetch)
            self.rewind[p] = min(waiter.start_ms, self.rewind.get(p, waiter.start_ms))
        if self.reader is None or self.reader.done():
            self.reader = asyncio.ensure_future(self._read())
        self.wake.set()
        try:
            return bool(await asyncio.shield(waiter.done))
        finally:
            self._forget(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        waiting = self.waiters.get(waiter.partition, [])
        with contextlib.suppress(ValueError):
            waiting.remove(waiter)
        if not waiting:
            self.waiters.pop(waiter.partition, None)
        self.keys[waiter.key] -= 1
        if self.keys[waiter.key] <= 0:
            del self.keys[waiter.key]

    async def _read(self) -> None:
        while True:
            if not self.waiters:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                consumer = await self._consumer()
                await self._follow_waited(consumer)
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=5_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # (a new client, read again from the callers' times)
                log.warning("reading scores back failed (%s); retrying", type(exc).__name__)
                await self._close()
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                if tp.partition in self.covered and tp.partition not in self.rewind:
                    self._take(tp.partition, records)

    def _take(self, p: int, records: list) -> None:
        seen, keys = self.seen[p], self.keys
        for r in records:
            self.positions[p] = r.offset + 1
            if r.key is None or r.key in seen:
                continue
            seen[r.key] = (r.value, r.timestamp)
            if r.key in keys:
                self.book.record(r.key, r.value)
            if len(seen) > self.seen_per_partition:  # (the coverage now starts after the oldest)
                _, (_, timestamp) = seen.popitem(last=False)
                self.covered[p] = max(self.covered[p], timestamp + 1)
        self._settle(p)

    def _earliest_waiting(self, p: int) -> int | None:
        starts = [w.start_ms for w in self.waiters.get(p, []) if not w.done.done()]
        return min(starts) if starts else None

    async def _follow_waited(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the partitions nobody waits for; seek those to read from earlier."""
        if not set(self.waiters) <= self.assigned:
            self._assign(consumer, self.assigned | set(self.waiters))
        for p in list(self.covered):
            if p not in self.waiters:
                consumer.pause(TopicPartition(self.topic, p))
                self._uncover(p)
        for p in self.waiters:
            earliest = self._earliest_waiting(p)
            if earliest is not None and p not in self.covered:
                self.rewind[p] = min(earliest, self.rewind.get(p, earliest))
        if not self.rewind:
            return
        wanted = {TopicPartition(self.topic, p): max(t, 0) for p, t in self.rewind.items()}
        found = await consumer.offsets_for_times(wanted)
        ends = await consumer.end_offsets([tp for tp, at in found.items() if at is None])
        for tp, at in found.items():
            consumer.seek(tp, at.offset if at is not None else ends[tp])
            consumer.resume(tp)
            p = tp.partition
            self.covered[p], self.seen[p] = wanted[tp], OrderedDict()
            self.positions[p] = at.offset if at is not None else ends[tp]
            del self.rewind[p]
            self._settle(p)

    def _settle(self, p: int) -> None:
        """Wake the calls of partition ``p`` whose record is read, or whose offset is passed."""
        position = self.positions.get(p, 0)
        for waiter in self.waiters.get(p, []):
            if waiter.done.done() or p not in self.covered or p in self.rewind:
                continue
            if waiter.offset is None:
                if waiter.key in self.seen[p] or waiter.key in self.book.records:
                    waiter.done.set_result(True)
            elif position > waiter.offset:
                waiter.done.set_result(True)

    def _uncover(self, p: int) -> None:
        self.covered.pop(p, None)
        self.seen.pop(p, None)
        self.positions.pop(p, None)

    def _assign(self, consumer: AIOKafkaConsumer, partitions: AbstractSet[int]) -> None:
        """Every partition asked for, paused until awaited (what was read is forgotten)."""
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        consumer.pause(*consumer.assignment())
        self.assigned = frozenset(partitions)
        for p in list(self.covered):
            self._uncover(p)

    async def _consumer(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            s = self.settings
            consumer = AIOKafkaConsumer(
                bootstrap_servers=s.broker,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_wait_ms=s.fetch_max_wait_ms,
                **s.kafka_security(),
            )
            await consumer.start()
            self.consumer, self.started = consumer, self.started + 1
            self._assign(consumer, set(range(s.partitions)))
        return self.consumer

    async def _close(self) -> None:
        consumer, self.consumer = self.consumer, None
        self.assigned = frozenset()
        for p in list(self.covered):
            self._uncover(p)
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
