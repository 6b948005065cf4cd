"""Single records sent at once, coalesced per partition: the API's produces on a worker.

aiokafka queues one closed batch per partition at a time: a second ``send_batch`` for the
same partition waits until the first one is drained into a request, and every waiter
wakes at each drain (at 1,000 calls a second, a third of a worker's CPU went to those
wake-ups). :class:`CoalescedSends` keeps one sender per partition instead: a record that
arrives while a batch is on its way joins the next one, which leaves as soon as the
producer takes it (closed, not lingering), and each record gets its own offset.

>>> import asyncio
>>> from types import SimpleNamespace
>>> class Batch(list):
...     def append(self, key, value, timestamp):
...         super().append(value)
...         return SimpleNamespace(offset=len(self) - 1)
...     def close(self): pass
>>> class Producer:  # (an in-memory log per partition, as aiokafka's producer fronts one)
...     log: dict = {}
...     def create_batch(self): return Batch()
...     async def send_batch(self, batch, topic, partition):
...         log = self.log.setdefault((topic, partition), [])
...         base = len(log)
...         log.extend(batch)
...         done = asyncio.get_running_loop().create_future()
...         done.set_result(SimpleNamespace(partition=partition, offset=base))
...         return done
>>> async def three_calls():
...     sends = CoalescedSends(Producer)
...     return await asyncio.gather(*(sends.send("tx", 1, b"k", v) for v in (b"a", b"b", b"c")))
>>> [(m.partition, m.offset) for m in asyncio.run(three_calls())]
[(1, 0), (1, 1), (1, 2)]
>>> Producer.log
{('tx', 1): [b'a', b'b', b'c']}
"""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple


class Sent(NamedTuple):
    """Where one record landed."""

    partition: int
    offset: int


class CoalescedSends:
    """Records for one ``(topic, partition)`` at a time each, sent in closed batches of
    whatever arrived while the previous batch was being taken by the producer.

    Parameters
    ----------
    producer
        A callable returning the ``AIOKafkaProducer`` (the worker's, once it runs).
    """

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer
        self._waiting: dict[tuple[str, int], list[tuple[bytes, bytes, asyncio.Future]]] = defaultdict(list)
        self._senders: dict[tuple[str, int], asyncio.Task] = {}

    async def send(self, topic: str, partition: int, key: bytes, value: bytes) -> Sent:
        """Send one record; where it landed once the broker acknowledged it. The record is
        sent even if the caller stops waiting (it was handed over)."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)  # (a caller that stopped waiting is not told)
        tp = (topic, partition)
        self._waiting[tp].append((key, value, done))
        if tp not in self._senders:
            self._senders[tp] = asyncio.ensure_future(self._send_waiting(tp))
        return await asyncio.shield(done)

    async def _send_waiting(self, tp: tuple[str, int]) -> None:
        """Send what waits for ``tp`` batch after batch until nothing does."""
        records: list[tuple[bytes, bytes, asyncio.Future]] = []
        try:
            while self._waiting.get(tp):
                records = self._waiting.pop(tp)
                try:
                    while records:
                        records = await self._send_one_batch(tp, records)
                except Exception as exc:  # (every record not handed over is told)
                    _fail(records, exc)
        except BaseException:  # (stopped: so is everything still waiting here)
            _fail(records + self._waiting.pop(tp, []), RuntimeError("the worker is stopping"))
            raise
        finally:
            self._senders.pop(tp, None)

    async def _send_one_batch(
        self, tp: tuple[str, int], records: list[tuple[bytes, bytes, asyncio.Future]]
    ) -> list[tuple[bytes, bytes, asyncio.Future]]:
        """As many of ``records`` as one batch holds, handed to the producer; the rest."""
        producer = self._producer()
        batch, taken = producer.create_batch(), []
        for key, value, done in records:
            placed = batch.append(key=key, value=value, timestamp=None)
            if placed is None:
                break
            taken.append((placed.offset, done))
        if not taken:  # (the first one alone does not fit: it fails, the others go on)
            _fail(records[:1], ValueError(f"a record for {tp[0]} is larger than a producer batch"))
            return records[1:]
        batch.close()
        delivery = await producer.send_batch(batch, tp[0], partition=tp[1])
        delivery.add_done_callback(lambda d: _tell(d, taken))
        return records[len(taken) :]


def _tell(delivery: asyncio.Future, taken: list[tuple[int, asyncio.Future]]) -> None:
    """Each record of a delivered (or failed) batch: its offset, or the batch's error."""
    error = RuntimeError("cancelled") if delivery.cancelled() else delivery.exception()
    meta: Any = None if error is not None else delivery.result()
    if error is None and getattr(meta, "offset", None) is None:
        error = RuntimeError("the producer gave no offset for the batch")
    for relative, done in taken:
        if done.done():
            continue
        if error is not None:
            done.set_exception(copy.copy(error))  # (one instance per waiter: each re-raises it)
        else:
            done.set_result(Sent(meta.partition, meta.offset + relative))


def _fail(records: list[tuple[bytes, bytes, asyncio.Future]], exc: BaseException) -> None:
    for _key, _value, done in records:
        if not done.done():
            done.set_exception(exc)


def _retrieved(done: asyncio.Future) -> None:
    if not done.cancelled():
        done.exception()
