"""The learner's agents: record decisions, learn from feedback, keep merchant state.

Exactly one learner group owns model updates and merchant state; it publishes each
new model version to the compacted ``models`` topic that every worker replicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

from scoring.learner import Learner
from sinks.dead_letter import dead_letter, headers
from streams.app import Pipeline
from streams.codec import dumps, loads
from streams.core import MerchantActivity
from streams.delivery import deliver, send_activity
from streams.faust_batches import ack_all, by_partition, current_event
from streams.model_sync import sync_model
from streams.topics import partition_for

log = logging.getLogger(__name__)


def register_learner(p: Pipeline) -> None:
    s, app = p.settings, p.app
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
        pending.extend(await send_activity(p, outcome.activity))
    if outcome.learned:
        pending.append(await publish_model(p))
    await deliver(pending)
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
