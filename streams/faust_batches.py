"""Helpers for handling Faust events a batch at a time.

``noack_take`` hands an agent a list of events that are acknowledged only when we
say so; these helpers group such a list by partition, point Faust's "current event"
at the right partition while table rows are written, and ack after the work is durable.

An event is either one record (Faust's own path) or a whole fetched chunk (a
:class:`flagstream.streams.compat.faust_consumer.BatchMessage`); :func:`records_by_partition` turns
either kind into per-partition columns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from faust.types import EventT

from flagstream.streams.compat.faust_consumer import BatchMessage

log = logging.getLogger(__name__)

T = TypeVar("T")


def by_partition(events: Sequence[EventT]) -> dict[int, list[EventT]]:
    """Events grouped by source partition, each group in offset order."""
    groups: dict[int, list[EventT]] = defaultdict(list)
    for event in events:
        groups[event.message.partition].append(event)
    return groups


@dataclass
class PartitionRecords:
    """The records of one source partition in a batch of events, as columns.

    ``timestamps_ms`` are the Kafka record timestamps; ``events`` are the Faust
    events that carried the records (what must be acked).
    """

    partition: int
    topic: str = ""
    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    events: list[EventT] = field(default_factory=list)
    #: each record's partition, when the records come from several (:func:`joined`; then
    #: ``partition`` is :data:`SEVERAL`); empty when they all come from ``partition``
    partitions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def partition_of(self, index: int) -> int:
        """The source partition of record ``index``."""
        return self.partitions[index] if self.partitions else self.partition

    @property
    def sources(self) -> int | list[int]:
        """The records' source partition, or each record's when they come from several
        (what :meth:`~flagstream.streams.core.ScoringCore.process` takes)."""
        return self.partitions or self.partition

    @property
    def timestamps_ms(self) -> np.ndarray:
        return np.asarray(self.timestamps, dtype=np.float64)

    def slice(self, start: int, stop: int) -> PartitionRecords:
        """Records ``start:stop`` (the events stay with the whole: they are acked together)."""
        return PartitionRecords(
            self.partition, self.topic, self.values[start:stop], self.keys[start:stop],
            self.offsets[start:stop], self.timestamps[start:stop], [], self.partitions[start:stop],
        )


#: The ``partition`` of records joined from several partitions (see ``partitions``).
SEVERAL = -1


def joined(groups: Sequence[PartitionRecords]) -> PartitionRecords:
    """The records of several partitions as one batch (each partition's in its order), so
    that one step scores them in one call; one group is returned as it is.

    >>> a = PartitionRecords(0, "tx", [b"a"], [None], [7], [1.0])
    >>> b = PartitionRecords(3, "tx", [b"b", b"c"], [None, None], [4, 5], [2.0, 3.0])
    >>> both = joined([a, b])
    >>> both.partition == SEVERAL, both.values, both.partitions, both.partition_of(2)
    (True, [b'a', b'b', b'c'], [0, 3, 3], 3)
    >>> both.slice(1, 3).sources, joined([a]) is a
    ([3, 3], True)
    """
    if len(groups) == 1:
        return groups[0]
    out = PartitionRecords(SEVERAL, groups[0].topic)
    for group in groups:
        out.values.extend(group.values)
        out.keys.extend(group.keys)
        out.offsets.extend(group.offsets)
        out.timestamps.extend(group.timestamps)
        out.events.extend(group.events)
        out.partitions.extend(group.partitions or [group.partition] * len(group))
    return out


def records_by_partition(events: Sequence[EventT]) -> dict[int, PartitionRecords]:
    """Records of ``events`` (single records or fetched chunks) grouped by partition."""
    groups: dict[int, PartitionRecords] = {}
    for event in events:
        msg = event.message
        group = groups.get(msg.partition)
        if group is None:
            group = groups[msg.partition] = PartitionRecords(msg.partition, msg.topic)
        group.events.append(event)
        if isinstance(msg, BatchMessage):
            records = msg.records
            group.values.extend([r.value for r in records])
            group.keys.extend([r.key for r in records])
            group.offsets.extend(msg.offsets)
            group.timestamps.extend([r.timestamp or 0 for r in records])
        else:
            group.values.append(msg.value)
            group.keys.append(msg.key)
            group.offsets.append(msg.offset)
            group.timestamps.append((msg.timestamp or 0.0) * 1000.0)
    return groups


async def ready_events(stream, max_records: int) -> AsyncIterator[list[EventT]]:
    """Lists of events, not acked: each holds what had arrived, up to about ``max_records``.

    Unlike ``noack_take`` this never waits for a batch to fill: when the channel has
    nothing more queued, what was taken is handed over at once. Under load, events
    pile up while a list is processed, and the next list takes them up to
    ``max_records`` records (a fetched chunk is never split, so one more chunk's worth
    at most).
    """
    manual = stream.noack()
    queue = manual.channel.queue
    taken: list[EventT] = []
    records = 0
    async for _ in manual:
        event = manual.current_event
        taken.append(event)
        msg = event.message
        records += len(msg.offsets) if isinstance(msg, BatchMessage) else 1
        if records >= max_records or queue.empty():
            yield taken
            taken, records = [], 0


class InOrder(Generic[T]):
    """Finishes an agent's steps in a background task, in order, all waiting steps at once.

    The agent processes a step, hands over what completing it needs (an item: waiting for
    its deliveries, writing its table rows, acking) and goes on with the next step while
    the broker works. The background task calls ``complete`` with **every** item waiting,
    oldest first, so steps that queued up while one completion ran are completed together:
    one changelog round trip and one local write for all of them instead of one each.
    Rows and acks still land in processing order (a later step's row wins). At most
    ``depth`` items wait, after which :meth:`put` blocks (back-pressure). A completion that
    fails crashes the app: its events stay unacked and are replayed from the last commit
    after the restart.

    Completing one step at a time was the stream path's latency tail under load: each
    completion paid a changelog round trip on a busy event loop, the queue filled and the
    agent waited for room before taking the next fetched records (``put`` waits of 5–10 ms
    per step at 5,000 events/s, see README "Throughput and latency").

    Parameters
    ----------
    app
        The Faust app (its ``crash`` is called on failure).
    complete
        Completes a list of items (every step waiting, oldest first).
    depth
        Items allowed to wait.

    Examples
    --------
    >>> import asyncio
    >>> calls = []
    >>> async def complete(items):
    ...     calls.append(list(items))
    ...     await asyncio.sleep(0.01)
    >>> async def main():
    ...     finish = InOrder(None, complete, depth=8)
    ...     await finish.put(0)
    ...     await asyncio.sleep(0)  # the background task takes step 0 and completes it...
    ...     for step in (1, 2, 3):  # ...while three more steps are processed
    ...         await finish.put(step)
    ...     await finish.join()
    >>> asyncio.run(main())
    >>> calls
    [[0], [1, 2, 3]]
    """

    def __init__(self, app: Any, complete: Callable[[list[T]], Awaitable[None]],
                 depth: int = 4) -> None:
        self.app = app
        self.complete = complete
        self.queue: asyncio.Queue[T] = asyncio.Queue(maxsize=depth)
        self.failed: BaseException | None = None
        self._task: asyncio.Future | None = None

    async def put(self, item: T) -> None:
        """Queue a step's completion (blocks while ``depth`` are waiting)."""
        if self.failed is not None:
            raise RuntimeError("an earlier step could not be completed") from self.failed
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        await self.queue.put(item)

    @property
    def started(self) -> bool:
        """Whether anything was queued yet."""
        return self._task is not None

    async def join(self) -> None:
        """Wait until every queued completion has run (or one failed and crashed the app)."""
        if self._task is None:
            return
        drained = asyncio.ensure_future(self.queue.join())
        await asyncio.wait([drained, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not drained.done():
            drained.cancel()

    async def _run(self) -> None:
        queue = self.queue
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            try:
                await self.complete(items)
            except Exception as exc:
                self.failed = exc
                log.exception("a step could not be completed; crashing the app: %r", exc)
                for _ in items:
                    queue.task_done()
                await self.app.crash(exc)
                return
            for _ in items:
                queue.task_done()


def ack_all(events: Sequence[EventT]) -> None:
    """Acknowledge events whose effects are durable (sent, and table rows written)."""
    for event in events:
        if isinstance(event.message, BatchMessage):
            event.message.processed = True
        event.ack()
