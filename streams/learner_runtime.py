"""The learner's lifecycle state inside a worker: models, gate, snapshots, registry writes.

Exactly one learner group owns model updates. :class:`LearnerRuntime` restores the
champion and challengers from the newest valid snapshot, follows seat changes made
elsewhere (the CLI), runs the gate and the drift watch, publishes versions to the
registry on the compacted ``models`` topic (:mod:`flagstream.scoring.registry`) and
snapshots what it learned. Its agents are in :mod:`flagstream.streams.learner_agents`.

Settings: ``challengers``, ``gate_*``/``drift_delta`` (see :mod:`flagstream.scoring.gate`),
``model_publish_interval_s``, ``model_keep_versions``, ``model_hmac_key``
(:class:`flagstream.streams.config.Settings`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from flagstream.codec import loads
from flagstream.scoring import registry as reg
from flagstream.scoring.challengers import ShadowSet, challengers_from_spec, new_lineages
from flagstream.scoring.champion_lifecycle import ChampionLifecycle
from flagstream.scoring.feedback_wait import WaitingRoom
from flagstream.scoring.gate import Gate
from flagstream.scoring.handle import ModelHandle, model_from_state, parse_version
from flagstream.scoring.label_ledger import HourlyBudget, LabelLedger, LabelMemory
from flagstream.scoring.learner import Learner
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.scoring.record_checks import check_learner_snapshot
from flagstream.scoring.snapshots import SnapshotStore, refusal_reason, seal
from flagstream.streams.app import Pipeline
from flagstream.streams.compat.internals import kafka_producer, read_row
from flagstream.streams.config import Settings
from flagstream.streams.delivery import deliver
from flagstream.streams.health_feed import HealthFeed
from flagstream.streams.label_table import LabelTable
from flagstream.streams.retention import RetentionSweep
from flagstream.streams.topics import partition_for

log = logging.getLogger(__name__)

Writes = list[tuple[bytes, dict | None]]


class LearnerRuntime:
    """The learner's lifecycle state inside a worker: models, gate, snapshots, registry writes."""

    def __init__(self, p: Pipeline,
                 register_agents: Callable[[Pipeline, LearnerRuntime], None]) -> None:
        self.p = p
        self.register_agents = register_agents
        s = p.settings
        self.key = p.models.key  # the learner made it at start (None only when unsigned is allowed)
        self.metrics = p.metrics.lifecycle
        self.decisions = p.tables["decisions"]
        self.gate = Gate(s.gate())
        base = s.champion_model()
        shadow = ShadowSet(challengers_from_spec(s.challengers, base))
        #: FLAGSTREAM_CHALLENGERS's challengers (new ones join a restored learner)
        self.configured = list(shadow)
        #: each transaction's effective label, written before a feedback batch is acked
        self.labels = LabelTable(p.tables["labels"], s.partitions)
        ledger = label_ledger(s, self.labels)
        #: labels that came before their decision (flagstream.scoring.feedback_wait)
        self.waiting = (WaitingRoom(s.feedback_wait_max, int(s.feedback_wait_s * 1000))
                        if s.feedback_wait_max else None)
        self.learner = Learner(ModelHandle(base, name=s.champion_lineage()), self.lookup,
                               int(s.feature_retention_s * 1000),
                               shadow=shadow, gate=self.gate, publish_each_batch=False,
                               ledger=ledger, waiting=self.waiting)
        self.store_metrics = p.metrics.feedback_store  # one set per process, across restarts
        self.retention = RetentionSweep(self.decisions, p.tables["labels"],
                                        int(s.feature_retention_s * 1000), self.store_metrics)
        self.store = SnapshotStore(s.data_path / p.role / "models", self.key)
        self.interval = s.model_publish_interval_s
        self.keep = s.model_keep_versions
        self._bad_seat: object = None
        self.lock = asyncio.Lock()
        self.ready = False
        self.snapshot_seq = 0
        self.last_publish = 0.0
        self.publications = 0
        self.snapshot_due = False
        #: (threshold, sequence, decline threshold) of the last operating-point record published.
        self.published_threshold: tuple[float, int, float | None] = (float("nan"), 0, None)
        self.written: OrderedDict[bytes, dict] = OrderedDict()
        self.lifecycle = ChampionLifecycle(self.learner, self.get, self.written.__setitem__,
                                           on_seat=self._seat_changed, on_refusal=self._refused,
                                           operating_point=operating_point(p))
        #: The model-health view's numbers (daily business metrics, drift), shown on the review page.
        self.health = HealthFeed(p)

    def lookup(self, transaction_id: str) -> dict | None:
        """The decision recorded for a transaction (the feedback join), or None."""
        home = partition_for(transaction_id, self.p.settings.partitions)  # scores are keyed by it
        stored = read_row(self.decisions, home, transaction_id.encode())
        if stored is None:
            return None
        decision = loads(stored)
        return decision if isinstance(decision, dict) else None

    # --- reading the registry (our own recent writes first: the table may lag) ---------
    def get(self, key: bytes) -> dict | None:
        mine, table = self.written.get(key), self.p.models.read(key)
        if mine and table:  # the later of the two: a higher seat epoch, a longer history
            if key == reg.SEAT:
                return mine if mine["epoch"] > table["epoch"] else table
            return mine if len(mine.get("history", ())) > len(table.get("history", ())) else table
        return mine or table

    def _keys(self, prefix: bytes) -> list[bytes]:
        return [k for k in self.p.tables["models"].keys() if k.startswith(prefix)]

    # --- start --------------------------------------------------------------------------
    async def ensure_ready(self) -> None:
        if not self.ready:
            await recovery_done(self.p.app).wait()
            if not self.ready:
                if self.restore():
                    await self.catch_up()
                self.resume_operating_point()
                self.ready = True

    def resume_operating_point(self) -> None:
        """Start from the threshold this learner last published (its estimates start again
        from the traffic and labels that arrive)."""
        policy, record = self.p.core.policy, self.p.models.read(reg.OPERATING_POINT)
        if isinstance(policy, OperatingPoint) and record is not None:
            policy.follow(float(record["threshold"]), record.get("decline_threshold"),
                          (record.get("evidence") or {}).get("target_threshold"))
            self.published_threshold = (float(record["threshold"]), int(record["sequence"]),
                                        record.get("decline_threshold"))
            log.info("operating point resumed at threshold %.3f", policy.threshold)

    def threshold_writes(self) -> Writes:
        """The operating point's record when its threshold changed since last published."""
        policy = self.p.core.policy
        if not isinstance(policy, OperatingPoint):
            return []
        threshold, sequence, decline = self.published_threshold
        if policy.threshold == threshold and policy.decline_threshold == decline:
            return []
        self.published_threshold = (policy.threshold, sequence + 1, policy.decline_threshold)
        record = policy.published(sequence + 1, int(time.time() * 1000))
        e = record["evidence"]
        numbers = [_shown(e.get(k)) for k in ("false_discovery_rate", "fdr_low", "fdr_high",
                                              "labels", "frauds", "flags_per_day")]
        log.info("operating point: threshold %.3f -> %.3f, decline %s (%s; target's point %.3f, "
                 "FDR %s [%s, %s] on %s labels, %s frauds, %s flags/day, at %s)", threshold,
                 policy.threshold, _shown(policy.decline_threshold), record["reason"],
                 e["target_threshold"], *numbers, _event_time(e.get("event_time_ms")))
        return [(reg.OPERATING_POINT, record)]

    async def catch_up(self) -> int:
        """Learn again the feedback between the restored snapshot and the group's commit,
        and read again the records of the labels that waited in it.

        When the newest snapshot was refused (torn, tampered) an older one is used: the
        labels after it were acknowledged, so the group will not deliver them again,
        but the models restored from the snapshot never learned them. Their other
        effects (dead letters, merchant activity) were delivered before the ack, so
        only the models learn them here. The labels waiting in the snapshot are kept
        only as positions (:mod:`flagstream.scoring.feedback_wait`): their records are
        read again from the feedback topic. Returns how many labels were learned.
        """
        s, learner = self.p.settings, self.learner
        topic = self.p.topics["feedback"].get_topic_name()
        consumer = AIOKafkaConsumer(bootstrap_servers=s.broker, group_id=self.p.app.conf.id,
                                    enable_auto_commit=False, **s.kafka_security())
        await consumer.start()
        learned = 0
        try:
            for partition in range(s.partitions):
                tp = TopicPartition(topic, partition)
                end = await consumer.committed(tp)  # the next offset the group will read
                start = learner.offsets.get(partition, -1) + 1
                waiting = set(self.waiting.unloaded(partition)) if self.waiting else set()
                stop = max(end or 0, max(waiting, default=-1) + 1)
                first = min(start, min(waiting, default=start))
                if first >= stop or (not waiting and (end is None or start >= end)):
                    continue
                consumer.assign([tp])
                consumer.seek(tp, first)
                while await consumer.position(tp) < stop:
                    batch = (await consumer.getmany(tp, timeout_ms=1_000)).get(tp, [])
                    for r in batch:
                        if r.offset in waiting and self.waiting is not None:
                            self.waiting.load(partition, r.offset, r.value)
                    kept = [r for r in batch if start <= r.offset < (end or 0)]
                    if kept:
                        learned += learner.learn([r.value for r in kept], [r.offset for r in kept],
                                                 partition).learned
                if end is not None and start < end:
                    log.warning("learned feedback %s[%d] offsets %d..%d again: the snapshot used "
                                "was older than the group's commit", topic, partition, start, end - 1)
        finally:
            await consumer.stop()
        if self.waiting is not None:
            for partition, offset in self.waiting.drop_unloaded():
                log.error("a waiting label at %s[%d]@%d could not be read again", topic, partition,
                          offset)
                self.store_metrics.waited.labels(outcome="lost").inc()
            self.store_metrics.waiting.set(len(self.waiting))
        return learned

    def restore(self) -> bool:
        """Resume from the newest valid snapshot: the local file or the copy on the topic.

        Returns whether a snapshot was found (else the learner starts from the published
        champion, or from scratch).
        """
        learner = self.learner
        found = []
        local = self.store.load(check=self.check_snapshot)
        for _, why in self.store.refused:
            self.metrics.refused.labels(source="snapshot_file", reason=refusal_reason(why)).inc()
        if local is not None:
            found.append((local[0]["snapshot_seq"], 1, local[0], str(local[1])))
        remote = self.p.models.read(reg.LEARNER)  # signature checked there, content here
        if remote is not None:
            try:
                self.check_snapshot(remote)
            except ValueError as exc:
                self.p.models.refuse("snapshot_topic", "malformed", f"models[learner]: {exc}")
            else:
                found.append((remote["snapshot_seq"], 0, remote, "the models topic"))
        if found:
            seq, _, payload, where = max(found, key=lambda f: (f[0], f[1]))
            learner.restore(payload)
            self.health.resume_since(payload.get("since_ms", 0))
            self.snapshot_seq = seq
            self.add_configured_challengers()
            log.info("learner restored from %s: champion %s, offsets %s, challengers %s",
                     where, learner.handle.version, learner.offsets, learner.shadow.names())
        else:
            seat, champion = self.p.models.read(reg.SEAT), self.p.models.read(reg.CHAMPION)
            champion = reg.choose_champion(seat, champion)
            if champion is not None:
                lineage = champion.get("lineage") or parse_version(champion["version"])[0]
                learner.handle.adopt(model_from_state(champion["state"]), lineage,
                                     champion["sequence"], champion.get("epoch", 0),
                                     champion.get("seat", ""))
                log.info("learner starts from the published champion %s", learner.handle.version)
            learner.timeline.append([learner.handle.version, 0])
        floor = 0  # only verified records count: a forged key must not move the sequence
        for key in (*self._keys(reg.VERSION_PREFIX), reg.SEAT, reg.CHAMPION):
            record = self.p.models.read(key)
            floor = max(floor, record["sequence"] if record else 0)
        learner.next_sequence = max(learner.next_sequence, floor + 1)
        self.publish_handle()
        return bool(found)

    def add_configured_challengers(self) -> None:
        """Challengers named in FLAGSTREAM_CHALLENGERS after the snapshot was taken join now."""
        learner = self.learner
        published = {lineage for k in self._keys(reg.VERSION_PREFIX) if (lineage := _lineage(k))}
        known = {learner.handle.name, *learner.shadow.names(), *published}
        for challenger in new_lineages(self.configured, known):
            learner.shadow.add(challenger)
            log.info("challenger %s joins from FLAGSTREAM_CHALLENGERS (not in the snapshot)",
                     challenger.lineage)

    def check_snapshot(self, payload: dict) -> None:
        """Raise ``ValueError`` unless ``payload`` is a learner snapshot this learner can resume
        from: every field checked, then restored into a scratch learner."""
        check_learner_snapshot(payload)
        s = self.p.settings
        scratch = Learner(ModelHandle(LinearChampion()), self.lookup, shadow=ShadowSet([]),
                          gate=Gate(s.gate()), publish_each_batch=False)
        try:
            scratch.restore(payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"learner snapshot cannot be restored: {type(exc).__name__}: {exc}") from None

    # --- what changes the champion -------------------------------------------------------
    def publish_handle(self) -> None:
        """Let this process's scorer (role ``all``) use the champion's newest published version."""
        h, p = self.learner.handle, self.p
        if h.sequence and (h.epoch, h.seat, h.sequence) != (p.handle.epoch, p.handle.seat,
                                                            p.handle.sequence):
            p.handle.adopt(model_from_state(h.model.to_state()), h.name, h.sequence, h.epoch, h.seat)
            p.metrics.model_version.set(h.sequence)

    def _apply_seat(self, seat: dict, by: str) -> None:
        lineage = self.learner.handle.name
        try:
            changed = self.learner.adopt_seat(seat)
        except (KeyError, TypeError, ValueError) as exc:  # refuse, once, what cannot be loaded
            if self._bad_seat != seat.get("id"):
                self._bad_seat = seat.get("id")
                log.error("cannot follow seat change to %s: %s", seat.get("version"), exc)
                self.metrics.refused.labels(source="unloadable", reason="unloadable").inc()
            return
        if changed:
            self.lifecycle.adopted(seat, by, lineage)

    def _seat_changed(self, seat: dict, by: str) -> None:
        """The learner adopted a new seat: count it, say it, hand the champion to the scorer."""
        counter = self.metrics.promotions if seat["action"] == "promote" else self.metrics.rollbacks
        counter.labels(by=by).inc()
        log.warning("champion %s → %s (%s by %s: %s)", seat.get("from"), seat["version"],
                    seat["action"], seat["by"], seat["reason"])
        self.publish_handle()

    def _refused(self, record: dict, reason: str) -> None:
        self.metrics.gate_refusals.inc()
        log.warning("challenger %s: %s", record["version"], reason)

    def sync(self) -> Writes:
        """Follow seat changes made elsewhere (the CLI); shadow newly submitted candidates."""
        seat = self.p.models.read(reg.SEAT)
        if seat is not None and self.learner.follows(seat):
            self._apply_seat(seat, "cli" if str(seat["by"]).startswith("cli") else str(seat["by"]))
        writes: Writes = []
        for key in self._keys(reg.CANDIDATE_PREFIX):
            candidate = self.p.models.read(key)
            if candidate is None:
                continue
            if candidate.get("id") not in self.learner.adopted:
                try:
                    record = self.learner.adopt_candidate(candidate)
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("candidate %s refused: %s", key.decode(errors="replace"), exc)
                    record = None
                if record is None:
                    log.error("candidate %s not shadowed", candidate.get("lineage"))
                else:
                    log.info("shadowing candidate %s as %s", candidate["lineage"], record["version"])
                    writes.append((reg.version_key(record["version"]), record))
            writes.append((key, None))
        return writes

    def verdicts(self) -> Writes:
        """Apply the gate: refusals are logged and counted; a winner is promoted."""
        return self.lifecycle.verdicts()

    def drift(self) -> Writes:
        """After ADWIN saw the champion's error rise: roll back if an earlier version does better."""
        writes, tried = self.lifecycle.drift()
        if writes or tried:
            self.metrics.drift_alarms.inc()
        if tried:
            log.warning("champion error rose but no earlier version does better: %s",
                        "; ".join(tried))
        return writes

    def due(self) -> Writes:
        """Gate, drift watch, then a publication if one is due."""
        writes = self.verdicts() + self.drift()
        learner = self.learner
        dirty = learner.dirty or any(c.dirty for c in learner.shadow)
        if dirty and time.monotonic() - self.last_publish >= self.interval:
            writes += learner.publication()
            self.last_publish = time.monotonic()
            self.publications += 1
            self.p.metrics.model_updates.inc()
            self.publish_handle()
            report = self.gate.report(learner.shadow.names())
            for name, numbers in report.items():
                self.metrics.loss.labels(model=name).set(numbers["loss"])
                self.metrics.gate_labels.labels(model=name).set(numbers["n"])
            if self.publications % 20 == 0:
                writes += [(k, None) for k in self.prunable()]
            self.snapshot_due = True  # a copy on the topic too, once the rest is delivered
        return writes

    def prunable(self) -> list[bytes]:
        versions = [r for r in (self.p.models.read(k) for k in self._keys(reg.VERSION_PREFIX)) if r]
        return self.lifecycle.prunable(versions, self.keep)

    # --- lifecycle ---------------------------------------------------------------------------
    def register(self) -> None:
        """Register the learner's agents and timer (given at construction) on the app."""
        self.register_agents(self.p, self)

    async def stop(self) -> None:
        """Nothing to release: every acknowledged batch is already in a snapshot."""

    # --- durability --------------------------------------------------------------------------
    async def persist(self) -> None:
        """Snapshot after a batch's outputs are delivered: the effective labels it admitted
        (changelog acknowledged), then the models to the topic (when published), then disk."""
        await self.labels.write(kafka_producer(self.p.app))
        self.snapshot_seq += 1
        payload = {"kind": "learner", "snapshot_seq": self.snapshot_seq,
                   "saved_at_ms": int(time.time() * 1000), **self.learner.to_state(),
                   "since_ms": self.health.since_state()}
        if self.snapshot_due:
            await deliver(await self.send([(reg.LEARNER, payload)]))
            self.snapshot_due = False
        self.store.save(payload, self.snapshot_seq)
        self.metrics.snapshots.inc()

    async def send(self, writes: Writes) -> list[Awaitable]:
        topic = self.p.topics["models"].get_topic_name()
        pending = []
        for key, payload in writes:
            value = None if payload is None else seal(payload, self.key)
            sent = await self.p.app.producer.send(topic, key, value, reg.PARTITION, None, None)
            pending.append(sent)
            if payload is not None:
                self.written[key] = payload
                self.written.move_to_end(key)
            else:
                self.written.pop(key, None)
        while len(self.written) > 256:
            self.written.popitem(last=False)
        return pending


def operating_point(p: Pipeline) -> OperatingPoint | None:
    """The operating point the pipeline decides with, if its policy is one."""
    return p.core.policy if isinstance(p.core.policy, OperatingPoint) else None


def label_ledger(settings: Settings, memory: LabelMemory) -> LabelLedger:
    """The worker's label ledger: ``memory`` and the hourly budgets of ``settings``."""
    return LabelLedger(memory, HourlyBudget(settings.feedback_labels_per_reviewer_hour,
                                            settings.feedback_labels_per_source_hour))


def recovery_done(app: Any) -> asyncio.Event:
    """Set once the app's tables have recovered from their changelogs."""
    return app.tables.recovery.completed


def _shown(value: object) -> str:
    """A number for a log line: 3 decimals, whole numbers as they are, '-' for none.

    >>> _shown(0.12345), _shown(12.0), _shown(None)
    ('0.123', '12', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    return str(int(value)) if isinstance(value, int | float) else str(value)


def _event_time(ms: object) -> str:
    """Event time for a log line, as ISO text (a long number would be masked as a possible
    card number).

    >>> _event_time(1522540800000), _event_time(None)
    ('2018-04-01T00:00:00Z', '-')
    """
    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lineage(key: bytes) -> str | None:
    """The lineage of a ``version:<id>`` key of the models table; None if it names none."""
    try:
        return parse_version(key[len(reg.VERSION_PREFIX):].decode())[0]
    except (UnicodeDecodeError, ValueError):
        return None
