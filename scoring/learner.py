"""Learning from feedback: join each label to the features stored at scoring time.

The features come from the decision the scorer recorded (never recomputed, so no
label leakage). Expired and malformed feedback is rejected with a reason; feedback whose
decision is not recorded yet waits when the learner has a waiting room
(:mod:`flagstream.scoring.feedback_wait`), else it is rejected ``unknown_transaction``.
The champion and every shadow challenger learn each label; the gate (if any) scores
it against what each of them said before the label was known.

With a :class:`flagstream.scoring.label_ledger.LabelLedger` (the worker always has one)
only a transaction's effective label is learned: repeats are counted and skipped;
conflicting, unflagged and over-budget labels are rejected with their reason.

Learning is idempotent by feedback offset: the learner remembers, per partition, the
last offset it has learned, and skips anything at or below it. A snapshot holds the
models *and* those offsets, so a learner restored from one and fed the same feedback
again ends with exactly the weights of a run that was never interrupted.

>>> import numpy as np
>>> from flagstream.scoring.handle import ModelHandle
>>> from flagstream.scoring.linear import LinearChampion
>>> from flagstream.features.layout import N_FEATURES
>>> decisions = {"t-1": {"features": [1.0] * N_FEATURES, "score": 0.5, "merchant_id": "m-1",
...                      "event_time_ms": 0, "scored_at_ms": 0}}
>>> learner = Learner(ModelHandle(LinearChampion()), decisions.get, clock_ms=lambda: 0)
>>> out = learner.learn([b'{"transaction_id": "t-1", "label": "fraud", "source": "review"}',
...                      b'{"transaction_id": "t-9", "label": "legit"}'])
>>> out.learned, [r.reason for r in out.rejections], out.activity.frauds.tolist()
(1, ['unknown_transaction'], [1.0])
>>> again = learner.learn([b'{"transaction_id": "t-1", "label": "fraud"}'] * 2,
...                       offsets=[7, 8], partition=0)
>>> again.learned, learner.learn([b'{"transaction_id": "t-1", "label": "fraud"}'],
...                              offsets=[8], partition=0).replayed
(2, 1)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flagstream.codec import decode_object
from flagstream.errors import InvalidRecord, Rejection
from flagstream.features.layout import DAY_MS, EARLIER_FEATURE_COUNTS, N_FEATURES
from flagstream.features.merchants import MerchantActivity
from flagstream.scoring.challengers import Challenger, ShadowSet
from flagstream.scoring.feedback import check_decision, check_feedback, feedback_identity
from flagstream.scoring.feedback_wait import NEVER_ARRIVED, WAIT_FULL, Waiting, WaitingRoom
from flagstream.scoring.gate import Gate
from flagstream.scoring.handle import ModelHandle, format_version, model_from_state
from flagstream.scoring.label_ledger import LabelLedger
from flagstream.scoring.registry import CHAMPION, entry, version_key, version_record

#: Looks up the decision recorded for a transaction id (None when unknown).
DecisionLookup = Callable[[str], dict | None]
MAX_TIMELINE = 500


@dataclass
class LearnOutcome:
    """What one feedback batch did (``replayed``: skipped as learned before a restart)."""

    learned: int = 0
    frauds: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    activity: MerchantActivity = field(default_factory=MerchantActivity)
    labelled: list[tuple[dict, int, dict]] = field(default_factory=list)
    replayed: int = 0
    #: labels the ledger ignored as repeats of a transaction's effective label
    repeats: int = 0
    #: labels learned as replacements of a less trusted effective label
    replaced: int = 0
    #: labels put in the waiting room (no decision yet), refused because it was full,
    #: learned after waiting, and given up after waiting (:mod:`flagstream.scoring.feedback_wait`)
    waiting: int = 0
    full: int = 0
    waited_learned: int = 0
    gave_up: int = 0


class Learner:
    """Updates the champion (and shadow challengers) from labelled feedback.

    Each label is judged on its own (decoded, checked, joined to its decision, admitted by
    the ledger; a bad one is refused with its reason); the labels a batch admitted are then
    learned together, in order, through the models' batch learners.

    Parameters
    ----------
    handle
        The champion being trained.
    lookup
        Finds the decision recorded for a transaction id.
    retention_ms
        Feedback on decisions older than this (scoring time) is rejected.
    clock_ms
        Current time in epoch ms (injectable for backtests).
    shadow
        Challengers that learn the same labels (default: none).
    gate
        Compares them with the champion on each label (default: none).
    publish_each_batch
        Give the champion a new version after every batch that learned something
        (the backtest's way). The worker publishes on its own schedule instead.
    ledger
        Judges each label (one effective label per transaction, trust order, hourly
        budgets: :mod:`flagstream.scoring.label_ledger`). The worker always has one;
        without it (a backtest, whose labels it makes itself) every valid label is learned.
    waiting
        Where labels that came before their decision wait (the worker has one; see
        :mod:`flagstream.scoring.feedback_wait`). Without it they are ``unknown_transaction``.
    """

    def __init__(
        self,
        handle: ModelHandle,
        lookup: DecisionLookup,
        retention_ms: int = 35 * DAY_MS,
        clock_ms: Callable[[], int] | None = None,
        shadow: ShadowSet | None = None,
        gate: Gate | None = None,
        publish_each_batch: bool = True,
        ledger: LabelLedger | None = None,
        waiting: WaitingRoom | None = None,
    ) -> None:
        self.handle = handle
        self.lookup = lookup
        self.retention_ms = retention_ms
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.shadow = shadow if shadow is not None else ShadowSet()
        self.gate = gate
        self.publish_each_batch = publish_each_batch
        self.ledger = ledger
        self.waiting = waiting
        self.offsets: dict[int, int] = {}
        self.dirty = False
        self.labels_since_publish = 0
        #: champion versions in the order they were in use: [version, labels seen then]
        self.timeline: list[list] = []
        self.next_sequence = handle.sequence + 1
        #: ids of the candidates shadowed so far (None for a candidate record without one)
        self.adopted: list[str | None] = []

    # --- learning ---------------------------------------------------------------
    def seen(self, partition: int, offset: int) -> bool:
        """Whether the feedback at this offset was already learned."""
        return offset <= self.offsets.get(partition, -1)

    def advance(self, partition: int, offset: int) -> None:
        """Record that everything up to ``offset`` in ``partition`` has been handled."""
        self.offsets[partition] = max(offset, self.offsets.get(partition, -1))

    def learn(self, values: Sequence[bytes | None], offsets: Sequence[int] | None = None,
              partition: int | None = None) -> LearnOutcome:
        """Learn a batch of raw feedback values (from one partition when ``offsets`` are given).

        With ``offsets`` and ``partition``, values at offsets already learned are skipped
        (``replayed``) and the partition's offset advances; a label whose decision is not
        recorded yet waits in :attr:`waiting` when there is one (else it is
        ``unknown_transaction``). Rejection indices refer to ``values``.
        """
        out = LearnOutcome()
        merchants: list[str] = []
        days: list[int] = []
        now = self.clock_ms()
        for index, raw in enumerate(values):
            at = None if offsets is None or partition is None else (partition, offsets[index])
            if at is not None and self.seen(*at):
                out.replayed += 1
                continue
            self._judge(raw, index, at, now, out, merchants, days)
        if offsets is not None and partition is not None and len(offsets):
            self.advance(partition, max(offsets))
        return self._finish(out, merchants, days)

    def learn_waiting(self) -> tuple[LearnOutcome, list[Waiting]]:
        """Try again the waiting labels whose decision may be there now; give up those whose
        wait is over (``decision_never_arrived``). Rejection indices refer to the list
        returned beside the outcome (each with its record, partition and offset)."""
        out = LearnOutcome()
        if self.waiting is None:
            return out, []
        merchants: list[str] = []
        days: list[int] = []
        now = self.clock_ms()
        ready, expired = self.waiting.due(now, lambda tx: self._decision_or_none(tx) is not None)
        tried: list[Waiting] = []
        for w in ready:
            tried.append(w)
            self._judge(w.value, len(tried) - 1, (w.partition, w.offset), now, out,
                            merchants, days, may_wait=False)
        for w in expired:
            tried.append(w)
            out.rejections.append(Rejection(
                len(tried) - 1, NEVER_ARRIVED,
                f"no decision for {w.transaction_id!r} within {self.waiting.wait_ms / 1000:g} s"))
            out.gave_up += 1
        out.waited_learned = out.learned
        return self._finish(out, merchants, days), tried

    def _decision_or_none(self, transaction_id: str) -> dict | None:
        try:
            return self.lookup(transaction_id)
        except Exception:  # unreadable: _judge rejects it with the reason
            return {}

    def _judge(self, raw: bytes | None, index: int, at: tuple[int, int] | None, now: int,
               out: LearnOutcome, merchants: list[str], days: list[int],
               may_wait: bool = True) -> None:
        """Judge one label (see :meth:`learn`); what it did is added to ``out``, an admitted
        label to ``out.labelled`` (learned with the rest of the batch by :meth:`_finish`)."""
        try:
            feedback = decode_object(raw, 16_384, 8)
            transaction_id, label = check_feedback(feedback)
        except InvalidRecord as exc:
            out.rejections.append(Rejection(index, exc.reason, str(exc)))
            return
        try:
            decision = self.lookup(transaction_id)
        except Exception as exc:  # an unreadable stored decision: this label alone fails
            out.rejections.append(
                Rejection(index, "internal_error", f"decision lookup failed: {type(exc).__name__}")
            )
            return
        if decision is None:
            out.rejections.extend(self._no_decision(raw, index, transaction_id, at, now, out,
                                                    may_wait))
            return
        if isinstance(decision, dict) and decision.get("fallback") is True:
            out.rejections.append(Rejection(  # (the scoring API's, see the README)
                index, "fallback_decision", "decided by the API's fallback: nothing scored to learn from"))
            return
        try:
            check_decision(decision, N_FEATURES, EARLIER_FEATURE_COUNTS)
        except InvalidRecord as exc:
            out.rejections.append(Rejection(index, exc.reason, str(exc)))
            return
        if now - decision["scored_at_ms"] > self.retention_ms:
            out.rejections.append(
                Rejection(index, "expired_transaction", "scored longer ago than retention")
            )
            return
        verdict = "learn"
        if self.ledger is not None:
            try:
                source, reviewer = feedback_identity(feedback)
                verdict = self.ledger.admit(transaction_id, label, source, reviewer, decision,
                                            now, at)
            except InvalidRecord as exc:
                out.rejections.append(Rejection(index, exc.reason, str(exc)))
                return
            if verdict == "repeat":
                out.repeats += 1
                return
            out.replaced += verdict == "replace"
        out.learned += 1
        out.frauds += label
        out.labelled.append((decision, label, feedback))
        if label and verdict != "relearn":  # a relearned label's activity was delivered
            merchants.append(decision["merchant_id"])
            days.append(decision["event_time_ms"] // DAY_MS)

    def _no_decision(self, raw: bytes | None, index: int, transaction_id: str,
                     at: tuple[int, int] | None, now: int, out: LearnOutcome,
                     may_wait: bool) -> list[Rejection]:
        """A label without a recorded decision: expired (its decision was pruned after the
        retention, its label row is still kept), waiting, or refused."""
        if self.ledger is not None and self.ledger.memory.get(transaction_id) is not None:
            return [Rejection(index, "expired_transaction",
                              "its decision was pruned: scored longer ago than retention")]
        if self.waiting is None or at is None or not may_wait:
            return [Rejection(index, "unknown_transaction", f"no decision for {transaction_id!r}")]
        if self.waiting.hold(raw, transaction_id, at[0], at[1], now):
            out.waiting += 1
            return []
        out.full += 1
        return [Rejection(index, WAIT_FULL, f"{self.waiting.limit} labels already wait for "
                                            f"their decisions; no decision for {transaction_id!r}")]

    def _learn_labelled(self, labelled: Sequence[tuple[dict, int, dict]]) -> None:
        """Learn the labels a batch admitted, in order, as arrays: the champion and every
        challenger through their batch learners, then the gate.

        The same as learning each label in turn (champion, challengers, gate) because none of
        them reads another's state, and each sees the labels in the order they were admitted
        (``tests/test_learner_batch.py`` checks it against :meth:`_learn_labelled_reference`).
        """
        if not labelled:
            return
        features = np.asarray([d["features"] for d, _, _ in labelled], np.float64)
        labels = np.asarray([label for _, label, _ in labelled], np.int64)
        self.handle.model.learn_many(features, labels)
        self.shadow.learn_many(features, labels)
        if self.gate is not None:
            self.gate.observe_many(((d, label) for d, label, _ in labelled),
                                   {c.lineage for c in self.shadow})

    def _learn_labelled_reference(self, labelled: Sequence[tuple[dict, int, dict]]) -> None:
        """:meth:`_learn_labelled` one label at a time (the per-label path, for tests)."""
        for decision, label, _ in labelled:
            features = np.asarray(decision["features"], np.float64)
            self.handle.model.learn_one(features, label)
            self.shadow.learn_one(features, label)
            if self.gate is not None:
                self.gate.observe(decision, label, {c.lineage for c in self.shadow})

    def _finish(self, out: LearnOutcome, merchants: list[str], days: list[int]) -> LearnOutcome:
        self._learn_labelled(out.labelled)
        if merchants:
            out.activity = MerchantActivity(
                merchants, np.asarray(days, np.int64), np.zeros(len(days)), np.ones(len(days))
            )
        if out.learned:
            self.dirty = True
            self.labels_since_publish += out.learned
            if self.publish_each_batch:
                self.handle.publish()
        return out

    # --- versions -----------------------------------------------------------------
    def allocate(self) -> int:
        """The next version sequence (one counter for every lineage)."""
        sequence = self.next_sequence
        self.next_sequence += 1
        return sequence

    def _remember(self, version: str) -> None:
        self.timeline.append([version, self.gate.labels_seen if self.gate is not None else 0])
        del self.timeline[:-MAX_TIMELINE]

    def publish_challenger(self, c: Challenger, reason: str, history: Sequence[dict] = ()) -> dict:
        """A new version record for a challenger's current state."""
        sequence = self.allocate()
        report = self.gate.report([c.lineage]).get(c.lineage, {}) if self.gate else {}
        record = version_record(
            format_version(c.lineage, sequence), sequence, c.model.to_state(), "shadow", reason,
            "learner", parent=c.version, epoch=self.handle.epoch, seat=self.handle.seat,
            gate=report, history=history,
        )
        c.sequence, c.dirty = sequence, False
        return record

    def publication(self) -> list[tuple[bytes, dict]]:
        """Version records for everything learned since it was last published.

        The champion's record is written twice: under its version key and under
        ``b"champion"``, which scorers follow.
        """
        writes: list[tuple[bytes, dict]] = []
        h = self.handle
        if self.dirty:
            sequence = self.allocate()
            version = format_version(h.name, sequence)
            report = self.gate.report([])["champion"] if self.gate else {}
            record = version_record(
                version, sequence, h.model.to_state(), "champion",
                f"learned {self.labels_since_publish} labels", "learner",
                parent=h.version if h.sequence else None, epoch=h.epoch, seat=h.seat, gate=report,
            )
            h.sequence = sequence
            self.dirty, self.labels_since_publish = False, 0
            self._remember(version)
            writes += [(version_key(version), record), (CHAMPION, record)]
        for c in self.shadow:
            if c.dirty:
                record = self.publish_challenger(c, "learned in shadow")
                writes.append((version_key(record["version"]), record))
        return writes

    def follows(self, seat: Mapping[str, Any]) -> bool:
        """Whether ``seat`` is a change this learner has not applied yet."""
        h = self.handle
        return seat["epoch"] > h.epoch or (seat["epoch"] == h.epoch and seat["id"] != h.seat)

    def adopt_seat(self, seat: Mapping[str, Any]) -> bool:
        """Apply a change of champion (a promotion or a rollback), wherever it was decided.

        After a promotion the old champion's lineage keeps learning as a challenger;
        after a rollback it is retired. The new champion's lineage stops being one.
        """
        if not self.follows(seat):
            return False
        h = self.handle
        if h.name != seat["lineage"] and seat["action"] == "promote":
            self.shadow.add(Challenger(h.name, h.model, h.sequence, origin="demoted",
                                       dirty=self.dirty))
        self.shadow.remove(seat["lineage"])
        h.adopt(model_from_state(seat["state"]), seat["lineage"], seat["sequence"],
                seat["epoch"], seat["id"])
        self.dirty, self.labels_since_publish = False, 0
        self.next_sequence = max(self.next_sequence, seat["sequence"] + 1)
        self._remember(seat["version"])
        if self.gate is not None:
            self.gate.reset_seat(keep_drift=seat["action"] == "promote")
        return True

    def adopt_candidate(self, candidate: Mapping[str, Any]) -> dict | None:
        """Shadow a submitted model; its first version record, or None if refused."""
        self.adopted = [*self.adopted, candidate.get("id")][-200:]
        lineage = candidate["lineage"]
        if lineage == self.handle.name or lineage in self.shadow:
            return None
        model = model_from_state(candidate["state"])
        c = Challenger(lineage, model, cutoff=float(candidate.get("cutoff", 0.0)), origin="candidate")
        self.shadow.add(c)
        if self.gate is not None:
            self.gate.forget(lineage)
        submitted = entry("candidate", candidate["reason"], candidate["by"],
                          candidate["submitted_at_ms"])
        return self.publish_challenger(c, "shadow scoring started", history=[submitted])

    # --- state ----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: models, offsets, versions (JSON values)."""
        h = self.handle
        return {
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "champion": {"lineage": h.name, "sequence": h.sequence, "epoch": h.epoch,
                         "seat": h.seat, "dirty": self.dirty,
                         "labels_since_publish": self.labels_since_publish,
                         "state": h.model.to_state()},
            "challengers": self.shadow.to_state(),
            "gate": self.gate.to_state() if self.gate is not None else {},
            "timeline": self.timeline[-MAX_TIMELINE:],
            "next_sequence": self.next_sequence,
            "adopted": self.adopted,
            "waiting": self.waiting.to_state(self.clock_ms()) if self.waiting is not None else {},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`to_state` output."""
        champion = state["champion"]
        self.handle.adopt(model_from_state(champion["state"]), champion["lineage"],
                          int(champion["sequence"]), int(champion["epoch"]), champion["seat"])
        self.dirty = bool(champion["dirty"])
        self.labels_since_publish = int(champion.get("labels_since_publish", 0))
        self.offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        self.shadow.challengers = ShadowSet.from_state(state["challengers"]).challengers
        if self.gate is not None:
            self.gate.restore(state.get("gate", {}))
        self.timeline = [list(t) for t in state.get("timeline", [])]
        self.next_sequence = max(self.next_sequence, int(state["next_sequence"]))
        self.adopted = list(state.get("adopted", []))
        if self.waiting is not None:  # positions: the records are read again (LearnerRuntime.catch_up)
            self.waiting.restore(state.get("waiting", {}), self.clock_ms())
