"""The learner's agents: record decisions, learn from feedback, keep merchant state.

Exactly one learner group owns model updates and merchant state. It scores the
shadow challengers on every recorded decision, learns every label into the champion
and the challengers, runs the gate and the drift watch, and publishes versions to
the registry on the compacted ``models`` topic (:mod:`flagstream.scoring.registry`).

A feedback batch is acknowledged only after (1) its outputs (dead letters, merchant
activity, model records) are delivered, (2) the effective labels it admitted are in the
``labels`` table's changelog (:mod:`flagstream.streams.label_table`) and (3) a snapshot of the models and the
feedback offsets they cover is on disk (atomic, sealed). A learner killed at any
moment restarts from its newest valid snapshot (local file, else the copy on the
``models`` topic) and skips the feedback at offsets that snapshot already covers.

A label whose decision is not recorded yet waits (:mod:`flagstream.scoring.feedback_wait`,
``FEEDBACK_WAIT_MAX`` labels, ``FEEDBACK_WAIT_S`` seconds) and is tried again on every
feedback batch and on the timer once ``record-decisions`` has recorded its decision; when
the wait is over it goes to ``feedback.dlq`` as ``decision_never_arrived``, and a label
that finds the room full as ``feedback_wait_full``. Its offset is acknowledged with its
batch: the snapshot saved before that acknowledgement holds its position, and a learner
restored from the snapshot reads the record again from the feedback topic. The same
timer prunes the ``decisions`` and ``labels`` tables by retention
(:mod:`flagstream.streams.retention`).

The lifecycle state they share is a :class:`flagstream.streams.learner_runtime.LearnerRuntime`;
:func:`learner` builds one with these agents.
"""

from __future__ import annotations

import logging

from flagstream.cards import card_numbers
from flagstream.codec import JSONDecodeError, dumps, loads
from flagstream.features.merchants import MerchantActivity
from flagstream.scoring.challengers import parse_decision
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.sinks.dead_letter import dead_letter, dead_letter_key, headers
from flagstream.streams.api_answers import first_on_scores
from flagstream.streams.app import Pipeline
from flagstream.streams.compat.internals import current_event, kafka_producer
from flagstream.streams.delivery import deliver, send_activity
from flagstream.streams.faust_batches import PartitionRecords, ack_all, by_partition, records_by_partition
from flagstream.streams.learner_runtime import LearnerRuntime, recovery_done
from flagstream.streams.review_page import ReviewRuntime
from flagstream.streams.topics import partition_for

log = logging.getLogger(__name__)


def learner(p: Pipeline) -> LearnerRuntime:
    """The learner runtime of ``p`` with this module's agents."""
    return LearnerRuntime(p, register_learner)


def register_learner(p: Pipeline, rt: LearnerRuntime) -> None:
    """The learner's agents and timer on ``p.app`` (see the module docstring)."""
    s, app = p.settings, p.app
    t = p.topics
    decisions = p.tables["decisions"]
    merchants_table = p.tables["merchants"]
    names = {k: v.get_topic_name() for k, v in t.items()}

    @app.agent(t["scores"], name="record-decisions")
    async def record_decisions(stream):
        """Keep each decision (features + challengers' shadow scores) for the feedback join."""
        async for events in stream.noack_take(s.batch_size, within=0.05):
            await rt.ensure_ready()
            for group in records_by_partition(events).values():
                parsed = [parse_decision(v) for v in group.values]
                with current_event(group.events[-1]):
                    parsed, settled = first_on_scores(decisions, group.keys, group.values, parsed)
                usable = [(k, v) for k, v in zip(group.keys, parsed, strict=True)
                          if isinstance(v, dict) and k]
                rt.learner.shadow.annotate([v for _, v in usable])
                count_traffic(p, [v for _, v in usable])
                rt.health.decisions([v for _, v in usable])
                with current_event(group.events[-1]):
                    for key, v in usable:
                        decisions[key[:256]] = dumps(v)
                if rt.waiting is not None:  # labels that came first are ready to be learned
                    for key, _ in usable:
                        rt.waiting.arrived(key[:256].decode(errors="replace"))
                rt.metrics.recorded.inc(len(usable))
                if len(usable) + settled < len(group):  # not a decision the scorer wrote: never learned from
                    refused = len(group) - len(usable) - settled
                    log.warning("ignored %d records on %s that are not decisions", refused,
                                group.topic)
                    p.metrics.dead_letters.labels(topic=group.topic, reason="invalid_decision").inc(
                        refused)
            ack_all(events)

    @app.agent(t["feedback"], name="learn")
    async def learn(stream):
        async for events in stream.noack_take(500, within=0.1):
            await rt.ensure_ready()
            async with rt.lock:
                pending = await rt.send(rt.sync())
                labelled: list[tuple[dict, int, dict]] = []
                for partition, group in records_by_partition(events).items():
                    pending += await _learn_partition(p, rt, partition, group, names, labelled)
                pending += await _learn_waiting(p, rt, names, labelled)
                pending += await rt.send(rt.due())
                await deliver(pending)
                await rt.persist()
                ack_all(events)
            count_labels(p, labelled)
            follow_operating_point(p, labelled)
            rt.health.labelled(labelled)
            to_review_queue(p, labelled)
            if writes := rt.threshold_writes():  # every scorer decides with the same threshold
                async with rt.lock:
                    await deliver(await rt.send(writes))

    @app.timer(0.5)
    async def lifecycle() -> None:
        """Seat changes from the CLI, candidates, and publications that were not due yet."""
        if not rt.ready:
            if not recovery_done(p.app).is_set():
                return
            await rt.ensure_ready()
        async with rt.lock:
            writes = rt.sync() + rt.due()
            if writes or rt.snapshot_due:
                await deliver(await rt.send(writes))
                await rt.persist()
        await waited_and_pruned(p, rt, names)

    @app.agent(t["merchant_activity"], name="merchants")
    async def merchants(stream):
        arena = p.core.merchants.arena
        async for events in stream.noack_take(200, within=0.5):
            for _, group in by_partition(events).items():
                for e in group:
                    activity = _activity(e.message.value)
                    if activity is not None:
                        p.core.merchants.apply(activity)
                with current_event(group[-1]):
                    for key, row in arena.take_touched().items():
                        merchants_table[key.encode()] = row
            ack_all(events)

    _ = merchants, record_decisions, learn, lifecycle


#: Waiting labels whose decision is looked up again on each tick of the lifecycle timer.
RECHECK_PER_TICK = 500


async def waited_and_pruned(p: Pipeline, rt: LearnerRuntime, names) -> None:
    """Between feedback batches: learn the labels whose decision came, give up those that
    waited too long, and prune the decisions and labels tables when a sweep is due."""
    if rt.waiting is not None and len(rt.waiting):
        rt.waiting.recheck(lambda tx: decision_known(rt, tx), RECHECK_PER_TICK)
    if rt.waiting is not None and (rt.waiting.has_ready() or _wait_over(rt)):
        labelled: list[tuple[dict, int, dict]] = []
        async with rt.lock:
            await deliver(await _learn_waiting(p, rt, names, labelled))
            await rt.persist()
        count_labels(p, labelled)
        follow_operating_point(p, labelled)
        to_review_queue(p, labelled)
    if rt.retention.due():
        async with rt.lock:  # no label row is half written meanwhile
            await rt.retention.run(kafka_producer(p.app))


def decision_known(rt: LearnerRuntime, transaction_id: str) -> bool:
    """Whether the learner's decisions table has this transaction (an unreadable row: no)."""
    try:
        return rt.lookup(transaction_id) is not None
    except Exception:  # the learn path rejects it with the reason once it is tried
        return False


def _wait_over(rt: LearnerRuntime) -> bool:
    room = rt.waiting
    oldest = room.oldest_ms() if room is not None else None
    return room is not None and oldest is not None and rt.learner.clock_ms() - oldest >= room.wait_ms


async def _learn_waiting(p: Pipeline, rt: LearnerRuntime, names, labelled: list) -> list:
    """Learn the waiting labels whose decision came; dead-letter those given up (with the
    feedback record's own partition and offset)."""
    if rt.waiting is None:
        return []
    outcome, tried = rt.learner.learn_waiting()
    pending = []
    for r in outcome.rejections:
        w = tried[r.index]
        letter = dead_letter(w.value, r.reason, r.detail, names["feedback"], w.partition, w.offset)
        pending.append(await p.app.producer.send(
            names["feedback_dlq"], dead_letter_key(w.transaction_id.encode() or None), dumps(letter),
            None, None, headers(r.reason)))
        p.metrics.dead_letters.labels(topic=names["feedback_dlq"], reason=r.reason).inc()
    if len(outcome.activity):
        pending.extend(await send_activity(p, outcome.activity))
    labelled.extend(outcome.labelled)
    p.metrics.feedback_ignored.inc(outcome.repeats)
    p.metrics.feedback_replaced.inc(outcome.replaced)
    waited = rt.store_metrics.waited
    waited.labels(outcome="learned").inc(outcome.learned)
    waited.labels(outcome="expired").inc(outcome.gave_up)
    waited.labels(outcome="refused").inc(len(outcome.rejections) - outcome.gave_up)
    rt.store_metrics.waiting.set(len(rt.waiting))
    return pending


def count_labels(p: Pipeline, labelled: list) -> None:
    """Count the labels learned, by label and source."""
    for _decision, label, feedback in labelled:
        p.metrics.labels.labels(
            label="fraud" if label else "legit", source=feedback.get("source", "review")
        ).inc()


def to_review_queue(p: Pipeline, labelled: list) -> None:
    """The labels just admitted (acknowledged, in the ledger) leave this worker's review queue:
    a label from elsewhere takes its flag off the page (:mod:`flagstream.streams.review_page`)."""
    if labelled and isinstance(p.review, ReviewRuntime):
        p.review.admitted(labelled)


def _activity(value: bytes | None) -> MerchantActivity | None:
    """A merchant-activity record, or None (logged) when it cannot be read."""
    try:
        return MerchantActivity.from_wire(loads(value or b""))
    except (JSONDecodeError, ValueError) as exc:
        log.error("skipping an unreadable merchant-activity record: %s", type(exc).__name__)
        return None


async def _learn_partition(p: Pipeline, rt: LearnerRuntime, partition: int,
                           group: PartitionRecords, names, labelled: list) -> list:
    s, metrics, producer, learner = p.settings, p.metrics, p.app.producer, rt.learner
    fresh = [i for i, off in enumerate(group.offsets) if not learner.seen(partition, off)]
    rt.metrics.replayed.inc(len(group) - len(fresh))
    pending = []
    keep = []
    for i in fresh:  # feedback keyed elsewhere is re-sent to its partition
        try:
            tx = loads(group.values[i] or b"").get("transaction_id")
        except Exception:  # malformed: let the learner reject it with a reason
            tx = None
        # (an id carrying a card number is never a key: the learner refuses it, masked)
        if isinstance(tx, str) and partition_for(tx, s.partitions) != partition and not card_numbers(tx):
            home = partition_for(tx, s.partitions)
            pending.append(await producer.send(names["feedback"], tx.encode(), group.values[i],
                                               home, None, None))
        else:
            keep.append(i)
    p.models.sync()
    outcome = learner.learn([group.values[i] for i in keep], [group.offsets[i] for i in keep],
                            partition)
    if group.offsets:
        learner.advance(partition, max(group.offsets))
    for r in outcome.rejections:
        i = keep[r.index]
        letter = dead_letter(group.values[i], r.reason, r.detail, group.topic, partition,
                             group.offsets[i])
        pending.append(
            await producer.send(
                names["feedback_dlq"], dead_letter_key(group.keys[i]), dumps(letter), None, None,
                headers(r.reason),
            )
        )
        metrics.dead_letters.labels(topic=names["feedback_dlq"], reason=r.reason).inc()
    if len(outcome.activity):
        pending.extend(await send_activity(p, outcome.activity))
    labelled.extend(outcome.labelled)
    metrics.feedback_ignored.inc(outcome.repeats)
    metrics.feedback_replaced.inc(outcome.replaced)
    rt.store_metrics.waited.labels(outcome="full").inc(outcome.full)
    if rt.waiting is not None:
        rt.store_metrics.waiting.set(len(rt.waiting))
    return pending


def count_traffic(p: Pipeline, decisions: list[dict]) -> None:
    """Every decision made (flagged or not) counts for the operating point's estimates."""
    if isinstance(p.core.policy, OperatingPoint):
        p.core.policy.observe_decisions(decisions)


def follow_operating_point(p: Pipeline, labelled: list) -> None:
    """Feed delayed labels to the operating point, in the event time of the transactions they
    label, so the threshold follows its target; export what it estimates."""
    policy = p.core.policy
    if not labelled or not isinstance(policy, OperatingPoint):
        return
    estimate = policy.observe_labelled(labelled)
    p.metrics.threshold.set(policy.threshold)
    p.metrics.operating_point.show(estimate.as_dict())
