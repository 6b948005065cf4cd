"""The review workflow without the web or Kafka: ingest flags, show items, publish decisions.

A decision takes the item out of the queue before the label is published (so two
reviewers can never both decide it) and puts it back if publishing fails.

>>> import asyncio
>>> from prometheus_client import CollectorRegistry
>>> sent = []
>>> async def publish(key, value):
...     sent.append((key, value))
>>> svc = ReviewService(publish, CollectorRegistry(), clock=lambda: 0.0)
>>> item = svc.ingest({"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1",
...                    "score": 0.93, "decision": "review"})
>>> svc.queue.claim(item.item_id, "ana").reviewer
'ana'
>>> fb = asyncio.run(svc.decide(item.item_id, "ana", "legit", note="known customer"))
>>> fb["label"], fb["source"], sent[0][0], len(svc.queue), svc.overturn_rate()
('legit', 'review', b't-1', 0, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from flagstream.cards import card_numbers, mask_text
from flagstream.codec import deeper_than, dumps
from flagstream.scoring.feedback import FEEDBACK_SOURCES
from flagstream.sinks.review.history import RecentHistory, fraud_entry, transaction_entry
from flagstream.sinks.review.queue import ReviewItem, ReviewQueue, item_id_for

#: The deepest nesting a flag may have (the scorer writes at most 3 levels).
MAX_FLAG_NESTING = 8

#: Sends one feedback record: (key, value) → awaited until the broker has it.
Publisher = Callable[[bytes, bytes], Awaitable[None]]

LABELS = ("fraud", "legit")
MAX_NOTE = 1_000


class InvalidDecision(ValueError):
    """A decision with an unknown label or an unusable reviewer name."""


class ReviewMetrics:
    """The review page's Prometheus metrics, on the worker's registry."""

    def __init__(self, registry: CollectorRegistry, queue: ReviewQueue) -> None:
        r = registry
        self.depth = Gauge("flagstream_review_queue_depth", "Flagged items waiting for review",
                           registry=r)
        self.depth.set_function(lambda: len(queue))
        self.oldest = Gauge("flagstream_review_oldest_age_seconds",
                            "Age of the oldest item in the review queue", registry=r)
        self.oldest.set_function(lambda: queue.stats()["oldest_age_s"])
        self.decisions = Counter("flagstream_review_decisions", "Review decisions published",
                                 ["reviewer", "label"], registry=r)
        self.overturns = Counter("flagstream_review_overturns",
                                 "Review labels that disagree with the model's flag", registry=r)
        self.overturn_rate = Gauge("flagstream_review_overturn_rate",
                                   "Share of review labels that disagree with the model's flag",
                                   registry=r)
        self.ingested = Counter("flagstream_review_ingested", "Flagged records read into the queue",
                                ["outcome"], registry=r)
        self.claims = Counter("flagstream_review_claims", "Claim attempts", ["outcome"], registry=r)
        self.labelled_elsewhere = Counter(
            "flagstream_review_labelled_elsewhere",
            "Queued items removed because their transaction was labelled elsewhere "
            "(by source; claimed: someone was working on it)",
            ["source", "claimed"], registry=r)


def model_flagged(record: dict) -> bool:
    """Did the model call this transaction suspicious (review or decline)?"""
    decision = record.get("decision")
    if decision is not None:
        return decision != "approve"
    return float(record.get("score", 0.0)) >= float(record.get("threshold", 0.5))


def clean_reviewer(name: object) -> str:
    """A reviewer name fit for a label and a metric: 1–64 printable characters.

    >>> clean_reviewer("  Ana Ruiz "), clean_reviewer("a\\nb")
    ('Ana Ruiz', 'ab')
    """
    text = "".join(ch for ch in str(name or "") if ch.isprintable()).strip()[:64]
    if not text:
        raise InvalidDecision("a reviewer name is required")
    return mask_text(text)


class ReviewService:
    """Queue, histories, metrics and the decision workflow of one worker.

    Parameters
    ----------
    publish
        Sends a feedback record (key, value) and returns once the broker has it.
    registry
        Where the review metrics are registered.
    queue
        The queue to use; a default :class:`ReviewQueue` otherwise.
    clock
        Epoch seconds, for ``decided_at``.
    """

    def __init__(
        self,
        publish: Publisher,
        registry: CollectorRegistry,
        queue: ReviewQueue | None = None,
        clock: Callable[[], float] = time.time,
        decision_of_record: Callable[[str], dict | None] | None = None,
    ) -> None:
        self.publish = publish
        self.clock = clock
        #: the decision recorded for a transaction id (the learner's), None: unknown yet
        self.decision_of_record = decision_of_record
        self.queue = queue or ReviewQueue(clock=clock)
        self.accounts = RecentHistory(per_key=20)
        self.merchants = RecentHistory(per_key=20)
        self.metrics = ReviewMetrics(registry, self.queue)
        self.decided = 0
        self.overturned = 0
        self.by_reviewer: dict[str, int] = {}

    def ingest(self, record: object, partition: int | None = None) -> ReviewItem | None:
        """Queue a flagged record and remember it in the card's history."""
        if not is_flag(record):
            self.metrics.ingested.labels(outcome="invalid").inc()
            return None
        assert isinstance(record, dict)
        if not valid_reasons(record.get("reasons")):
            record = {**record, "reasons": []}
        if self.queue.is_decided(record["transaction_id"]):
            self.metrics.ingested.labels(outcome="decided").inc()
            return None
        if self.answered_by_fallback(record["transaction_id"]):
            # the scoring API answered before the worker: its fallback is the decision of
            # record, and a label of it would be refused (nothing scored to learn from)
            self.metrics.ingested.labels(outcome="fallback").inc()
            return None
        account = str(record.get("account_id", ""))
        if account:
            self.accounts.add(account, transaction_entry(record))
        item = self.queue.add(record, partition)
        self.metrics.ingested.labels(outcome="queued" if item else "skipped").inc()
        return item

    def answered_by_fallback(self, transaction_id: str) -> bool:
        """Is the transaction's decision of record the scoring API's fallback? (A lookup that
        fails counts as no: the label is refused later with its reason if it is.)"""
        if self.decision_of_record is None:
            return False
        try:
            recorded = self.decision_of_record(transaction_id)
        except Exception:  # an unreadable row: the learner refuses its label with the reason
            return False
        return isinstance(recorded, dict) and recorded.get("fallback") is True

    def labelled_elsewhere(self, record: dict | None, feedback: dict) -> bool:
        """A label that did not come from this page (another tool, a chargeback, another
        worker's page, found at a rebuild or handed over live by the learner): the item
        leaves the queue, claimed or not, and the histories learn the label.

        ``record`` is the flag when the caller has it (else the queued item's). Returns
        whether an item left the queue.

        >>> from prometheus_client import CollectorRegistry
        >>> async def publish(key, value): pass
        >>> svc = ReviewService(publish, CollectorRegistry(), clock=lambda: 0.0)
        >>> item = svc.ingest({"transaction_id": "t-1", "account_id": "c-1", "score": 0.9})
        >>> svc.labelled_elsewhere(None, {"transaction_id": "t-1", "label": "fraud",
        ...                               "source": "chargeback"}), len(svc.queue)
        (True, 0)
        >>> svc.queue.gone_because(item.item_id)
        'already labelled fraud (chargeback)'
        """
        tx = feedback.get("transaction_id")
        label = feedback.get("label")
        if not isinstance(tx, str) or label not in LABELS:
            return False
        source = _name(feedback.get("source", "review")) or "unknown"
        reviewer = _name(feedback.get("reviewer"))
        by = f"{label} by {reviewer} ({source})" if reviewer else f"{label} ({source})"
        claimed = self.queue.get(item_id_for(tx))
        was_claimed = claimed is not None and claimed.claimed_by(self.clock()) is not None
        item = self.queue.labelled_elsewhere(tx, by)
        if item is not None:
            self.metrics.labelled_elsewhere.labels(
                source=source if source in FEEDBACK_SOURCES else "other",
                claimed="yes" if was_claimed else "no").inc()
            record = record if record is not None else item.record
        if record is not None:
            account, merchant = str(record.get("account_id", "")), str(record.get("merchant_id", ""))
            self._remember_label(account, merchant, record, tx, label, feedback)
        return item is not None

    def detail(self, item_id: str) -> dict | None:
        """Everything the detail view shows, or None if the item left the queue."""
        item = self.queue.get(item_id)
        if item is None:
            return None
        now = self.clock()
        account = [e for e in self.accounts.get(item.account_id, 11)
                   if e.get("transaction_id") != item.record.get("transaction_id")][:10]
        return {
            **item.summary(now),
            "threshold": item.record.get("threshold"),
            "decision": item.record.get("decision"),
            "reasons": item.record.get("reasons") or [],
            "features": item.record.get("features") or {},
            "channel": item.record.get("channel"),
            "country": item.record.get("country"),
            "account_history": account,
            "merchant_frauds": self.merchants.get(item.merchant_id, 10),
        }

    async def decide(self, item_id: str, reviewer: str, label: str, note: str = "") -> dict:
        """Publish a reviewer's label; the item leaves the queue for everyone.

        Raises :class:`~flagstream.sinks.review.queue.NotQueued`,
        :class:`~flagstream.sinks.review.queue.ClaimConflict` or :class:`InvalidDecision`.
        """
        if label not in LABELS:
            raise InvalidDecision(f"label must be one of {LABELS}")
        reviewer = clean_reviewer(reviewer)
        note = mask_text(str(note or "").strip())[:MAX_NOTE]
        item = self.queue.take(item_id, reviewer)
        feedback = {
            "transaction_id": item.transaction_id,
            "label": label,
            "source": "review",
            "reviewer": reviewer,
            "note": note,
            "decided_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        try:
            await self.publish(item.transaction_id.encode(), dumps(feedback))
        except BaseException:
            self.queue.put_back(item)
            raise
        self.decided += 1
        self.by_reviewer[reviewer] = self.by_reviewer.get(reviewer, 0) + 1
        flagged = model_flagged(item.record)
        if (label == "fraud") != flagged:
            self.overturned += 1
            self.metrics.overturns.inc()
        self.metrics.decisions.labels(reviewer=reviewer, label=label).inc()
        self.metrics.overturn_rate.set(self.overturn_rate())
        self._remember_label(item.account_id, item.merchant_id, item.record, item.transaction_id,
                             label, feedback)
        return {**feedback, "transaction_id": item.record.get("transaction_id")}

    def overturn_rate(self) -> float:
        """Share of this worker's review labels that disagreed with the model's flag."""
        return self.overturned / self.decided if self.decided else 0.0

    def _remember_label(
        self, account: str, merchant: str, record: dict, tx: str, label: str, feedback: dict
    ) -> None:
        if account and not self.accounts.label(account, tx, label):
            self.accounts.add(account, {**transaction_entry(record), "label": label})
        if label == "fraud" and merchant:
            self.merchants.add(merchant, fraud_entry(record, feedback))


def _name(value: object) -> str:
    """A reviewer or source name from a feedback record, fit to show ("" when unusable)."""
    try:
        return clean_reviewer(value) if isinstance(value, str) else ""
    except InvalidDecision:
        return ""


def is_flag(record: object) -> bool:
    """Whether a record from the ``review`` topic can be queued: a flat-enough object with
    a transaction id, string account and merchant ids (when present), no card number in
    any of them, and a score in [0, 1].

    >>> is_flag({"transaction_id": "t-1", "score": 0.9}), is_flag({"transaction_id": "t-1", "score": "x"})
    (True, False)
    >>> is_flag({"transaction_id": "t-1", "account_id": "4111 1111 1111 1111", "score": 0.9})
    False
    """
    if not isinstance(record, dict) or deeper_than(record, MAX_FLAG_NESTING):
        return False
    tx, score = record.get("transaction_id"), record.get("score")
    if not isinstance(tx, str) or not 0 < len(tx) <= 128:
        return False
    if not isinstance(score, int | float) or isinstance(score, bool) or not 0.0 <= score <= 1.0:
        return False  # (NaN fails the comparison too)
    ids = [tx, record.get("account_id", ""), record.get("merchant_id", "")]
    # (ids are kept unmasked to join a label to its decision: one carrying a card number is
    # no flag the scorer wrote, and is refused like the scorer refuses its transaction)
    return all(isinstance(i, str) for i in ids) and not card_numbers("\n".join(ids))


def valid_reasons(reasons: object) -> bool:
    """Reasons as the scorer writes them: a list of objects with a ``text`` string."""
    return isinstance(reasons, list) and all(
        isinstance(r, dict) and isinstance(r.get("text", ""), str) for r in reasons)
