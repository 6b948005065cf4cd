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
  read since then is remembered, with the record itself for the transactions of calls in
  flight on this worker (:meth:`ScoresFollower.expect`), so a call that begins to wait
  after its record was read finds it (bounded: :data:`SEEN_PER_PARTITION`; forgetting
  the oldest moves the coverage's start past it);
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
import time
from collections import Counter, OrderedDict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from flagstream.streams.api_answers import AnswerBook
from flagstream.streams.config import Settings
from flagstream.streams.topics import SCORES

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


#: How much earlier than its call a transaction's records may be timed (another worker's
#: clock): a call's partition is read from that much before the call began.
READ_BACK_MARGIN_MS = 10_000
#: Keys whose first record is remembered, per partition read (the margin's worth of a
#: partition taking 5,000 decisions a second; only calls in flight keep their record).
SEEN_PER_PARTITION = 50_000
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
        #: keys of the calls in flight on this worker (their records are kept when read)
        self.calls: set[bytes] = set()
        #: per partition read without a gap: the earliest record time (ms) covered
        self.covered: dict[int, int] = {}
        #: per covered partition: each key's first record since (None: not kept), its time
        self.seen: dict[int, OrderedDict[bytes, tuple[bytes | None, int]]] = {}
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
        self.warned = False

    def expect(self, transaction_id: str) -> None:
        """A call for ``transaction_id`` began: keep its record if it is read meanwhile."""
        self.calls.add(transaction_id.encode())

    def release(self, transaction_id: str) -> None:
        """That call ended."""
        self.calls.discard(transaction_id.encode())

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
        if p in self.covered:
            first = self.seen[p].get(waiter.key)
            if first is not None and first[0] is None:  # (read before its call, not kept)
                self._read_again(p, min(waiter.start_ms, first[1]))
            elif waiter.start_ms < self.covered[p]:
                self._read_again(p, waiter.start_ms)
            else:
                if first is not None and first[0] is not None:
                    self.book.record(waiter.key, first[0])
                self._settle(p)
        if self.reader is None or self.reader.done():
            self.reader = asyncio.ensure_future(self._read())
        self.wake.set()
        try:
            return bool(await asyncio.shield(waiter.done))
        finally:
            self._forget(waiter)

    def _read_again(self, p: int, start_ms: int) -> None:
        """Read partition ``p`` again from ``start_ms`` before the next fetch (its records
        fetched meanwhile are dropped: :meth:`_read`)."""
        self.rewind[p] = min(start_ms, self.rewind.get(p, start_ms))

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
            if not self.waiters:  # (nobody waits: every partition paused and forgotten)
                if self.consumer is not None:
                    self._pause_unwaited(self.consumer)
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
        needed: int | None = None  # (the same for every record of the fetch: found once)
        for r in records:
            self.positions[p] = r.offset + 1
            if r.key is None or r.key in seen:
                continue
            kept = r.key in keys or r.key in self.calls
            seen[r.key] = (r.value if kept else None, r.timestamp)
            if r.key in keys:
                self.book.record(r.key, r.value)
            if len(seen) > self.seen_per_partition:
                if needed is None:
                    needed = self._needed_since(p)
                self._forget_oldest(p, needed)
        self._settle(p)

    def _needed_since(self, p: int) -> int:
        """The earliest record time of partition ``p`` a call waiting now, or one starting
        now, may need (the calls' waits change only when :meth:`_settle` wakes them)."""
        needed = _now_ms() - READ_BACK_MARGIN_MS  # (a call starting now)
        earliest = self._earliest_waiting(p)
        return needed if earliest is None else min(needed, earliest)

    def _forget_oldest(self, p: int, needed: int) -> None:
        """Forget the partition's oldest first record (its coverage then starts after it),
        unless a call that may need records since ``needed`` (:meth:`_needed_since`) needs
        it: the partition would be read again for each, never reaching its head on a busy
        partition. Past twice the bound it is forgotten all the same (memory comes first)."""
        seen = self.seen[p]
        _, (_, timestamp) = next(iter(seen.items()))
        if timestamp >= needed and len(seen) <= 2 * self.seen_per_partition:
            return
        if timestamp >= needed and not self.warned:
            self.warned = True
            log.warning(
                "reading scores back: partition %d has more than %d decisions within "
                "%d s; calls waiting on it may not be answered in time",
                p,
                2 * self.seen_per_partition,
                READ_BACK_MARGIN_MS // 1000,
            )
        seen.popitem(last=False)
        self.covered[p] = max(self.covered[p], timestamp + 1)

    def _earliest_waiting(self, p: int) -> int | None:
        starts = [w.start_ms for w in self.waiters.get(p, []) if not w.done.done()]
        return min(starts) if starts else None

    async def _follow_waited(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the partitions nobody waits for; seek those to read from earlier."""
        if not set(self.waiters) <= self.assigned:
            self._assign(consumer, self.assigned | set(self.waiters))
        self._pause_unwaited(consumer)
        for p in self.waiters:
            earliest = self._earliest_waiting(p)
            if earliest is not None and p not in self.covered:
                self.rewind[p] = min(earliest, self.rewind.get(p, earliest))
        if not self.rewind:
            return
        wanted = {TopicPartition(self.topic, p): max(t, 0) for p, t in self.rewind.items()}
        # (the ends first: a record written between the two answers is then read, not skipped)
        ends = await consumer.end_offsets(list(wanted))
        found = await consumer.offsets_for_times(wanted)
        for tp, at in found.items():
            p = tp.partition
            offset = at.offset if at is not None else ends[tp]
            consumer.seek(tp, offset)
            consumer.resume(tp)
            self.covered[p], self.seen[p], self.positions[p] = wanted[tp], OrderedDict(), offset
            # a call that came during the round trips may need the partition from earlier
            earliest = self._earliest_waiting(p)
            asked = min(self.rewind.pop(p, wanted[tp]), wanted[tp] if earliest is None else earliest)
            if asked < wanted[tp]:
                self.rewind[p] = asked
            else:
                self._settle(p)

    def _pause_unwaited(self, consumer: AIOKafkaConsumer) -> None:
        for p in list(self.covered):
            if p not in self.waiters:
                consumer.pause(TopicPartition(self.topic, p))
                self._uncover(p)

    def _settle(self, p: int) -> None:
        """Wake the calls of partition ``p`` whose record is read, or whose offset is passed."""
        position = self.positions.get(p, 0)
        for waiter in self.waiters.get(p, []):
            if waiter.done.done() or p not in self.covered or p in self.rewind:
                continue
            if waiter.offset is None:
                if waiter.key in self.book.records:
                    waiter.done.set_result(True)
            elif position > waiter.offset:
                waiter.done.set_result(True)

    def _uncover(self, p: int) -> None:
        self.rewind.pop(p, None)
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
