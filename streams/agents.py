"""The Faust agents: scoring, recording decisions, learning, merchant state, model sync.

Every agent takes whole batches with ``noack_take`` and acknowledges a batch only
after its outputs are delivered and its table rows written, so a crash replays work
instead of losing it (offsets stored in account rows make the replay idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence

import numpy as np

from scoring.learner import Learner
from sinks.dead_letter import dead_letter, headers
from streams.app import Pipeline
from streams.codec import dumps, loads
from streams.core import MerchantActivity
from streams.faust_batches import ack_all, by_partition, current_event
from streams.schema import Rejection
from streams.topics import partition_for

log = logging.getLogger(__name__)


def register(p: Pipeline) -> None:
    """Attach the agents of ``p.role`` to ``p.app``."""
    if p.scores:
        _register_scorer(p)
    if p.learns:
        _register_learner(p)
    _register_model_sync(p)
    _register_pages(p)


async def _deliver(pending: Sequence[Awaitable]) -> None:
    """Wait until every send of a batch is acknowledged by the broker."""
    if pending:
        await asyncio.gather(*pending)


# --- scoring -----------------------------------------------------------------
def _register_scorer(p: Pipeline) -> None:
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
        for index, decision in zip(outcome.indices, outcome.decisions, strict=True):
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
            pending.extend(await _send_activity(p, outcome.activity))
        await _deliver(pending)
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


async def _send_activity(p: Pipeline, activity: MerchantActivity) -> list[Awaitable]:
    """Send merchant counts/labels, one record per merchant-state partition."""
    n = p.settings.partitions
    home = np.fromiter((partition_for(m, n) for m in activity.merchant_ids), np.int64)
    topic = p.topics["merchant_activity"].get_topic_name()
    pending = []
    for part in np.unique(home):
        sel = np.flatnonzero(home == part)
        piece = MerchantActivity(
            [activity.merchant_ids[i] for i in sel], activity.days[sel], activity.counts[sel],
            activity.frauds[sel],
        )
        pending.append(
            await p.app.producer.send(topic, None, dumps(piece.to_wire()), int(part), None, None)
        )
    return pending


# --- learning ----------------------------------------------------------------
def _register_learner(p: Pipeline) -> None:
    s, app, metrics = p.settings, p.app, p.metrics
    t = p.topics
    decisions = p.tables["decisions"]
    merchants_table = p.tables["merchants"]
    names = {k: v.get_topic_name() for k, v in t.items()}

    def lookup(transaction_id: str) -> dict | None:
        stored = decisions.get(transaction_id.encode())
        return None if stored is None else loads(stored)

    learner = Learner(p.handle, lookup, retention_ms=int(s.feature_retention_s * 1000))

    @app.agent(t["scores"], name="record-decisions")
    async def record_decisions(stream):
        """Keep each decision (with its features) by transaction id, for the feedback join."""
        async for events in stream.noack_take(s.batch_size, within=0.05):
            for _, group in by_partition(events).items():
                with current_event(group[-1]):
                    for e in group:
                        decisions[e.message.key] = e.message.value
            ack_all(events)

    @app.agent(t["feedback"], name="learn")
    async def learn(stream):
        async for events in stream.noack_take(500, within=0.1):
            for partition, group in by_partition(events).items():
                await _learn_partition(p, learner, partition, group, names)

    @app.agent(t["merchant_activity"], name="merchants")
    async def merchants(stream):
        arena = p.core.merchants.arena
        async for events in stream.noack_take(200, within=0.5):
            for _, group in by_partition(events).items():
                for e in group:
                    p.core.merchants.apply(MerchantActivity.from_wire(loads(e.message.value)))
                with current_event(group[-1]):
                    for key, row in arena.take_touched().items():
                        merchants_table[key.encode()] = row
            ack_all(events)

    _ = merchants, record_decisions, learn


async def _learn_partition(p: Pipeline, learner: Learner, partition: int, events, names) -> None:
    s, metrics, producer = p.settings, p.metrics, p.app.producer
    values = [e.message.value for e in events]
    pending = []
    keep: list[int] = []
    for i, e in enumerate(events):  # feedback keyed elsewhere is re-sent to its partition
        try:
            tx = loads(e.message.value).get("transaction_id")
        except Exception:  # malformed: let the learner reject it with a reason
            tx = None
        if isinstance(tx, str) and partition_for(tx, s.partitions) != partition:
            pending.append(
                await producer.send(
                    names["feedback"], tx.encode(), values[i], partition_for(tx, s.partitions),
                    None, None,
                )
            )
        else:
            keep.append(i)
    sync_model(p)
    outcome = learner.learn([values[i] for i in keep])
    for r in outcome.rejections:
        msg = events[keep[r.index]].message
        letter = dead_letter(msg.value, r.reason, r.detail, msg.topic, partition, msg.offset)
        pending.append(
            await producer.send(
                names["feedback_dlq"], msg.key, dumps(letter), None, None, headers(r.reason)
            )
        )
        metrics.dead_letters.labels(topic=names["feedback_dlq"], reason=r.reason).inc()
    if len(outcome.activity):
        pending.extend(await _send_activity(p, outcome.activity))
    if outcome.learned:
        pending.append(await publish_model(p))
    await _deliver(pending)
    ack_all(events)
    for _decision, label, feedback in outcome.labelled:
        metrics.labels.labels(
            label="fraud" if label else "legit", source=feedback.get("source", "review")
        ).inc()


async def publish_model(p: Pipeline) -> Awaitable:
    """Announce the current model state as a new version on the compacted models topic."""
    p.metrics.model_updates.inc()
    p.metrics.model_version.set(p.handle.sequence)
    record = {
        "version": p.handle.version,
        "sequence": p.handle.sequence,
        "state": p.handle.model.to_state(),
        "published_at_ms": int(time.time() * 1000),
    }
    return await p.app.producer.send(
        p.topics["models"].get_topic_name(), b"champion", dumps(record), 0, None, None
    )


# --- model sync ------------------------------------------------------------------
def sync_model(p: Pipeline) -> bool:
    """Swap to the newest version in the replicated models table, if it is newer.

    Every worker replicates the compacted ``models`` topic (a global table), so all
    scorers see a published version within one batch, without a restart.
    """
    from scoring.linear import LinearChampion

    raw = p.tables["models"].get(b"champion")
    if raw is None or raw is p.tables.get("_models_seen"):
        return False
    p.tables["_models_seen"] = raw
    record = loads(raw)
    if record["sequence"] <= p.handle.sequence:
        return False
    p.handle.model = LinearChampion.from_state(record["state"])
    p.handle.sequence = record["sequence"]
    p.metrics.model_version.set(p.handle.sequence)
    log.info("model now %s", p.handle.version)
    return True


def _register_model_sync(p: Pipeline) -> None:
    @p.app.timer(0.5)
    async def model_sync() -> None:
        sync_model(p)

    _ = model_sync


# --- web pages -----------------------------------------------------------------------
def _register_pages(p: Pipeline) -> None:
    from faust.web import Request, Response, View

    @p.app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            p.metrics.threshold.set(p.core.policy.threshold)
            return self.bytes(p.metrics.render(), content_type="text/plain; version=0.0.4")

    @p.app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"role": p.role, "model_version": p.handle.version})

    _ = Metrics, Health, Rejection
