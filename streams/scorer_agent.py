"""The scoring agent: transactions in, decisions, flags and dead letters out, per batch.

Batches come from ``noack_take``; a batch is acknowledged only after its outputs are
delivered and its account rows written, so a crash replays work instead of losing
it, and offsets stored in account rows make the replay idempotent.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from sinks.dead_letter import dead_letter, headers
from streams.app import Pipeline
from streams.codec import dumps
from streams.delivery import deliver, send_activity
from streams.faust_batches import ack_all, by_partition, current_event
from streams.model_sync import sync_model
from streams.topics import partition_for

log = logging.getLogger(__name__)


def register_scorer(p: Pipeline) -> None:
    s, app, metrics, core = p.settings, p.app, p.metrics, p.core
    t = p.topics
    accounts = p.tables["accounts"]
    merchants_table = p.tables["merchants"]
    names = {k: v.get_topic_name() for k, v in t.items()}

    @app.on_partitions_revoked.connect
    def _forget_accounts(*_args, **_kwargs) -> None:  # rows may move to another worker
        core.accounts.__init__(core.accounts.new_row, core.accounts.loader)  # type: ignore[misc]

    def refresh_merchants(merchant_ids: list[str]) -> None:
        if p.learns:  # same process: the learner updates the shared rows directly
            return
        for m in set(merchant_ids):
            stored = merchants_table.get(m.encode())
            if stored is not None:
                core.merchants.arena.put(m, stored)

    async def score_partition(partition: int, events) -> None:
        values = [e.message.value for e in events]
        offsets = [e.message.offset for e in events]
        started = time.perf_counter()
        sync_model(p)
        outcome = core.process(values, offsets, partition, s.partitions)
        refresh_merchants(outcome.activity.merchant_ids)
        producer = app.producer
        pending = []
        for index, account in outcome.misrouted:
            pending.append(
                await producer.send(
                    names["transactions"], account.encode(), values[index],
                    partition_for(account, s.partitions), None, None,
                )
            )
        for decision in outcome.decisions:
            pending.append(
                await producer.send(
                    names["scores"], decision["transaction_id"].encode(), dumps(decision),
                    None, None, None,
                )
            )
        for flagged in outcome.flagged:
            pending.append(
                await producer.send(
                    names["review"], flagged["transaction_id"].encode(), dumps(flagged),
                    None, None, None,
                )
            )
        for r in outcome.rejections:
            msg = events[r.index].message
            letter = dead_letter(values[r.index], r.reason, r.detail, msg.topic, partition, msg.offset)
            pending.append(
                await producer.send(
                    names["transactions_dlq"], msg.key, dumps(letter), None, None,
                    headers(r.reason),
                )
            )
            metrics.dead_letters.labels(topic=names["transactions_dlq"], reason=r.reason).inc()
        if len(outcome.activity):
            pending.extend(await send_activity(p, outcome.activity))
        await deliver(pending)
        # outputs are durable: now the state rows, then the acks
        with current_event(events[-1]):
            for key, row in core.accounts.take_touched().items():
                accounts[key.encode()] = row
        ack_all(events)
        now = time.time()
        metrics.events_in.inc(len(events))
        metrics.batch_size.observe(len(events))
        metrics.batch_seconds.observe(time.perf_counter() - started)
        metrics.replayed.inc(outcome.replayed)
        metrics.rerouted.inc(len(outcome.misrouted))
        flagged = len(outcome.flagged)
        metrics.flags.inc(flagged)
        metrics.decisions.labels(decision="review").inc(flagged)
        metrics.decisions.labels(decision="approve").inc(len(outcome.decisions) - flagged)
        for index in outcome.indices:
            metrics.latency.observe(max(now - events[index].message.timestamp, 0.0))
        if len(outcome.scores):
            for q in np.quantile(outcome.scores, (0.1, 0.5, 0.9, 0.99)):
                metrics.scores.observe(q)
        metrics.tracked_accounts.set(len(core.accounts))

    @app.agent(t["transactions"], name="score")
    async def score(stream):
        async for events in stream.noack_take(s.batch_size, within=s.batch_within):
            for partition, group in by_partition(events).items():
                await score_partition(partition, group)
