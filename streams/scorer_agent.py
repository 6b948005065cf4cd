"""The scoring agent: transactions in, decisions, flags and dead letters out, per batch.

With :mod:`flagstream.streams.compat.faust_consumer` installed (the default;
``FLAGSTREAM_FAUST_CHUNKS=0`` turns it off) each event carries a whole fetched chunk
of one partition, so Faust's per-record dispatch is paid once per chunk, and a step takes whatever chunks have
arrived (:func:`flagstream.streams.faust_batches.ready_events`, up to ``batch_size`` records);
without it, steps come from ``noack_take``. One step of the agent:

1. every partition's records go through :class:`flagstream.streams.core.ScoringCore` in
   one call, each record told its partition (accounts live on one partition, offsets
   are per partition, each partition's records keep their order). A
   record that makes this fail is isolated: the call is undone (no row keeps a change)
   and retried in halves, so the failing record alone is dead-lettered
   (``internal_error``) and every other record is decided as usual;
2. all outputs of the step (decisions, flags, re-routed records, merchant activity)
   leave as one record batch per topic-partition; dead letters are sent one by one;
3. once the broker has acknowledged all of them, each partition's changed account
   rows are written to the ``accounts`` table (changelog batch first, acknowledged,
   then one RocksDB write batch per partition);
4. only then are the events acked, so a crash replays work instead of losing it,
   and the offsets stored in account rows make that replay idempotent.

Steps 3–4 of one step overlap with steps 1–2 of the next: completions run in a
background task strictly in processing order (:class:`flagstream.streams.faust_batches.InOrder`),
so rows and acks still land in order while the broker acknowledges the previous step.
Steps that queued up meanwhile are completed together (:meth:`Scorer.complete_steps`): one
changelog batch and one RocksDB write per partition for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from flagstream.codec import dumps
from flagstream.errors import Rejection
from flagstream.quick_stats import quantiles
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.sinks.dead_letter import dead_letter, dead_letter_key, headers
from flagstream.streams.api_answers import api_refusal
from flagstream.streams.app import Pipeline
from flagstream.streams.compat import faust_consumer
from flagstream.streams.compat.internals import (
    can_write_rows,
    kafka_producer,
    observe_many,
    on_replicated,
    stage_rows,
)
from flagstream.streams.core import BatchOutcome, partitions_for
from flagstream.streams.delivery import Outbox, activity_records, deliver
from flagstream.streams.faust_batches import (
    SEVERAL,
    InOrder,
    PartitionRecords,
    ack_all,
    joined,
    ready_events,
    records_by_partition,
)
from flagstream.streams.process_tuning import tune_allocator, tune_gc
from flagstream.streams.topics import partition_for

if TYPE_CHECKING:
    from flagstream.streams.api_worker import ApiCalls

log = logging.getLogger(__name__)

class NotScoring(RuntimeError):
    """The scorer cannot decide now (not started, or stopping)."""


#: A step's records (of one partition, or joined from several: ``partition`` is ``SEVERAL``),
#: what the core made of them, and the account rows they changed.
Staged = tuple[PartitionRecords, BatchOutcome, dict[str, Any]]


class ApiWaiting(NamedTuple):
    """An API transaction waiting to be staged."""

    partition: int
    offset: int
    key: bytes
    value: bytes
    #: whether this worker still holds the partition
    holds: Callable[[int], bool]
    #: what its call awaits: whether it was staged here
    taken: asyncio.Future
    #: when it began to wait (``perf_counter``)
    since: float

#: How long an API transaction waits for the ones before it on its partition before the
#: agent is left to decide it (seconds): calls produced together are acknowledged in any order.
API_TURN_PATIENCE_S = 0.025
#: The shortest pause between two rounds of staging API calls (seconds).
API_TURN_POLL_S = 0.0005


def in_turn(waiting: Sequence[ApiWaiting], staged_through: dict[int, int]) -> list[ApiWaiting]:
    """The waiting API transactions whose turn has come: per partition, the run of offsets
    right after the last one staged there (none while that is unknown), in order.

    >>> def at(partition, offset): return ApiWaiting(partition, offset, b"", b"", None, None, 0.0)
    >>> [w.offset for w in in_turn([at(0, 12), at(0, 11), at(0, 14), at(1, 3)], {0: 10})]
    [11, 12]
    """
    out = []
    by_partition: dict[int, list[ApiWaiting]] = {}
    for w in waiting:
        by_partition.setdefault(w.partition, []).append(w)
    for partition, group in by_partition.items():
        last = staged_through.get(partition)
        if last is None:
            continue
        for w in sorted(group, key=lambda w: w.offset):
            if w.offset != last + 1:
                break
            out.append(w)
            last = w.offset
    return out


@dataclass
class Step:
    """What completing one processed step needs: its events, what each partition staged,
    the pending sends of its outputs, the producer, and when it started."""

    events: list[Any]
    staged: Sequence[Staged]
    pending: Sequence[Awaitable]
    producer: Any
    started: float


class Scorer:
    """The ``score`` agent of a worker: transactions in, decisions, flags and dead letters out.

    Each step is split into methods that can be driven on their own: :meth:`stage`
    (the core, no I/O), :meth:`send_dead_letters`, :meth:`write_accounts` and
    :meth:`observe`; :meth:`score_events` and :meth:`complete` run them in the order
    the module docstring gives.

    Parameters
    ----------
    p
        The worker's pipeline (a role that scores: ``all`` or ``scorer``).
    """

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.settings = p.settings
        self.core = p.core
        self.metrics = p.metrics
        self.accounts = p.tables["accounts"]
        self.merchants_table = p.tables["merchants"]
        self.names = {k: v.get_topic_name() for k, v in p.topics.items()}
        self.partition_counts: dict[str, int] = {}
        self.changed_merchants: set[bytes] = set()
        self.tuning: faust_consumer.Tuning | None = None
        self.finish: InOrder | None = None
        self.revoked = False
        #: why a step of the agent failed: the worker is stopping (see :meth:`score_events`)
        self.broken: BaseException | None = None
        #: shared with the scoring API when this worker serves it (``FLAGSTREAM_WORKER_API``)
        self.api_calls: ApiCalls | None = None
        #: decisions of API transactions held back while their fallback is recorded
        self.held: list[dict] = []
        #: one step staged at a time, the agent's or the API's (see :meth:`decide_now`)
        self.step_lock = asyncio.Lock()
        #: API transactions waiting to be staged, and the task staging them
        self.api_waiting: list[ApiWaiting] = []
        #: steps' API answers waiting for their outputs to be acknowledged
        self.answering: set[asyncio.Future] = set()
        self.api_stager: asyncio.Future | None = None
        self.api_step_started = 0.0
        #: the last offset staged per ``transactions`` partition (what API steps continue)
        self.staged_through: dict[int, int] = {}
        #: called first when partitions are revoked
        self.revoke_hooks: list[Callable[[], None]] = []
        if not can_write_rows(self.accounts, p.app):
            raise RuntimeError("the accounts table must be RocksDB-backed (rocksdict) without "
                               "transactions or a partitioner; check the Faust store settings")

    # --- lifecycle ---------------------------------------------------------------------------
    def register(self) -> None:
        """Install the chunked consumer path (unless turned off) and register the agent."""
        p, s = self.p, self.settings
        if s.faust_chunks:
            self.tuning = faust_consumer.install(p.app, [p.topics["transactions"]],
                                                 faust_consumer.queue_chunks_for(s.partitions))
        tune_allocator()
        p.app.on_partitions_revoked.connect(self._forget_accounts)
        if not p.learns:  # (in the same process the learner updates the shared rows directly)
            on_replicated(self.merchants_table, self.changed_merchants.update)

        @p.app.agent(p.topics["transactions"], name="score")
        async def score(stream: Any) -> None:
            if self.broken is not None:  # (restarted by Faust after a failed step: see score_events)
                await asyncio.get_running_loop().create_future()  # (until the app stops it)
            if self.finish is not None:  # (restarted: the steps staged before are written first)
                await self.finish.join()
            # (re)started: only durable state counts, rows are read again from the table
            self.core.accounts.reset()
            self.staged_through.clear()
            finish = self.finish = InOrder(p.app, self.complete_steps)
            if self.tuning is not None:  # each event is a fetched chunk: take what has arrived
                async for events in ready_events(stream, max_records=s.batch_size):
                    await self.score_events(events, finish)
            else:
                async for events in stream.noack_take(s.batch_size, within=s.batch_within):
                    await self.score_events(events, finish)

        _ = score

    async def stop(self) -> None:
        if self.tuning is not None:
            faust_consumer.uninstall(self.p.app)
            self.tuning = None

    async def _forget_accounts(self, *_args: Any, **_kwargs: Any) -> None:
        """Rows may move to another worker: read them again from the table when next needed.

        First every step processed so far completes (its rows reach the table while the
        partitions are still ours); the arena is emptied before the next step, once that
        step's predecessors are durable too, so no step ever reads a row older than one
        this worker already advanced.
        """
        self.revoked = True
        self.staged_through.clear()
        for hook in self.revoke_hooks:  # (the API stops deciding here before anything waits)
            hook()
        if self.finish is not None:
            async with self.step_lock:  # (an API step being staged is queued first)
                await self.finish.join()

    # --- one step ------------------------------------------------------------------------------
    def refresh_merchants(self) -> None:
        """Merchant rows the replicated table changed since the last batch, into the arena.

        (Rows the arena has not loaded yet are read from the table on first use.)
        """
        if not self.changed_merchants:
            return
        arena = self.core.merchants.arena
        keys = list(self.changed_merchants)
        self.changed_merchants.clear()
        for key in keys:
            merchant = key.decode()
            if merchant in arena:
                stored = self.merchants_table.get(key)
                if stored is not None:
                    arena.put(merchant, stored)

    def stage_isolated(self, recs: PartitionRecords, outbox: Outbox) -> list[Staged]:
        """:meth:`stage`, except that a failure never escapes: the records that cause it
        are found by halving and dead-lettered with reason ``internal_error``."""
        piece = Outbox(outbox.producer, self.partition_counts)
        try:
            with self.core.undo_on_error():
                staged = self.stage(recs, piece)
        except Exception as exc:
            if len(recs) > 1:
                half = len(recs) // 2
                return (self.stage_isolated(recs.slice(0, half), outbox)
                        + self.stage_isolated(recs.slice(half, len(recs)), outbox))
            log.error("isolated a record that failed processing: %s at %s[%d]@%d",
                      type(exc).__name__, recs.topic, recs.partition_of(0), recs.offsets[0])
            self.metrics.isolated.inc()
            failed = Rejection(0, "internal_error", f"processing failed: {type(exc).__name__}")
            if self.api_calls is not None and self.api_calls.expecting:  # (its call gets the reason)
                refusal = api_refusal(recs.values[0], failed)
                self.api_calls.mark_staged([], [refusal[0]] if refusal is not None else [])
            return [(recs, BatchOutcome(rejections=[failed]), {})]
        outbox.extend(piece)
        return [staged]

    def hold_share_of_capacity(self) -> None:
        """A scorer that does not learn follows the published threshold; the review capacity
        it may use within a batch is its partitions' share of the day's (see
        :meth:`OperatingPoint.review_room`), judged on the traffic it decided itself."""
        policy = self.core.policy
        if not isinstance(policy, OperatingPoint):
            return
        topic = self.names["transactions"]
        held = sum(tp.topic == topic for tp in self.p.app.consumer.assignment())
        policy.capacity_share = held / self.settings.partitions if held else 1.0

    def stage(self, recs: PartitionRecords, outbox: Outbox) -> Staged:
        """Score a step's records (of one partition or several: one core call) and queue
        their outputs in ``outbox``."""
        s, names, counts = self.settings, self.names, self.partition_counts
        outcome = self.core.process(recs.values, recs.offsets, recs.sources, s.partitions)
        for index, account in outcome.misrouted:
            outbox.add(names["transactions"], partition_for(account, s.partitions),
                       account.encode(), recs.values[index])
        api_calls = self.api_calls if self.api_calls is not None and self.api_calls.expecting else None
        decisions, held = (outcome.decisions, []) if api_calls is None else api_calls.held_back(
            outcome.decisions)
        outbox.add_keyed(names["scores"], [d["transaction_id"] for d in decisions],
                         [dumps(d) for d in decisions], counts[names["scores"]])
        flagged = outcome.flagged
        outbox.add_keyed(names["review"], [f["transaction_id"] for f in flagged],
                         [dumps(f) for f in flagged], counts[names["review"]])
        for part, value in activity_records(outcome.activity, s.partitions):
            outbox.add(names["merchant_activity"], part, None, value)
        # what outlives a failed attempt comes last, once nothing else can fail: the calls
        # marked staged, the decisions held back, the traffic the policy counts (a failed
        # attempt's records are decided again, in halves: see :meth:`stage_isolated`)
        if api_calls is not None:
            refused = [] if not outcome.rejections else [
                x[0] for r in outcome.rejections if (x := api_refusal(recs.values[r.index], r)) is not None]
            api_calls.mark_staged(decisions, refused)
            self.held.extend(held)
        if not self.p.learns and isinstance(self.core.policy, OperatingPoint) and outcome.decisions:
            # (the learner's process counts decisions as they come back from ``scores``)
            self.core.policy.observe_traffic_by_hour(outcome.scores, outcome.routes != "approve",
                                                     outcome.times_ms)
        return recs, outcome, self.core.accounts.take_touched()

    async def send_dead_letters(self, recs: PartitionRecords, outcome: BatchOutcome) -> list[Awaitable]:
        """One dead letter per rejected record; returns the pending sends."""
        topic, sent = self.names["transactions_dlq"], []
        for r in outcome.rejections:
            letter = dead_letter(recs.values[r.index], r.reason, r.detail, recs.topic,
                                 recs.partition_of(r.index), recs.offsets[r.index])
            sent.append(await self.p.app.producer.send(
                topic, dead_letter_key(recs.keys[r.index]), dumps(letter), None, None,
                headers(r.reason),
            ))
            self.metrics.dead_letters.labels(topic=topic, reason=r.reason).inc()
        return sent

    async def write_accounts(self, staged: Sequence[Staged], producer: Any) -> None:
        """Changed account rows: changelog first (acknowledged), then the local store.

        Rows of several steps (or pieces) of one partition are merged, the later one
        winning: one changelog batch and one RocksDB write batch per partition (an
        account's: the partition of the records that changed it).
        """
        merged: dict[int, dict[bytes, Any]] = {}
        for recs, _, rows in staged:
            if not rows:
                continue
            if recs.partition != SEVERAL:
                into = merged.setdefault(recs.partition, {})
                into.update((key.encode(), row) for key, row in rows.items())
                continue
            homes = partitions_for(list(rows), self.settings.partitions).tolist()
            for (key, row), home in zip(rows.items(), homes, strict=True):
                merged.setdefault(home, {})[key.encode()] = row
        if not merged:
            return
        outbox = Outbox(producer, self.partition_counts)
        writes = [stage_rows(self.accounts, partition, rows, outbox)
                  for partition, rows in merged.items()]
        last = outbox.last_offsets(await asyncio.gather(*await outbox.send()))
        for write in writes:
            write.apply(last)

    async def score_events(self, events: list[Any], finish: InOrder) -> None:
        """Process one step now; its completion runs in ``finish``, in order.

        A step that fails (a send Kafka refused) crashes the app, as a failed completion
        does: its records stay unacknowledged and the restarted worker reads them again
        from the last commit. Going on in this process would not: Faust restarts the agent
        on the same stream, after the failed records, and the later records of an account
        would move its row's offset past them (a replay would then pass over them)."""
        # (a failed step's API calls stay marked as staged: some of its outputs may be on
        # Kafka, so none of them may fall back; they are answered 503 "retry")
        async with self.step_lock:
            try:
                await self._step(records_by_partition(events).values(), events, finish)
            except Exception as exc:
                self.step_failed()  # (before any API step can take the lock)
                self.broken = exc
            except BaseException:  # (cancelled: a stop, not a failure)
                self.step_failed()
                raise
        if self.broken is not None:
            log.error("a step failed (%r): stopping; its records are read again after the restart",
                      self.broken)
            await self.p.app.crash(self.broken)
            raise self.broken

    def stopping(self) -> bool:
        """Whether a step or a completion failed: the worker is going down, nothing more is
        staged in this process (its records are read again after the restart)."""
        return self.broken is not None or getattr(self.finish, "failed", None) is not None

    def step_failed(self) -> None:
        """A step failed part-way: what it staged may never be written. The arena is read
        again from the table before the next step, and nothing is passed over as staged."""
        self.revoked = True
        self.staged_through.clear()
        self.held.clear()

    async def decide_now(self, partition: int, offset: int, key: bytes, value: bytes,
                         holds: Callable[[int], bool]) -> bool:
        """Decide a transaction of the scoring API at once, if its turn has come.

        The API has produced it to ``transactions`` already (at ``offset``); nothing is
        consumed before deciding. The calls that arrive while a step is being staged are
        staged together, as a step of their own between the agent's steps (never inside
        one), when they come right after what this scorer has staged on their partition
        (offset by offset, so the partition's order holds); the agent later reads them as
        already applied (the account rows' offsets). The others are left to the agent,
        which decides them when it reads them. Either way the call is answered once the
        decision is on ``scores`` (:meth:`answer_once_sent`). Returns whether it was
        staged here.

        Raises :class:`NotScoring` (nothing decided here) unless the agent runs and
        ``holds(partition)`` is still true when its step is staged.
        """
        taken = asyncio.get_running_loop().create_future()
        self.api_waiting.append(ApiWaiting(partition, offset, key, value, holds, taken, time.perf_counter()))
        if self.api_stager is None or self.api_stager.done():
            self.api_stager = asyncio.ensure_future(self._stage_api_calls())
            self.api_stager.add_done_callback(self._stager_ended)
        return bool(await taken)

    def _stager_ended(self, stager: asyncio.Future) -> None:
        """(Staging itself failed, outside a step: no call waits forever; the agent decides.)"""
        if stager.cancelled() or stager.exception() is None:
            return
        log.error("staging API calls failed: %r", stager.exception())
        waiting, self.api_waiting = self.api_waiting, []
        for w in waiting:
            if not w.taken.done():
                w.taken.set_exception(NotScoring("staging API calls failed"))

    async def _stage_api_calls(self) -> None:
        """Stage every API transaction waiting whose turn has come, until none is left."""
        while self.api_waiting:
            wait = self.api_step_started + self.settings.api_step_gap_ms / 1000 - time.perf_counter()
            # (calls arriving meanwhile join this step: fewer, larger steps; and calls out of
            # turn always leave the loop a moment to stage the ones before them)
            await asyncio.sleep(max(wait, API_TURN_POLL_S))
            self.api_step_started = time.perf_counter()
            async with self.step_lock:
                waiting, self.api_waiting = self.api_waiting, []
                finish, now_ms = self.finish, time.time() * 1000.0
                live = [w for w in waiting if not w.taken.done()]  # (calls gone: nothing to do)
                for w in live:
                    if finish is None or self.stopping() or not w.holds(w.partition):
                        w.taken.set_exception(NotScoring("not scoring this partition now"))
                groups: dict[int, PartitionRecords] = {}
                taken = []
                for w in in_turn([w for w in live if not w.taken.done()], self.staged_through):
                    recs = groups.get(w.partition)
                    if recs is None:
                        recs = groups[w.partition] = PartitionRecords(w.partition, self.names["transactions"])
                    recs.values.append(w.value)
                    recs.keys.append(w.key)
                    recs.offsets.append(w.offset)
                    recs.timestamps.append(now_ms)
                    taken.append(w.taken)
                now = time.perf_counter()
                for w in live:  # not their turn yet: wait a little for the ones before them
                    if not w.taken.done() and w.taken not in taken:
                        last = self.staged_through.get(w.partition)
                        if last is not None and w.offset > last and now - w.since < API_TURN_PATIENCE_S:
                            self.api_waiting.append(w)
                        else:  # (staged by the agent already, or someone else's record in between)
                            w.taken.set_result(False)
                            self.p.metrics.api_left_to_agent.inc()
                if not taken:
                    continue
                self.p.metrics.api_step_size.observe(len(taken))
                assert finish is not None
                try:
                    await self._step(groups.values(), [], finish)
                except Exception as exc:
                    # (as if the agent had crashed: the arena is read again from the table
                    # before the next step; the transactions are on Kafka, the agent decides them)
                    log.error("an API step failed: %s", type(exc).__name__)
                    # (its calls stay marked as staged: its decisions may be on scores, so
                    # none falls back; the agent decides them again when it reads them)
                    self.step_failed()
                    for future in taken:
                        if not future.done():
                            future.set_result(False)
                    continue
                for future in taken:
                    if not future.done():
                        future.set_result(True)

    async def _step(self, groups: Iterable[PartitionRecords], events: list[Any],
                    finish: InOrder) -> None:
        if not finish.started:  # first step: the worker is up, freeze what it holds
            tune_gc()
        if self.revoked:  # partitions moved: only the table is current now
            await finish.join()
            self.core.accounts.reset()
            self.revoked = False
        started = time.perf_counter()
        self.p.models.sync()
        if not self.p.learns:
            self.hold_share_of_capacity()
        self.refresh_merchants()
        producer = kafka_producer(self.p.app)
        outbox = Outbox(producer, self.partition_counts)
        for topic in (self.names["scores"], self.names["review"]):
            await outbox.partition_count(topic)
        staged: list[Staged] = []
        pending: list[Awaitable] = []
        fresh = []
        for records in groups:
            records = self.not_staged_yet(records)
            if not len(records):
                continue
            if records.offsets[-1] >= 0:
                self.staged_through[records.partition] = records.offsets[-1]
            fresh.append(records)
        if fresh:  # (every partition's records in one core call)
            for recs, outcome, rows in self.stage_isolated(joined(fresh), outbox):
                staged.append((recs, outcome, rows))
                pending.extend(await self.send_dead_letters(recs, outcome))
        pending.extend(await outbox.send())
        if self.api_calls is not None and self.api_calls.staged:
            answering = asyncio.ensure_future(self.answer_once_sent(staged, list(pending)))
            self.answering.add(answering)  # (held until done: a task nobody holds may vanish)
            answering.add_done_callback(self.answering.discard)
        if self.held:
            pending.extend(self.release_held(producer))
        await finish.put(Step(events, staged, pending, producer, started))

    def not_staged_yet(self, records: PartitionRecords) -> PartitionRecords:
        """``records`` without those an API step staged already (offsets up to the last one
        staged on the partition: the agent reads them after the API decided them); they are
        counted as replays and acked with the step, without going through the core again."""
        done = self.staged_through.get(records.partition)
        offsets = records.offsets
        if done is None or not offsets or offsets[0] > done:
            return records
        start = next((i for i, offset in enumerate(offsets) if offset > done), len(offsets))
        self.metrics.replayed.inc(start)
        return records.slice(start, len(offsets))

    def release_held(self, producer: Any) -> list[asyncio.Future]:
        """Send the held-back decisions once their fallbacks are settled (pending sends)."""
        assert self.api_calls is not None
        topic = self.names["scores"]
        count = self.partition_counts[topic]

        async def send(d: dict) -> None:
            tx = d["transaction_id"]
            await producer.send_and_wait(topic, dumps(d), key=tx.encode(),
                                         partition=partition_for(tx, count))

        held, self.held = self.held, []
        return [asyncio.ensure_future(self.api_calls.release(d, send)) for d in held]

    async def answer_once_sent(self, staged: Sequence[Staged], sent: Sequence[Awaitable]) -> None:
        """Answer a step's API calls once its outputs are on Kafka, without waiting for its
        completion (the account rows, and the completions queued before it): a call's
        answer is its decision, the first record on ``scores`` for it, whether or not the
        row is written yet. (Should the worker crash before the row is, the restarted
        worker decides the transaction again after that first record, which stays the
        decision of record, as a replay after any crash does.) A send that fails answers
        nothing: the step's completion fails too and stops the worker."""
        with contextlib.suppress(Exception):
            # (shielded: the completion awaits the same sends; cancelling this must not cancel them)
            await deliver([asyncio.shield(f) for f in sent])
            self.answer_api_calls(staged)

    def answer_api_calls(self, staged: Iterable[Staged]) -> None:
        """The API transactions of delivered steps: their decisions and refusals (once:
        a call answered already is not answered again)."""
        assert self.api_calls is not None
        for recs, outcome, _ in staged:
            refused = [] if not outcome.rejections else [
                refusal for r in outcome.rejections
                if (refusal := api_refusal(recs.values[r.index], r)) is not None]
            self.api_calls.delivered(outcome.decisions, refused)

    async def complete_steps(self, steps: Sequence[Step]) -> None:
        """Complete every step waiting (oldest first), together: outputs, rows, acks."""
        await deliver([sent for step in steps for sent in step.pending])
        # outputs are durable: now the state rows, then the acks
        await self.write_accounts([s for step in steps for s in step.staged], steps[-1].producer)
        if self.api_calls is not None:  # (those not answered once their outputs were sent)
            self.answer_api_calls(s for step in steps for s in step.staged)
        for step in steps:
            ack_all(step.events)
            self.observe(step.staged, step.started)

    def observe(self, staged: Iterable[Staged], started: float) -> None:
        """Count a completed step on the worker's metrics."""
        metrics, now_ms = self.metrics, time.time() * 1000.0
        staged = list(staged)
        n_in = sum(len(recs) for recs, _, _ in staged)
        metrics.events_in.inc(n_in)
        metrics.batch_size.observe(n_in)
        metrics.batch_seconds.observe(time.perf_counter() - started)
        for recs, outcome, _ in staged:
            metrics.replayed.inc(outcome.replayed)
            metrics.rerouted.inc(len(outcome.misrouted))
            flagged = len(outcome.flagged)
            declined = outcome.declined
            metrics.flags.inc(flagged)
            metrics.decisions.labels(decision="review").inc(flagged)
            if declined:
                metrics.decisions.labels(decision="decline").inc(declined)
            metrics.decisions.labels(decision="approve").inc(len(outcome.decisions) - flagged - declined)
            if outcome.indices:
                stamps = recs.timestamps_ms[np.asarray(outcome.indices)]
                observe_many(metrics.latency, np.maximum(now_ms - stamps, 0.0) / 1000.0)
            if len(outcome.scores):
                for q in quantiles(outcome.scores, (0.1, 0.5, 0.9, 0.99)):
                    metrics.scores.observe(q)
        metrics.tracked_accounts.set(len(self.core.accounts))
