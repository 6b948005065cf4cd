"""Small recent histories a reviewer sees next to an item: the card's and the merchant's.

Fed from the review records this worker reads and from the labels it publishes (or
finds on the feedback topic when it rebuilds after a restart). Bounded both ways:
``per_key`` entries per card or merchant, ``max_keys`` cards or merchants (least
recently touched forgotten first).

>>> h = RecentHistory(per_key=2)
>>> for i in range(3):
...     h.add("c-1", {"transaction_id": f"t-{i}", "amount": 10.0 * i})
>>> [e["transaction_id"] for e in h.get("c-1")]
['t-2', 't-1']
>>> h.label("c-1", "t-2", "fraud")
True
>>> h.get("c-1")[0]["label"]
'fraud'
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from flagstream.cards import mask_card_numbers


@dataclass
class RecentHistory:
    """Newest-first recent entries per key, bounded in entries and in keys."""

    per_key: int = 20
    max_keys: int = 50_000
    _entries: OrderedDict[str, deque[dict]] = field(default_factory=OrderedDict, repr=False)

    def add(self, key: str, entry: dict) -> None:
        """Record an entry (masked) under ``key``; an entry for the same transaction is replaced."""
        entries = self._entries.get(key)
        if entries is None:
            entries = self._entries[key] = deque(maxlen=self.per_key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            tx = entry.get("transaction_id")
            for old in list(entries):
                if old.get("transaction_id") == tx:
                    entries.remove(old)
                    entry = {**old, **entry}
        entries.append(mask_card_numbers(entry))

    def label(self, key: str, transaction_id: str, label: str) -> bool:
        """Attach a label to a known entry; False if the entry is not held."""
        masked = mask_card_numbers(transaction_id)
        for entry in self._entries.get(key, ()):
            if entry.get("transaction_id") == masked:
                entry["label"] = label
                return True
        return False

    def get(self, key: str, limit: int | None = None) -> list[dict]:
        """Entries for ``key``, newest first by ``event_time_ms`` when known (copies)."""
        entries = list(reversed(self._entries.get(key, ())))
        entries.sort(key=lambda e: -e["event_time_ms"] if isinstance(e.get("event_time_ms"), int) else 0)
        return [dict(e) for e in entries[:limit]]

    def __len__(self) -> int:
        return len(self._entries)


def transaction_entry(record: dict) -> dict:
    """What a card's history shows of one flagged transaction."""
    return {
        "transaction_id": record.get("transaction_id"),
        "merchant_id": record.get("merchant_id"),
        "amount": record.get("amount"),
        "currency": record.get("currency"),
        "event_time": record.get("event_time"),
        "event_time_ms": record.get("event_time_ms"),
        "score": record.get("score"),
        "decision": record.get("decision"),
    }


def fraud_entry(record: dict, feedback: dict) -> dict:
    """What a merchant's history shows of one transaction labelled fraud."""
    return {
        "transaction_id": record.get("transaction_id"),
        "account_id": record.get("account_id"),
        "amount": record.get("amount"),
        "currency": record.get("currency"),
        "event_time": record.get("event_time"),
        "event_time_ms": record.get("event_time_ms"),
        "source": feedback.get("source"),
        "decided_at": feedback.get("decided_at"),
    }
