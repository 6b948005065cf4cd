"""The worker API's read-back of ``scores`` on the real broker: one consumer for every
waiting call, the first record of each awaited transaction (never a later one), records
older than what was read found by reading again, and nothing kept for keys nobody awaits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from flagstream.codec import dumps
from flagstream.streams.api_answers import AnswerBook
from flagstream.streams.config import Settings
from flagstream.streams.scores_follower import READ_BACK_MARGIN_MS, ScoresFollower
from flagstream.streams.topics import SCORES, create_topics, partition_for

pytestmark = pytest.mark.integration


def _record(tx: str, decision: str) -> bytes:
    return dumps(
        {
            "transaction_id": tx,
            "decision": decision,
            "score": 0.1,
            "threshold": 0.5,
            "model_version": "v1",
            "reasons": [],
        }
    )


async def _send(
    producer: AIOKafkaProducer,
    topic: str,
    tx: str,
    decision: str,
    timestamp_ms: int | None = None,
    partition: int | None = None,
) -> int:
    part = partition_for(tx, 4) if partition is None else partition
    meta = await producer.send_and_wait(
        topic, _record(tx, decision), key=tx.encode(), partition=part, timestamp_ms=timestamp_ms
    )
    return meta.offset


@contextlib.asynccontextmanager
async def _on_broker(
    settings: Settings, make: type[ScoresFollower] = ScoresFollower, **kwargs: Any
) -> AsyncIterator[tuple[str, AIOKafkaProducer, AnswerBook, ScoresFollower]]:
    """The run's topics, a producer, an answer book and a follower reading into it."""
    await create_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
    await producer.start()
    book = AnswerBook()
    follower = make(settings, book, **kwargs)
    try:
        yield settings.topic(SCORES), producer, book, follower
    finally:
        await follower.stop()
        await producer.stop()


def _decision(book: AnswerBook, tx: str) -> str | None:
    first = book.first(tx)
    return None if first is None else first["decision"]


def test_many_waiting_calls_share_one_consumer_and_each_gets_its_first_record(settings):
    async def go() -> None:
        async with _on_broker(settings) as (topic, producer, book, follower):
            now = int(time.time() * 1000)
            ids = [f"t-{i}" for i in range(300)]
            waits = [asyncio.ensure_future(follower.first(tx, partition_for(tx, 4), now)) for tx in ids]
            await asyncio.sleep(0.3)
            assert follower.waiting_for() == 300
            for tx in ids:  # (each decided, then a later record of the same key)
                await _send(producer, topic, tx, "review")
                await _send(producer, topic, tx, "approve")
            assert await asyncio.wait_for(asyncio.gather(*waits), 20) == [True] * 300
            assert follower.started == 1
            assert {_decision(book, tx) for tx in ids} == {"review"}
            unawaited = "t-nobody"
            await _send(producer, topic, unawaited, "review")
            # past the record nobody awaited: never in the book
            offset = await _send(producer, topic, "t-last", "review")
            assert await asyncio.wait_for(
                follower.past("t-last", partition_for("t-last", 4), offset, now), 20
            )
            assert book.first(unawaited) is None
            assert follower.waiting_for() == 0

    asyncio.run(go())


def test_a_call_from_before_what_was_read_has_the_partition_read_again(settings):
    async def go() -> None:
        async with _on_broker(settings) as (topic, producer, book, follower):
            now = int(time.time() * 1000)
            old = now - 3 * READ_BACK_MARGIN_MS
            # an old call's transaction: decided long ago, then a fallback just now
            tx = "t-old"
            part = partition_for(tx, 4)
            await _send(producer, topic, tx, "decline", timestamp_ms=old)
            # the partition is being read for a recent call (from now on, less the margin)
            recent = asyncio.ensure_future(follower.first("t-recent", part, now))
            await asyncio.sleep(0.5)
            fallback_at = await _send(producer, topic, tx, "review")
            await _send(producer, topic, "t-recent", "approve", partition=part)
            assert await asyncio.wait_for(recent, 20)
            # the old call's read is from before: the partition is read again from its time
            assert await asyncio.wait_for(follower.past(tx, part, fallback_at, old), 20)
            assert _decision(book, tx) == "decline"
            assert follower.started == 1

    asyncio.run(go())


def test_forgetting_the_oldest_first_records_reads_again_for_a_call_that_needs_them(settings):
    async def go() -> None:
        async with _on_broker(settings, seen_per_partition=5) as (topic, producer, book, follower):
            now = int(time.time() * 1000)
            part = partition_for("t-0", 4)
            same = [tx for tx in (f"t-{i}" for i in range(400)) if partition_for(tx, 4) == part][:30]
            keep_open = asyncio.ensure_future(follower.first("t-never", part, now))
            for tx in same:  # read while nobody waits for them: only ten are remembered
                await _send(producer, topic, tx, "review")
            await asyncio.sleep(1.0)
            assert len(follower.seen[part]) <= 10  # (twice the bound, then forgotten anyway)
            # a fallback of the first one: its first record has been forgotten, so it is
            # read again from its call's time (and not the fallback taken as first)
            fallback_at = await _send(producer, topic, same[0], "approve")
            assert await asyncio.wait_for(follower.past(same[0], part, fallback_at, now), 20)
            assert _decision(book, same[0]) == "review"
            keep_open.cancel()
            await asyncio.sleep(0.3)
            assert follower.waiting_for() == 0

    asyncio.run(go())


class Hooked(ScoresFollower):
    """A follower whose consumer runs ``hook`` (once) before answering ``method``: another
    call's step placed inside that round trip to the broker."""

    hooks: dict

    async def _consumer(self) -> Any:
        fresh = self.consumer is None
        consumer = await super()._consumer()
        if fresh:
            for method in ("offsets_for_times", "end_offsets"):
                real = getattr(consumer, method)

                async def hooked(arg: Any, real: Any = real, method: str = method) -> Any:
                    hook = self.hooks.pop(method, None)
                    if hook is not None:
                        await hook()
                    return await real(arg)

                setattr(consumer, method, hooked)
        return consumer


def test_a_call_that_comes_while_the_partition_is_sought_gets_the_first_record(settings):
    """An older call begins to wait while the follower asks the broker where to read a
    newer call's partition from: the partition is then read from the older call's time
    (its decision is older than the newer call's), not from the newer's."""

    async def go() -> None:
        async with _on_broker(settings, Hooked) as (topic, producer, book, follower):
            tx, now = "t-older", int(time.time() * 1000)
            part = partition_for(tx, 4)
            await _send(producer, topic, tx, "decline", timestamp_ms=now - 12_000)
            fallback_at = await _send(producer, topic, tx, "review")
            older: dict = {}

            async def older_call_begins() -> None:
                older["wait"] = asyncio.ensure_future(follower.past(tx, part, fallback_at, now - 5_000))
                await asyncio.sleep(0.05)

            for method in ("offsets_for_times", "end_offsets"):
                follower.hooks = {method: older_call_begins}
                newer = asyncio.ensure_future(follower.first(f"t-newer-{method}", part, now))
                while "wait" not in older:
                    await asyncio.sleep(0.01)
                assert await asyncio.wait_for(older.pop("wait"), 20)
                assert _decision(book, tx) == "decline", method
                book.records.clear()
                newer.cancel()
                await asyncio.sleep(0.3)

    asyncio.run(go())


def test_a_record_written_while_the_partition_is_sought_is_read(settings):
    """A decision written between the follower's two questions to the broker (the end of
    the partition, the offset for a time) is read, whichever comes first."""

    async def go() -> None:
        async with _on_broker(settings, Hooked) as (topic, producer, book, follower):
            for method in ("offsets_for_times", "end_offsets"):
                tx = f"t-{method}"
                now = int(time.time() * 1000)

                async def decided(tx: str = tx) -> None:
                    await _send(producer, topic, tx, "approve")

                follower.hooks = {method: decided}
                assert await asyncio.wait_for(follower.first(tx, partition_for(tx, 4), now), 20)
                assert _decision(book, tx) == "approve"
                await asyncio.sleep(0.5)  # (nobody waits: the next call seeks again)
                assert follower.covered == {}

    asyncio.run(go())


def test_a_follower_nobody_waits_on_pauses_and_reads_the_next_call_from_its_time(settings):
    async def go() -> None:
        async with _on_broker(settings) as (topic, producer, book, follower):
            tx = "t-a"
            part = partition_for(tx, 4)
            old = int(time.time() * 1000) - 3 * READ_BACK_MARGIN_MS  # (a call long ago)
            waiting = asyncio.ensure_future(follower.first(tx, part, old + READ_BACK_MARGIN_MS))
            await _send(producer, topic, tx, "approve", timestamp_ms=old)
            assert await asyncio.wait_for(waiting, 20)
            await asyncio.sleep(0.5)
            assert follower.covered == {} and follower.seen == {}  # (paused, forgotten)
            for i in range(50):  # (records of long ago, written since)
                await _send(producer, topic, f"t-old-{i}", "approve", timestamp_ms=old, partition=part)
            now = int(time.time() * 1000)
            later = asyncio.ensure_future(follower.first("t-b", part, now))
            await asyncio.sleep(0.5)
            assert follower.seen[part] == {}  # (read from the call's time, not the backlog)
            await _send(producer, topic, "t-b", "review", partition=part)
            assert await asyncio.wait_for(later, 20) and _decision(book, "t-b") == "review"

    asyncio.run(go())


def test_a_decision_read_before_its_call_waits_is_its_first_record_kept_or_read_again(settings):
    """The partition is being read for another call when a decision is read whose call
    has not begun to wait yet: kept if its call is in flight here (``expect``), else read
    again when its call waits; either way the decision, not the later fallback, is first."""

    async def go() -> None:
        async with _on_broker(settings) as (topic, producer, book, follower):
            now = int(time.time() * 1000)
            part = partition_for("t-0", 4)
            keep_open = asyncio.ensure_future(follower.first("t-never", part, now))
            await asyncio.sleep(0.5)
            follower.expect("t-kept")
            for tx in ("t-kept", "t-other"):
                await _send(producer, topic, tx, "decline", partition=part)
            await asyncio.sleep(0.5)
            assert follower.seen[part][b"t-kept"][0] is not None
            assert follower.seen[part][b"t-other"][0] is None
            for tx in ("t-kept", "t-other"):
                fallback_at = await _send(producer, topic, tx, "review", partition=part)
                assert await asyncio.wait_for(follower.past(tx, part, fallback_at, now), 20)
                assert _decision(book, tx) == "decline", tx
            follower.release("t-kept")
            assert not follower.calls
            keep_open.cancel()

    asyncio.run(go())
