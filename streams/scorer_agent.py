"""The scoring agent: transactions in, decisions, flags and dead letters out, per batch.

With :mod:`streams.faust_tuning` installed (the default; ``FLAGSTREAM_FAUST_CHUNKS=0``
turns it off) each event carries a whole fetched chunk of one partition, so Faust's
per-record dispatch is paid once per chunk, and a step takes whatever chunks have
arrived (:func:`streams.faust_batches.ready_events`, up to ``batch_size`` records);
without it, steps come from ``noack_take``. One step of the agent:

1. every partition's records go through :class:`streams.core.ScoringCore` (one
   call per partition: accounts live on one partition, offsets are per partition);
2. all outputs of the step (decisions, flags, re-routed records, merchant activity)
   leave as one record batch per topic-partition; dead letters are sent one by one;
3. once the broker has acknowledged all of them, each partition's changed account
   rows are written to the ``accounts`` table (changelog batch first, acknowledged,
   then one RocksDB write batch per partition);
4. only then are the events acked, so a crash replays work instead of losing it,
   and the offsets stored in account rows make that replay idempotent.

Steps 3–4 of one step overlap with steps 1–2 of the next: completions run in a
background task strictly in processing order (:class:`streams.faust_batches.InOrder`),
so rows and acks still land in order while the broker acknowledges the previous step.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time

import numpy as np

from sinks.dead_letter import dead_letter, headers
from streams import faust_tuning
from streams.app import Pipeline
from streams.codec import dumps
from streams.delivery import Outbox, activity_records, can_write_rows, deliver, kafka_producer, stage_rows
from streams.faust_batches import (
    InOrder,
    PartitionRecords,
    ack_all,
    current_event,
    ready_events,
    records_by_partition,
)
from streams.model_sync import sync_model
from streams.topics import partition_for

log = logging.getLogger(__name__)


#: glibc ``mallopt`` parameters.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(
    trim_threshold: int = 256 << 20, top_pad: int = 64 << 20, mmap_threshold: int = 32 << 20
) -> bool:
    """Keep freed heap memory mapped instead of handing it back to the OS after every batch.

    A batch allocates and frees megabytes (decision dicts, their JSON, feature
    matrices). With glibc's defaults the heap top is trimmed as soon as 128 KiB are
    free and blocks of 128 KiB or more get their own ``mmap``, so every batch faults
    its memory in again: profiled at ~1.9 page faults and ~7 µs per decision for the
    encoding step alone, 0 and ~1 µs with these settings. Costs: the worker keeps
    its peak heap resident. Returns False where ``mallopt`` is unavailable (not glibc).

    >>> isinstance(tune_allocator(), bool)
    True
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold),
            (M_TOP_PAD, top_pad),
        )
    )


def tune_gc(threshold0: int = 20_000) -> None:
    """Collect once, then keep everything alive so far out of later collections.

    Call when the worker is ready. Full collections otherwise walk every object the
    process holds (Faust, aiokafka cluster metadata, tables, models): measured at
    45–125 ms pauses every few seconds while scoring (and 430 ms at start), which
    made up the latency tail. ``gc.freeze()`` moves the survivors to the permanent
    generation; a higher first threshold makes young collections rarer (batches
    allocate in bursts and free by reference counting). Garbage cycles are still
    collected, among objects created after the freeze.

    >>> import gc; tune_gc(); gc.get_threshold()[0]
    20000
    >>> gc.unfreeze()
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold0, gen1, gen2)


def chunks_enabled(settings) -> bool:
    """Whether the worker takes fetched chunks (``FLAGSTREAM_FAUST_CHUNKS``, default on)."""
    value = getattr(settings, "faust_chunks", None)
    if value is None:
        value = os.environ.get("FLAGSTREAM_FAUST_CHUNKS", "1").lower() not in {"0", "false", "no"}
    return bool(value)


def observe_many(histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, with one bucket update per bucket.

    >>> from prometheus_client import CollectorRegistry, Histogram
    >>> h = Histogram("h", "h", buckets=(1, 2), registry=CollectorRegistry())
    >>> observe_many(h, np.array([0.5, 1.0, 1.5, 9.0]))
    >>> [s.value for s in h.collect()[0].samples if s.name == "h_bucket"]
    [2.0, 3.0, 4.0]
    """
    if len(values) == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.sum(values)))


def register_scorer(p: Pipeline) -> None:
    """Install the chunked consumer path and register the ``score`` agent on ``p.app``.

    Parameters
    ----------
    p
        The worker's pipeline (a role that scores: ``all`` or ``scorer``).
    """
    s, app, metrics, core = p.settings, p.app, p.metrics, p.core
    t = p.topics
    accounts = p.tables["accounts"]
    merchants_table = p.tables["merchants"]
    names = {k: v.get_topic_name() for k, v in t.items()}
    tuning = faust_tuning.install(app, [t["transactions"]]) if chunks_enabled(s) else None
    tune_allocator()

    @app.on_partitions_revoked.connect
    def _forget_accounts(*_args, **_kwargs) -> None:  # rows may move to another worker
        core.accounts.__init__(core.accounts.new_row, core.accounts.loader)  # type: ignore[misc]

    changed_merchants: set[bytes] = set()
    if not p.learns:  # (in the same process the learner updates the shared rows directly)
        replicate = merchants_table.apply_changelog_batch

        def replicate_and_note(batch) -> None:
            batch = list(batch)
            replicate(batch)
            changed_merchants.update(e.message.key for e in batch)

        merchants_table.apply_changelog_batch = replicate_and_note

    def refresh_merchants() -> None:
        """Merchant rows the replicated table changed since the last batch, into the arena.

        (Rows the arena has not loaded yet are read from the table on first use.)
        """
        if not changed_merchants:
            return
        arena = core.merchants.arena
        keys = list(changed_merchants)
        changed_merchants.clear()
        for key in keys:
            merchant = key.decode()
            if merchant in arena:
                stored = merchants_table.get(key)
                if stored is not None:
                    arena.put(merchant, stored)

    counts: dict[str, int] = {}

    def stage(recs: PartitionRecords, outbox: Outbox):
        """Score one partition's records; queue their outputs. Returns (outcome, rows)."""
        partition, values = recs.partition, recs.values
        outcome = core.process(values, recs.offsets, partition, s.partitions)
        rows = core.accounts.take_touched()
        for index, account in outcome.misrouted:
            outbox.add(names["transactions"], partition_for(account, s.partitions),
                       account.encode(), values[index])
        decisions, flagged = outcome.decisions, outcome.flagged
        outbox.add_keyed(names["scores"], [d["transaction_id"] for d in decisions],
                         [dumps(d) for d in decisions], counts[names["scores"]])
        outbox.add_keyed(names["review"], [f["transaction_id"] for f in flagged],
                         [dumps(f) for f in flagged], counts[names["review"]])
        for part, value in activity_records(outcome.activity, s.partitions):
            outbox.add(names["merchant_activity"], part, None, value)
        return outcome, rows

    async def send_dead_letters(recs: PartitionRecords, outcome) -> list:
        sent = []
        for r in outcome.rejections:
            letter = dead_letter(recs.values[r.index], r.reason, r.detail, recs.topic,
                                 recs.partition, recs.offsets[r.index])
            sent.append(await app.producer.send(
                names["transactions_dlq"], recs.keys[r.index], dumps(letter), None, None,
                headers(r.reason),
            ))
            metrics.dead_letters.labels(topic=names["transactions_dlq"], reason=r.reason).inc()
        return sent

    async def write_accounts(staged, producer) -> None:
        """Changed account rows: changelog first (acknowledged), then the local store."""
        outbox, writes = Outbox(producer, counts), []
        for recs, _, rows in staged:
            if not rows:
                continue
            encoded = {key.encode(): row for key, row in rows.items()}
            if can_write_rows(accounts, app):
                writes.append(stage_rows(accounts, recs.partition, encoded, outbox))
            else:  # Faust's own path, one row at a time
                with current_event(recs.events[-1]):
                    for key, row in encoded.items():
                        accounts[key] = row
        if writes:
            last = outbox.last_offsets(await asyncio.gather(*await outbox.send()))
            for write in writes:
                write.apply(last)

    async def score_events(events, finish: InOrder) -> None:
        """Process one step now; its completion runs in ``finish``, in order."""
        if not finish.started:  # first step: the worker is up, freeze what it holds
            tune_gc()
        started = time.perf_counter()
        sync_model(p)
        refresh_merchants()
        producer = kafka_producer(app)
        outbox = Outbox(producer, counts)
        for topic in (names["scores"], names["review"]):
            await outbox.partition_count(topic)
        staged, pending = [], []
        for recs in records_by_partition(events).values():
            outcome, rows = stage(recs, outbox)
            staged.append((recs, outcome, rows))
            pending.extend(await send_dead_letters(recs, outcome))
        pending.extend(await outbox.send())
        await finish.put(complete(events, staged, pending, producer, started))

    async def complete(events, staged, pending, producer, started: float) -> None:
        await deliver(pending)
        # outputs are durable: now the state rows, then the acks
        await write_accounts(staged, producer)
        ack_all(events)
        observe(staged, started)

    def observe(staged, started: float) -> None:
        now_ms = time.time() * 1000.0
        n_in = sum(len(recs) for recs, _, _ in staged)
        metrics.events_in.inc(n_in)
        metrics.batch_size.observe(n_in)
        metrics.batch_seconds.observe(time.perf_counter() - started)
        for recs, outcome, _ in staged:
            metrics.replayed.inc(outcome.replayed)
            metrics.rerouted.inc(len(outcome.misrouted))
            flagged = len(outcome.flagged)
            metrics.flags.inc(flagged)
            metrics.decisions.labels(decision="review").inc(flagged)
            metrics.decisions.labels(decision="approve").inc(len(outcome.decisions) - flagged)
            if outcome.indices:
                stamps = recs.timestamps_ms[np.asarray(outcome.indices)]
                observe_many(metrics.latency, np.maximum(now_ms - stamps, 0.0) / 1000.0)
            if len(outcome.scores):
                for q in np.quantile(outcome.scores, (0.1, 0.5, 0.9, 0.99)):
                    metrics.scores.observe(q)
        metrics.tracked_accounts.set(len(core.accounts))

    @app.agent(t["transactions"], name="score")
    async def score(stream):
        finish = InOrder(app)
        if tuning is not None:  # each event is a fetched chunk: take what has arrived
            async for events in ready_events(stream, max_records=s.batch_size):
                await score_events(events, finish)
        else:
            async for events in stream.noack_take(s.batch_size, within=s.batch_within):
                await score_events(events, finish)
