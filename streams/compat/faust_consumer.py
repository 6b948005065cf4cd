"""Faust-side adjustment for the hot path: whole fetched batches as one event.

Faust 0.15.3 dispatches every fetched record on its own: the consumer's drain loop
builds a message per record and awaits ``wait_first(callback(message),
suspend_flow.wait())`` (two tasks per record), the conductor decodes it into an
event, the stream iterates it and the agent acks it. Profiling put that path at
~130–280 µs of CPU per record, capping one worker near 8,000 events/s whatever the
agent does (``/work/shared/reference/measured-facts.md``).

:func:`install` changes one thing for the topics it is given: the drain loop hands
the conductor **one** :class:`BatchMessage` per fetched topic-partition chunk. The
chunk goes through the unchanged Faust path (flow control, producer back-pressure,
decode, channel queue, stream iteration, sensors), so the per-record cost is paid
once per chunk. Everything that makes Faust at-least-once is kept, per record:

* read offsets advance only after the chunk was delivered to the stream, as they
  do per record; a rebalance (``suspend_flow``) still cancels a pending delivery;
* gaps between and inside chunks (compaction, transaction markers) are registered
  with ``Consumer._add_gap`` exactly like the per-record loop does;
* acking a processed chunk acks each of its offsets in the consumer's bookkeeping
  (``_acked``/``_acked_index``), so commits advance exactly as if every record had
  been acked one by one, never past a record that was not acked; a chunk acked
  without having been processed (Faust's stream skips and acks events while a
  rebalance is under way) counts as not acked, and is fetched again;
* a chunk fetched under an older consumer generation (a rebalance happened since)
  is never counted as acked: it will be fetched again from the committed offset;
* a chunk that cannot be delivered (flow stopped, a rebalance in progress, its
  partition paused) is never dropped: its partition is sought back to the last
  commit, or to its start when there is none — see :func:`rewind` for the loss
  this closes.

Other topics keep Faust's per-record path. Sensors see one message per chunk.
Finding the offset to commit uses numpy for batched partitions (:func:`_new_offset`,
same result as Faust's loop over every acked offset).

Two process-level settings found by the same profiling are applied by the scorer:
:func:`flagstream.streams.scorer_agent.tune_allocator` and :func:`flagstream.streams.scorer_agent.tune_gc`.

>>> from types import SimpleNamespace as Rec
>>> from faust.types import TP
>>> recs = [Rec(offset=5, value=b"a", timestamp=0), Rec(offset=6, value=b"b", timestamp=0)]
>>> m = BatchMessage.from_records(TP("tx", 0), recs, generation_id=1)
>>> m.offset, m.offsets, m.values
(6, [5, 6], [b'a', b'b'])
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify

#: Attribute of a Faust app holding its :class:`Tuning`.
_ATTR = "_flagstream_tuning"
_original_drain = Consumer._drain_messages
_original_perform_seek = Consumer.perform_seek
_original_new_offset = Consumer._new_offset


@dataclass
class Tuning:
    """What :func:`install` changed on one app."""

    topics: frozenset[str]
    chunks_delivered: int = 0
    records_delivered: int = 0
    chunks_refetched: int = 0


class BatchMessage(ConsumerMessage):
    """Every record one fetch returned for one topic-partition, as one Faust message.

    ``offset`` and ``timestamp`` are the last record's; ``records`` keeps the
    aiokafka records (``.offset``, ``.key``, ``.value``, ``.timestamp`` in ms).
    ``processed`` is set by whoever acks it after its effects are durable
    (:func:`flagstream.streams.faust_batches.ack_all`); an ack without it (Faust's stream acks
    events it skips while a rebalance is under way) records no offset.
    """

    __slots__ = ("records", "offsets", "processed")
    records: list[Any]
    offsets: list[int]
    processed: bool

    @classmethod
    def from_records(cls, tp: TP, records: Sequence[Any], generation_id: int | None) -> BatchMessage:
        last = records[-1]
        ts = last.timestamp
        message = cls(
            tp.topic, tp.partition, last.offset, ts / 1000.0 if ts is not None else 0.0,
            getattr(last, "timestamp_type", 0), None, None, None, None,
            0, sum(len(r.value) for r in records if r.value is not None), tp,
            generation_id=generation_id,
        )
        message.records = list(records)
        message.offsets = [r.offset for r in records]
        message.processed = False
        return message

    @property
    def values(self) -> list[bytes | None]:
        return [r.value for r in self.records]

    def on_final_ack(self, consumer: Any) -> bool:
        return ack_batch(consumer, self)

    def __repr__(self) -> str:
        return f"<BatchMessage: {self.tp} offsets={self.offsets[0]}..{self.offset} n={len(self.offsets)}>"


def ack_batch(consumer: Any, message: BatchMessage) -> bool:
    """``Consumer.ack`` for every offset of a chunk, under Faust's ack lock."""
    with ack_lock:
        if message.acked:
            return False
        message.acked = True
        consumer._unacked_messages.discard(message)
        try:
            if not consumer.app.topics.acks_enabled_for(message.topic):
                return False
            if not message.processed:
                return False  # acked unprocessed (a stream skipping it mid-rebalance)
            if message.generation_id != consumer.app.consumer_generation_id:
                return False  # fetched before a rebalance: it will be fetched again
            tp = message.tp
            committed = consumer._committed_offset[tp]
            offsets: Iterable[int] = message.offsets
            if committed is not None and message.offsets[0] < committed:
                offsets = [o for o in message.offsets if o >= committed]
            index = consumer._acked_index[tp]
            fresh = [o for o in offsets if o not in index] if index else list(offsets)
            index.update(fresh)
            consumer._acked[tp].extend(fresh)
            consumer._n_acked += len(fresh)
            return bool(fresh)
        finally:
            notify(consumer._waiting_for_ack)


#: Chunks a batched topic's channel holds at least (see :func:`queue_chunks_for`).
MIN_QUEUE_CHUNKS = 64
#: ... and per partition of the topic: one fetch can bring a chunk for each.
QUEUE_CHUNKS_PER_PARTITION = 8


def queue_chunks_for(partitions: int) -> int:
    """The channel size, in chunks, for a batched topic of ``partitions`` partitions.

    Faust puts a partition under *pressure* once its channel holds 80% of its size: the
    partition leaves the consumer's active set until the agent catches up. Its fetched
    records then wait in aiokafka, and aiokafka sends the broker no fetch at all while a
    partition's records younger than its ``prefetch_backoff`` (100 ms) wait to be taken:
    every partition of the worker stops for 100 ms. With 8 chunks (pressure at 6) that
    happened dozens of times a minute at 5,000 events/s, whenever a step took a few
    milliseconds longer than the fetches behind it (fetch returns 102 ms apart in the
    stage trace, a p99 of ~100 ms). A fetch brings at most one chunk per partition, so the
    size is counted in fetches: pressure now means the agent is many fetches behind (a
    real overload), not one slow step. Memory stays bounded: at most 80% of this many
    chunks of at most ``broker_max_poll_records`` records each.

    >>> queue_chunks_for(4), queue_chunks_for(32)
    (64, 256)
    """
    return max(MIN_QUEUE_CHUNKS, QUEUE_CHUNKS_PER_PARTITION * int(partitions))


def install(app: Any, topics: Iterable[Any], queue_chunks: int = MIN_QUEUE_CHUNKS) -> Tuning:
    """Deliver the given topics to their agents a fetched chunk at a time.

    Call before the worker starts (e.g. while registering agents).

    Parameters
    ----------
    app
        The ``faust.App``; only its consumer is affected.
    topics
        Topics (``app.topic(...)`` objects or names) to batch. Their agents receive
        :class:`BatchMessage` events.
    queue_chunks
        Channel buffer of those topics, counted in chunks rather than records, so a
        slow agent pauses fetching after tens of fetches instead of ~20,000 records
        (:func:`queue_chunks_for` sizes it).

    Returns
    -------
    Tuning
        Counters of what was delivered in chunks.
    """
    names = set()
    for topic in topics:
        if isinstance(topic, str):
            names.add(topic)
        else:
            names.add(topic.get_topic_name())
            topic.maxsize = queue_chunks
    tuning = Tuning(frozenset(names))
    setattr(app, _ATTR, tuning)
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    return tuning


def tuning_of(app: Any) -> Tuning | None:
    """The app's :class:`Tuning`, or None when :func:`install` was not called."""
    return getattr(app, _ATTR, None)


def uninstall(app: Any) -> None:
    """Back to Faust's per-record drain loop for this app (used by tests)."""
    if hasattr(app, _ATTR):
        delattr(app, _ATTR)


async def _drain_messages(self: Consumer, fetcher: Any) -> None:
    """Faust's drain loop, with batched topics delivered a chunk at a time."""
    tuning = tuning_of(self.app)
    if tuning is None:
        return await _original_drain(self, fetcher)
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
    batched = tuning.topics
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            records, active = await self._wait_next_records(1.0)
            await self.sleep(0)
            if records is None or self.should_stop:
                continue
            if not self.flow_active:
                try:
                    await self.perform_seek()
                except Exception as exc:
                    self.log.warning(f"exception performing seek when flow not active {exc}")
                continue
            generation_id = self.app.consumer_generation_id
            singles, undelivered = {}, []
            for tp, chunk in records.items():
                if tp.topic not in batched:
                    if active is None or tp in active or tp in self._buffered_partitions:
                        singles[tp] = chunk
                    continue
                if not (
                    self.flow_active
                    and not self.app.rebalancing
                    and self.app.consumer_generation_id == generation_id
                    and (active is None or tp in active or tp in self._buffered_partitions)
                ):
                    undelivered.append(tp)  # Faust would drop it: fetch it again instead
                    continue
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                await _deliver_chunk(self, tuning, tp, chunk, callback, generation_id)
            if undelivered:
                await rewind(self, undelivered)
                tuning.chunks_refetched += len(undelivered)
            if singles:
                await _deliver_singles(self, singles, callback, generation_id)
            unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


async def _register_gaps(self: Consumer, tp: TP, r_offset: int | None, offsets: list[int]) -> None:
    """Offsets missing before and inside a chunk, as the per-record loop registers them."""
    if r_offset and offsets[0] - r_offset > 1:
        await self._add_gap(tp, r_offset + 1, offsets[0] - 1)
    if offsets[-1] - offsets[0] + 1 != len(offsets):
        for prev, cur in zip(offsets, offsets[1:], strict=False):
            if cur - prev > 1:
                await self._add_gap(tp, prev + 1, cur - 1)


async def rewind(self: Consumer, tps: Iterable[TP]) -> None:
    """Seek partitions back to their committed offset — or, with none, their first record.

    Faust drops records it fetched but cannot deliver (flow stopped, generation
    changed, partition not active) and relies on recovery's seek to the committed
    offset to fetch them again. aiokafka's ``seek_to_committed`` does not move a
    partition that has no committed offset (a new group), so such records were
    lost for good: with chunks, a first start over the benchmark's pre-loaded topic
    lost a whole partition's first chunk on about half the starts (fetched during
    recovery while the partition was not yet active). Here the floor is always the
    last commit, or the start of the partition when there is none
    (``auto_offset_reset=earliest``): replays instead of losses, and replays are
    idempotent (account rows keep the offset they last applied).
    """
    assigned = self.assignment()
    tps = [tp for tp in tps if tp in assigned]
    floors = {tp: self._committed_offset[tp] for tp in tps if self._committed_offset[tp]}
    missing = [tp for tp in tps if tp not in floors]
    if missing and self.app.conf.consumer_auto_offset_reset == "earliest":
        floors.update(await self.earliest_offsets(*missing))
    for tp, offset in floors.items():
        if offset is not None:
            await self.seek(tp, offset)


def _new_offset(self: Consumer, tp: TP) -> int | None:
    """``Consumer._new_offset`` with numpy for batched partitions: same answer, no loop.

    Faust finds the offset to commit by sorting every acked offset and walking them
    in Python (``consecutive_numbers``), on the event loop; after a fast drain that
    is 100,000 offsets and ~60 ms of stalled consumer per commit (profiled as the
    latency tail right after a backlog). Partitions with registered gaps keep
    Faust's code, which fills them in.
    """
    tuning = tuning_of(self.app)
    acked = self._acked[tp]
    if tuning is None or tp.topic not in tuning.topics or len(acked) < 64 or self._gap[tp]:
        return _original_new_offset(self, tp)
    offsets = np.sort(np.asarray(acked, dtype=np.int64))
    committed = self._committed_offset[tp]
    if committed and offsets[0] - committed > 1:
        acked[:] = offsets.tolist()  # Faust leaves the list sorted
        return None
    breaks = np.flatnonzero(np.diff(offsets) != 1)
    end = int(breaks[0]) + 1 if len(breaks) else len(offsets)
    run = offsets[:end].tolist()
    acked[:] = offsets[end:].tolist()
    self._acked_index[tp].difference_update(run)
    return run[-1] + 1


async def _perform_seek(self: Consumer) -> None:
    """Faust's seek to committed offsets, plus :func:`rewind` for batched partitions without one."""
    await _original_perform_seek(self)
    tuning = tuning_of(self.app)
    if tuning is not None:
        await rewind(self, [tp for tp in self.assignment()
                            if tp.topic in tuning.topics and not self._committed_offset[tp]])


async def _deliver_chunk(
    self: Consumer, tuning: Tuning, tp: TP, chunk: Sequence[Any], callback: Any, generation_id: int
) -> None:
    r_offset = self._read_offset[tp]
    if r_offset is not None and chunk[0].offset < r_offset:
        chunk = [r for r in chunk if r.offset >= r_offset]  # already delivered
        if not chunk:
            return
    message = BatchMessage.from_records(tp, chunk, generation_id)
    if self.app.topics.acks_enabled_for(tp.topic):
        await _register_gaps(self, tp, r_offset, message.offsets)
    commit_every = self._commit_every
    if commit_every is not None and self._n_acked >= commit_every:
        self._n_acked = 0
        await self.commit()
    await self.wait_first(callback(message), self.suspend_flow.wait())
    self._read_offset[tp] = message.offset
    tuning.chunks_delivered += 1
    tuning.records_delivered += len(chunk)


async def _deliver_singles(self: Consumer, records: dict, callback: Any, generation_id: int) -> None:
    """Faust's own per-record delivery, for topics that are not batched."""
    to_message = self._to_message
    acks_enabled_for = self.app.topics.acks_enabled_for
    since_yield = 0
    for tp, record in self.scheduler.iterate(records):
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            break
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        message = to_message(tp, record)
        since_yield += 1
        if since_yield > 100:
            await asyncio.sleep(0)
            since_yield = 0
        offset = message.offset
        r_offset = self._read_offset[tp]
        if r_offset is None or offset >= r_offset:
            if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            await self.wait_first(callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = offset
