"""The review queue: flagged transactions waiting for a person, with claims that expire.

Everything here is in memory and broker-free; the review agent feeds it, the web
views read and change it. Items are ordered by score (highest first) and then by
age (oldest first); the queue keeps at most ``max_items``, dropping the lowest
score (the oldest among equal scores) when full.

>>> q = ReviewQueue(max_items=2, claim_seconds=120, clock=lambda: 1000.0)
>>> a = q.add({"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1", "score": 0.7})
>>> b = q.add({"transaction_id": "t-2", "account_id": "c-2", "merchant_id": "m-1", "score": 0.9})
>>> [i.transaction_id for i in q.page(0, 10)[1]]
['t-2', 't-1']
>>> q.claim(b.item_id, "ana").reviewer
'ana'
>>> q.claim(b.item_id, "ben")
Traceback (most recent call last):
...
flagstream.sinks.review.queue.ClaimConflict: claimed by 'ana' for another 120 s
>>> q.take(b.item_id, "ana").transaction_id, len(q)
('t-2', 1)
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flagstream.cards import mask_card_numbers

#: How a page of the queue can be ordered.
SORTS = ("score", "age")


class ReviewError(Exception):
    """Root of the review queue's errors."""


class NotQueued(ReviewError, KeyError):
    """The item is not (or no longer) in the queue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not in the queue"


class AlreadyLabelled(NotQueued):
    """The item left the queue because its transaction was labelled elsewhere meanwhile."""


class ClaimConflict(ReviewError):
    """Another reviewer holds a live claim on the item."""

    def __init__(self, claim: Claim, now: float) -> None:
        self.claim = claim
        self.remaining = max(0.0, claim.expires_at - now)
        super().__init__(f"claimed by {claim.reviewer!r} for another {self.remaining:.0f} s")


@dataclass
class Claim:
    """One reviewer working an item until ``expires_at`` (epoch seconds)."""

    reviewer: str
    expires_at: float


@dataclass
class ReviewItem:
    """A flagged transaction in the queue; ``record`` is the masked record for display."""

    item_id: str
    transaction_id: str
    account_id: str
    merchant_id: str
    score: float
    flagged_at: float
    seq: int
    record: dict
    partition: int | None = None
    claim: Claim | None = None

    def claimed_by(self, now: float) -> str | None:
        """The reviewer holding a live claim, if any."""
        if self.claim is not None and self.claim.expires_at > now:
            return self.claim.reviewer
        return None

    def summary(self, now: float) -> dict:
        """The fields a queue row shows."""
        r = self.record
        claim = self.claimed_by(now)
        return {
            "id": self.item_id,
            "transaction_id": r.get("transaction_id"),
            "account_id": r.get("account_id"),
            "merchant_id": r.get("merchant_id"),
            "amount": r.get("amount"),
            "currency": r.get("currency"),
            "score": self.score,
            "model_version": r.get("model_version"),
            "event_time": r.get("event_time"),
            "age_s": round(max(0.0, now - self.flagged_at), 1),
            "reason": (r.get("reasons") or [{}])[0].get("text", ""),
            "claimed_by": claim,
            "claim_expires_in": round(self.claim.expires_at - now) if claim and self.claim else None,
        }


def item_id_for(transaction_id: str) -> str:
    """An opaque, URL-safe id for a transaction (a card number never reaches a URL).

    >>> item_id_for("t-1") == item_id_for("t-1"), len(item_id_for("t-1"))
    (True, 16)
    """
    return hashlib.blake2b(transaction_id.encode(), digest_size=8).hexdigest()


@dataclass
class ReviewQueue:
    """Bounded in-memory queue of flagged transactions with expiring claims.

    Parameters
    ----------
    max_items
        The most items held; beyond it the lowest score (oldest first) is dropped.
    claim_seconds
        How long a claim lasts unless renewed.
    remember_decided
        How many decided transaction ids are remembered, so a re-delivered record
        does not come back after someone decided it (and how many items labelled
        elsewhere keep the answer given to whoever still had them open).
    clock
        Epoch seconds; injectable for tests.
    """

    max_items: int = 10_000
    claim_seconds: float = 120.0
    remember_decided: int = 100_000
    clock: Callable[[], float] = time.time
    dropped: int = 0
    _items: dict[str, ReviewItem] = field(default_factory=dict, repr=False)
    _heap: list[tuple[float, int, str]] = field(default_factory=list, repr=False)
    _decided: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)
    _elsewhere: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)
    _seq: int = field(default=0, repr=False)
    _version: int = field(default=0, repr=False)
    _sorted: dict[str, tuple[int, list[ReviewItem]]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def add(self, record: dict, partition: int | None = None) -> ReviewItem | None:
        """Queue a flagged record; None when it is a duplicate, already decided, or too low."""
        transaction_id = str(record.get("transaction_id", ""))
        item_id = item_id_for(transaction_id)
        if not transaction_id or item_id in self._items or transaction_id in self._decided:
            return None
        score = float(record.get("score", 0.0))
        self._seq += 1
        if len(self._items) >= self.max_items and not self._make_room(score):
            self.dropped += 1
            return None
        scored_ms = record.get("scored_at_ms")
        flagged_at = scored_ms / 1000.0 if isinstance(scored_ms, int | float) else self.clock()
        item = ReviewItem(
            item_id, transaction_id, str(record.get("account_id", "")),
            str(record.get("merchant_id", "")), score, flagged_at, self._seq,
            mask_card_numbers(record), partition,
        )
        self._items[item_id] = item
        heapq.heappush(self._heap, (score, item.seq, item_id))
        self._changed()
        return item

    def get(self, item_id: str) -> ReviewItem | None:
        return self._items.get(item_id)

    def page(self, offset: int = 0, limit: int = 50, sort: str = "score") -> tuple[int, list[ReviewItem]]:
        """``(total, items)`` for one page, by score then age (``sort="score"``) or by age."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {SORTS}")
        version, ordered = self._sorted.get(sort, (-1, []))
        if version != self._version:
            if sort == "score":
                ordered = sorted(self._items.values(), key=lambda i: (-i.score, i.flagged_at, i.seq))
            else:
                ordered = sorted(self._items.values(), key=lambda i: (i.flagged_at, i.seq))
            self._sorted[sort] = (self._version, ordered)
        offset = max(0, offset)
        return len(ordered), ordered[offset : offset + max(0, limit)]

    def claim(self, item_id: str, reviewer: str) -> Claim:
        """Claim (or renew a claim on) an item; :class:`ClaimConflict` if someone else holds it."""
        item = self._require(item_id)
        now = self.clock()
        holder = item.claimed_by(now)
        if holder is not None and holder != reviewer:
            raise ClaimConflict(item.claim, now)  # type: ignore[arg-type]
        item.claim = Claim(reviewer, now + self.claim_seconds)
        return item.claim

    def release(self, item_id: str, reviewer: str) -> bool:
        """Give a claim back; False if ``reviewer`` did not hold it."""
        item = self._require(item_id)
        if item.claimed_by(self.clock()) != reviewer:
            return False
        item.claim = None
        return True

    def take(self, item_id: str, reviewer: str) -> ReviewItem:
        """Remove an item to decide it: allowed unless another reviewer holds a live claim."""
        item = self._require(item_id)
        now = self.clock()
        holder = item.claimed_by(now)
        if holder is not None and holder != reviewer:
            raise ClaimConflict(item.claim, now)  # type: ignore[arg-type]
        del self._items[item_id]
        self._remember(item.transaction_id)
        self._changed()
        return item

    def put_back(self, item: ReviewItem) -> None:
        """Undo :meth:`take` (the decision could not be published), unless the transaction
        was labelled elsewhere meanwhile."""
        if item.item_id in self._elsewhere:
            return
        self._decided.pop(item.transaction_id, None)
        if item.item_id not in self._items:
            self._items[item.item_id] = item
            heapq.heappush(self._heap, (item.score, item.seq, item.item_id))
            self._changed()

    def mark_decided(self, transaction_ids: Iterable[str]) -> int:
        """Forget items labelled elsewhere and never queue them again; returns how many left."""
        removed = 0
        for tx in transaction_ids:
            self._remember(tx)
            if self._items.pop(item_id_for(tx), None) is not None:
                removed += 1
        if removed:
            self._changed()
        return removed

    def labelled_elsewhere(self, transaction_id: str, by: str) -> ReviewItem | None:
        """A label for ``transaction_id`` came from elsewhere (``by`` says who): the item
        leaves the queue, claimed or not, and is never queued again; whoever still has it
        open is told it was labelled ``by``. Returns the item removed, if it was queued.

        >>> q = ReviewQueue(clock=lambda: 0.0)
        >>> item = q.add({"transaction_id": "t-1", "score": 0.9})
        >>> _ = q.claim(item.item_id, "ana")
        >>> q.labelled_elsewhere("t-1", "fraud by ben (review)").transaction_id, len(q)
        ('t-1', 0)
        >>> q.take(item.item_id, "ana")
        Traceback (most recent call last):
        ...
        flagstream.sinks.review.queue.AlreadyLabelled: already labelled fraud by ben (review)
        """
        self._remember(transaction_id)
        item_id = item_id_for(transaction_id)
        self._elsewhere[item_id] = by  # (also for an item being decided here: no put_back)
        self._elsewhere.move_to_end(item_id)
        while len(self._elsewhere) > self.remember_decided:
            self._elsewhere.popitem(last=False)
        item = self._items.pop(item_id, None)
        if item is not None:
            self._changed()
        return item

    def gone_because(self, item_id: str) -> str | None:
        """Why an item left the queue, when it was labelled elsewhere (None otherwise)."""
        by = self._elsewhere.get(item_id)
        return None if by is None else f"already labelled {by}"

    def is_decided(self, transaction_id: str) -> bool:
        return transaction_id in self._decided

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Drop the items read from partitions this worker no longer owns."""
        gone = set(partitions)
        doomed = [k for k, i in self._items.items() if i.partition in gone]
        for key in doomed:
            del self._items[key]
        if doomed:
            self._changed()
        return len(doomed)

    def stats(self) -> dict:
        """Depth, live claims and the age of the oldest item, in seconds."""
        now = self.clock()
        oldest = min((i.flagged_at for i in self._items.values()), default=now)
        claimed = sum(1 for i in self._items.values() if i.claimed_by(now))
        return {"depth": len(self._items), "claimed": claimed, "oldest_age_s": max(0.0, now - oldest),
                "dropped": self.dropped}

    def _require(self, item_id: str) -> ReviewItem:
        item = self._items.get(item_id)
        if item is None:
            reason = self.gone_because(item_id)
            if reason is not None:
                raise AlreadyLabelled(reason)
            raise NotQueued(f"{item_id} is not in the queue")
        return item

    def _make_room(self, score: float) -> bool:
        """Evict the lowest (score, oldest) item if ``score`` ranks at least as high."""
        while self._heap:
            low_score, seq, item_id = self._heap[0]
            live = self._items.get(item_id)
            if live is None or live.seq != seq:
                heapq.heappop(self._heap)  # stale: decided or dropped earlier
                continue
            if score < low_score:
                return False
            heapq.heappop(self._heap)
            del self._items[item_id]
            self.dropped += 1
            return True
        return True

    def _remember(self, transaction_id: str) -> None:
        self._decided[transaction_id] = None
        self._decided.move_to_end(transaction_id)
        while len(self._decided) > self.remember_decided:
            self._decided.popitem(last=False)

    def _changed(self) -> None:
        self._version += 1
        if len(self._heap) > 2 * len(self._items) + 1_024:  # drop stale heap entries
            self._heap = [(i.score, i.seq, k) for k, i in self._items.items()]
            heapq.heapify(self._heap)
