"""Single records coalesced per partition (the API's produces on a worker): each record's
own offset, records that arrive while a batch is being taken go in the next one, a full
batch splits, a failed batch fails its records only, and the sender goes on after it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flagstream.streams.coalesced_sends import CoalescedSends, Sent


class Placed:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Batch:
    def __init__(self, capacity: int) -> None:
        self.values: list[bytes] = []
        self.capacity = capacity
        self.closed = False

    def append(self, key: bytes, value: bytes, timestamp: Any = None) -> Placed | None:
        if self.closed or len(self.values) >= self.capacity:
            return None
        self.values.append(value)
        return Placed(len(self.values) - 1)

    def close(self) -> None:
        self.closed = True


class SlowProducer:
    """A log per partition; like aiokafka's, one batch per partition is taken at a time
    (``send_batch`` returns when the producer took it, the future when it is written), and
    the broker acknowledges only when told (``ack``)."""

    def __init__(self, capacity: int = 1_000) -> None:
        self.capacity = capacity
        self.logs: dict[tuple[str, int], list[bytes]] = {}
        self.batches: list[list[bytes]] = []
        self.taking = asyncio.Event()
        self.unacked: list[tuple[asyncio.Future, Any]] = []
        self.failing = False

    def create_batch(self) -> Batch:
        return Batch(self.capacity)

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future:
        assert batch.closed
        await self.taking.wait()  # (the previous batch of the partition is still being taken)
        done = asyncio.get_running_loop().create_future()
        self.batches.append(list(batch.values))
        if self.failing:
            self.unacked.append((done, ConnectionError("broker down")))
            return done
        log = self.logs.setdefault((topic, partition), [])
        base = len(log)
        log.extend(batch.values)
        self.unacked.append((done, Sent(partition, base)))
        return done

    def ack(self) -> None:
        for done, outcome in self.unacked:
            if isinstance(outcome, Exception):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
        self.unacked.clear()


async def until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_records_arriving_while_a_batch_is_taken_join_the_next_with_their_own_offsets():
    async def go() -> None:
        producer = SlowProducer()
        sends = CoalescedSends(lambda: producer)
        first = asyncio.ensure_future(sends.send("tx", 0, b"k", b"a"))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(sends.send("tx", 0, b"k", v)) for v in (b"b", b"c", b"d")]
        other = asyncio.ensure_future(sends.send("tx", 1, b"k", b"z"))
        producer.taking.set()
        await until(lambda: len(producer.batches) == 3)
        producer.ack()
        assert await first == Sent(0, 0)
        assert [await r for r in rest] == [Sent(0, 1), Sent(0, 2), Sent(0, 3)]
        assert await other == Sent(1, 0)
        assert sorted(producer.batches) == [[b"a"], [b"b", b"c", b"d"], [b"z"]]
        assert producer.logs == {("tx", 0): [b"a", b"b", b"c", b"d"], ("tx", 1): [b"z"]}

    asyncio.run(go())


def test_a_full_batch_splits_and_every_record_is_sent_once():
    async def go() -> None:
        producer = SlowProducer(capacity=3)
        producer.taking.set()
        sends = CoalescedSends(lambda: producer)
        values = [bytes([65 + i]) for i in range(8)]
        calls = [asyncio.ensure_future(sends.send("tx", 2, b"k", v)) for v in values]
        await until(lambda: sum(map(len, producer.batches)) == 8)
        producer.ack()
        landed = [await c for c in calls]
        assert [producer.logs[("tx", 2)][m.offset] for m in landed] == values
        assert max(map(len, producer.batches)) == 3

    asyncio.run(go())


def test_a_failed_batch_fails_its_records_and_the_next_records_are_sent():
    async def go() -> None:
        producer = SlowProducer()
        producer.taking.set()
        producer.failing = True
        sends = CoalescedSends(lambda: producer)
        lost = [asyncio.ensure_future(sends.send("tx", 0, b"k", v)) for v in (b"a", b"b")]
        await until(lambda: producer.unacked)
        producer.ack()
        for call in lost:
            with pytest.raises(ConnectionError):
                await call
        producer.failing = False
        later = asyncio.ensure_future(sends.send("tx", 0, b"k", b"c"))
        await until(lambda: producer.unacked)
        producer.ack()
        assert await later == Sent(0, 0) and producer.logs == {("tx", 0): [b"c"]}

    asyncio.run(go())


class SizedBatch(Batch):
    def append(self, key: bytes, value: bytes, timestamp: Any = None) -> Placed | None:
        return None if len(value) > 5 else super().append(key, value, timestamp)


def test_a_record_larger_than_a_batch_fails_alone():
    async def go() -> None:
        producer = SlowProducer()
        producer.create_batch = lambda: SizedBatch(1_000)  # type: ignore[method-assign]
        sends = CoalescedSends(lambda: producer)
        calls = [asyncio.ensure_future(sends.send("tx", 0, b"k", v)) for v in (b"x" * 10, b"a")]
        producer.taking.set()
        await until(lambda: producer.unacked)
        producer.ack()
        with pytest.raises(ValueError, match="larger than a producer batch"):
            await calls[0]
        assert await calls[1] == Sent(0, 0) and producer.logs == {("tx", 0): [b"a"]}

    asyncio.run(go())


def test_a_send_the_producer_refuses_fails_its_records_and_the_next_ones_go():
    async def go() -> None:
        producer = SlowProducer()
        producer.taking.set()
        refuse = [True]
        send_batch = producer.send_batch

        async def refusing(batch: Batch, topic: str, partition: int) -> asyncio.Future:
            if refuse.pop() if refuse else False:
                raise TimeoutError("no room in the producer")
            return await send_batch(batch, topic, partition)

        producer.send_batch = refusing  # type: ignore[method-assign]
        sends = CoalescedSends(lambda: producer)
        with pytest.raises(TimeoutError):
            await sends.send("tx", 0, b"k", b"a")
        later = asyncio.ensure_future(sends.send("tx", 0, b"k", b"b"))
        await until(lambda: producer.unacked)
        producer.ack()
        assert await later == Sent(0, 0)

    asyncio.run(go())


def test_a_caller_that_stops_waiting_does_not_stop_its_record():
    async def go() -> None:
        producer = SlowProducer()
        sends = CoalescedSends(lambda: producer)
        call = asyncio.ensure_future(sends.send("tx", 0, b"k", b"a"))
        await asyncio.sleep(0)
        call.cancel()
        producer.taking.set()
        await until(lambda: producer.unacked)
        producer.ack()
        assert producer.logs == {("tx", 0): [b"a"]}

    asyncio.run(go())
