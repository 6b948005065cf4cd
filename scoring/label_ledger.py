"""Which labels the learner may learn: one effective label per transaction, bounded per source.

Feedback comes from a topic anyone with write access can fill, so the learner keeps a
ledger of the labels it has learned and judges each new one, in this order:

1. **What a source may say.** A chargeback reports fraud; an ``auto`` label (nothing
   came back within the chargeback window) reports legit; a review may say either.
   Anything else is ``invalid_label``.
2. **Flagged or not.** A transaction the model did not flag (decision ``approve``) may be
   labelled only by the sources that report on approved traffic: ``chargeback`` (a
   missed fraud) and ``auto`` (an approval nobody disputed). A review label on it is
   ``not_flagged``: reviewers only ever see flagged transactions.
3. **One effective label.** The first admitted label of a transaction is its effective
   label. The same label again (from any source) is a ``repeat``: counted, not learned.
   A different label replaces it only when it comes from a more trusted source
   (:data:`TRUST`: chargeback > review > auto); otherwise it is ``conflicting_label``.
4. **Budgets.** Each ``(source, reviewer)`` and each source may have at most so many
   labels learned per hour (clock hour of the learner's clock); past that,
   ``rate_limited``. Repeats and replays cost nothing.

A replacement is learned once, on top of what the model already learned: an online
model cannot take back one step exactly, so the first label's update stays and the
replacement is one more update the other way (see the README, "Honest feedback").
With the rules above a replacement always turns legit into fraud (chargebacks only say
fraud, auto labels only legit), so a merchant's fraud count only ever goes up by one.

The ledger remembers, per transaction, the feedback records (partition, offset) it
learned; a learner restored from an older snapshot that reads one of them again learns
it again (``relearn``) instead of calling it a repeat.

>>> ledger = LabelLedger(DictMemory(), HourlyBudget(per_reviewer=2, per_source=10))
>>> flagged = {"decision": "review"}
>>> ledger.admit("t-1", 1, "review", "ana", flagged, now_ms=0, at=(0, 5))
'learn'
>>> ledger.admit("t-1", 1, "review", "bob", flagged, now_ms=0, at=(0, 6))
'repeat'
>>> ledger.admit("t-1", 0, "auto", "", flagged, now_ms=0, at=(0, 7))
Traceback (most recent call last):
...
flagstream.errors.InvalidRecord: t-1 already has the label fraud from review (trust 1 >= 0)
>>> ledger.admit("t-1", 1, "review", "ana", flagged, now_ms=0, at=(0, 5))  # a replay
'relearn'
>>> ledger.admit("t-2", 1, "review", "ana", {"decision": "approve"}, now_ms=0)
Traceback (most recent call last):
...
flagstream.errors.InvalidRecord: t-2 was not flagged; only chargeback, auto may label it
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from flagstream.errors import InvalidRecord

#: How far each source is trusted: a label replaces an effective label only from a
#: source trusted strictly more. A chargeback is the card holder's bank reporting a
#: loss (money moved back), so it outranks a reviewer's judgement, which outranks an
#: automatic label that says only "nothing came back".
TRUST = {"auto": 0, "review": 1, "chargeback": 2}
#: The labels (1 fraud, 0 legit) each source can give.
SOURCE_LABELS = {"auto": (0,), "review": (0, 1), "chargeback": (1,)}
#: Sources that may label transactions the model did not flag.
UNFLAGGED_SOURCES = ("chargeback", "auto")
#: Feedback records remembered per transaction (at most two are ever learned).
MAX_LEARNED = 4
HOUR_MS = 3_600_000
NAMES = {0: "legit", 1: "fraud"}


class LabelMemory(Protocol):
    """Where the ledger keeps each transaction's effective label (a durable table in a worker)."""

    def get(self, transaction_id: str) -> dict | None: ...

    def put(self, transaction_id: str, row: dict) -> None: ...


class DictMemory(dict):
    """A :class:`LabelMemory` in a dict (tests, one process)."""

    def put(self, transaction_id: str, row: dict) -> None:
        self[transaction_id] = row


@dataclass
class HourlyBudget:
    """Labels learned per clock hour, per ``(source, reviewer)`` and per source.

    Only labels that are admitted are counted, so the entries kept in an hour are
    bounded by the per-source budgets, whatever reviewer names a writer makes up.

    >>> b = HourlyBudget(per_reviewer=1, per_source=2)
    >>> [b.take("review", r, 0) for r in ("ana", "ana", "bob", "eve")]
    [True, False, True, False]
    >>> b.take("review", "eve", HOUR_MS)  # a new hour
    True
    """

    per_reviewer: int
    per_source: int
    hour: int = -1
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)

    def take(self, source: str, reviewer: str, now_ms: int) -> bool:
        """Count one label for ``(source, reviewer)`` unless either budget is spent."""
        hour = now_ms // HOUR_MS
        if hour != self.hour:
            self.hour, self.counts = hour, {}
        keys = ((source,), (source, reviewer))
        if (self.counts.get(keys[0], 0) >= self.per_source
                or self.counts.get(keys[1], 0) >= self.per_reviewer):
            return False
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1
        return True


class LabelLedger:
    """Judges each label against the transaction's effective label and the budgets.

    Parameters
    ----------
    memory
        Effective labels by transaction id (rows written by :meth:`admit`).
    budget
        The hourly label budgets.
    """

    def __init__(self, memory: LabelMemory, budget: HourlyBudget) -> None:
        self.memory = memory
        self.budget = budget

    def admit(self, transaction_id: str, label: int, source: str, reviewer: str,
              decision: Mapping, now_ms: int, at: tuple[int, int] | None = None) -> str:
        """``learn`` (a new effective label), ``replace``, ``relearn`` (this very record was
        learned before) or ``repeat`` (ignore it); raises :class:`InvalidRecord` otherwise.

        ``at`` is the feedback record's (partition, offset) when it has one.
        """
        if label not in SOURCE_LABELS[source]:
            raise InvalidRecord("invalid_label", f"a {source} label cannot say {NAMES[label]}")
        row = _valid_row(self.memory.get(transaction_id))
        if row is not None and at is not None and list(at) in row["learned"]:
            return "relearn"
        if decision.get("decision") in (None, "approve") and source not in UNFLAGGED_SOURCES:
            raise InvalidRecord("not_flagged", f"{transaction_id} was not flagged; only "
                                f"{', '.join(UNFLAGGED_SOURCES)} may label it")
        if row is not None:
            if row["label"] == label:
                return "repeat"
            if TRUST[source] <= TRUST[row["source"]]:
                raise InvalidRecord(
                    "conflicting_label",
                    f"{transaction_id} already has the label {NAMES[row['label']]} from "
                    f"{row['source']} (trust {TRUST[row['source']]} >= {TRUST[source]})")
        if not self.budget.take(source, reviewer, now_ms):
            raise InvalidRecord("rate_limited",
                                f"hourly label budget of {source} {reviewer!r} is spent")
        learned = [*(row["learned"] if row else []), list(at) if at is not None else None]
        self.memory.put(transaction_id, {"label": label, "source": source, "reviewer": reviewer,
                                         "at_ms": now_ms, "learned": learned[-MAX_LEARNED:]})
        return "learn" if row is None else "replace"


def _valid_row(row: object) -> dict | None:
    """A remembered label as :meth:`LabelLedger.admit` writes it, or None."""
    if not isinstance(row, dict) or row.get("label") not in (0, 1) or row.get("source") not in TRUST:
        return None
    learned = row.get("learned")
    if not isinstance(learned, list) or len(learned) > MAX_LEARNED:
        return None
    return row
