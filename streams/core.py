"""The batched scoring core shared by the worker, the backtest and the benchmarks.

One call takes a batch of raw transaction values and returns everything the batch
produces: decisions, flagged records, dead letters, and the state it changed. It
does no I/O, so the Faust worker, a plain aiokafka loop and the in-process backtest
all run exactly the same code.

>>> core = ScoringCore()
>>> out = core.process([
...     b'{"transaction_id":"t-1","account_id":"c-1","merchant_id":"m-1",'
...     b'"amount":10.0,"timestamp":"2018-04-01T10:00:00Z"}',
...     b'{"transaction_id":"t-1","account_id":"c-1","merchant_id":"m-1",'
...     b'"amount":10.0,"timestamp":"2018-04-01T10:00:00Z"}',
... ], offsets=[0, 1])
>>> [d["transaction_id"] for d in out.decisions], [r.reason for r in out.rejections]
(['t-1'], ['duplicate_transaction'])
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from features.arena import Arena
from features.kernels import merchant_features, update_accounts, update_merchants
from features.layout import (
    ALREADY_APPLIED,
    APPLIED,
    DAY_MS,
    DUPLICATE,
    FEATURE_NAMES,
    N_FEATURES,
    new_account_row,
    new_merchant_row,
)
from scoring.handle import ModelHandle
from scoring.linear import LinearChampion
from scoring.policy import DecisionPolicy, FixedThreshold
from scoring.reasons import explain
from streams.schema import Rejection, validate_transactions
from streams.topics import partition_for

#: Context fields copied from a transaction onto its decision (never card numbers).
CONTEXT_FIELDS = ("currency", "channel", "country")


def id_hash(transaction_id: str) -> float:
    """A stable 48-bit hash of a transaction id, exact in a float64."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=6).digest()
    return float(int.from_bytes(digest, "big"))


@dataclass
class MerchantActivity:
    """Per-merchant, per-day counts (and fraud labels) to add to merchant state."""

    merchant_ids: list[str] = field(default_factory=list)
    days: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0))
    frauds: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __len__(self) -> int:
        return len(self.merchant_ids)

    def to_wire(self) -> dict:
        return {
            "m": self.merchant_ids,
            "d": self.days.tolist(),
            "n": self.counts.tolist(),
            "f": self.frauds.tolist(),
        }

    @classmethod
    def from_wire(cls, obj: dict) -> MerchantActivity:
        return cls(
            list(obj["m"]),
            np.asarray(obj["d"], np.int64),
            np.asarray(obj["n"], np.float64),
            np.asarray(obj["f"], np.float64),
        )


class MerchantState:
    """Merchant rows in an arena: read features from them and add activity to them."""

    def __init__(self, arena: Arena | None = None) -> None:
        self.arena = arena or Arena(new_merchant_row)

    def fill_features(self, merchant_ids: Sequence[str], ts_ms: np.ndarray, out: np.ndarray) -> None:
        merchant_features(self.arena.rows, self.arena.indices(merchant_ids), ts_ms, out)

    def apply(self, activity: MerchantActivity) -> np.ndarray:
        """Add activity; returns the row indices it touched."""
        idx = self.arena.indices(activity.merchant_ids)
        update_merchants(self.arena.rows, idx, activity.days, activity.counts, activity.frauds)
        return idx


def count_activity(merchant_ids: Sequence[str], ts_ms: np.ndarray) -> MerchantActivity:
    """Aggregate one batch's transactions into (merchant, day) counts."""
    if not merchant_ids:
        return MerchantActivity()
    names, codes = np.unique(np.asarray(merchant_ids, dtype=object), return_inverse=True)
    days = ts_ms // DAY_MS
    pairs, counts = np.unique(np.stack([codes, days]), axis=1, return_counts=True)
    return MerchantActivity(
        [names[c] for c in pairs[0]], pairs[1].astype(np.int64), counts.astype(np.float64),
        np.zeros(len(counts)),
    )


@dataclass
class BatchOutcome:
    """What one batch produced. ``decisions[i]`` is for input ``indices[i]``."""

    indices: list[int] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    flagged: list[dict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    replayed: int = 0
    misrouted: list[tuple[int, str]] = field(default_factory=list)
    features: np.ndarray = field(default_factory=lambda: np.empty((0, N_FEATURES)))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    activity: MerchantActivity = field(default_factory=MerchantActivity)


class ScoringCore:
    """Validate, update state, compute features, score and decide — per batch.

    Parameters
    ----------
    handle
        The champion model and its version.
    policy
        Decides which scores are flagged for review.
    accounts
        Account rows (an :class:`Arena`, optionally backed by a durable table).
    merchants
        Merchant state to read features from; the caller applies ``outcome.activity``.
    """

    def __init__(
        self,
        handle: ModelHandle | None = None,
        policy: DecisionPolicy | None = None,
        accounts: Arena | None = None,
        merchants: MerchantState | None = None,
        max_record_bytes: int = 16_384,
        max_nesting: int = 8,
    ) -> None:
        self.handle = handle or ModelHandle(LinearChampion())
        self.policy = policy or FixedThreshold()
        self.accounts = accounts or Arena(new_account_row)
        self.merchants = merchants or MerchantState()
        self.max_record_bytes = max_record_bytes
        self.max_nesting = max_nesting

    def process(
        self,
        values: Sequence[bytes | None],
        offsets: Sequence[int] | None = None,
        partition: int | None = None,
        partitions: int | None = None,
    ) -> BatchOutcome:
        """Run one batch of records from one partition.

        ``offsets`` (source offsets; each account lives on one partition) make replays
        after a restart idempotent; without them every event is applied. With
        ``partition`` and ``partitions``, valid records whose account belongs to another
        partition are returned in ``misrouted`` instead of being applied.
        """
        batch = validate_transactions(values, self.max_record_bytes, self.max_nesting)
        outcome = BatchOutcome(rejections=list(batch.rejections))
        if partitions is not None and len(batch):
            home = np.fromiter(
                (partition_for(a, partitions) for a in batch.account_ids), np.int64, len(batch)
            )
            wrong = np.flatnonzero(home != partition)
            outcome.misrouted = [(batch.indices[i], batch.account_ids[i]) for i in wrong]
            if len(wrong):
                batch = batch.select(np.flatnonzero(home == partition))
        n = len(batch)
        if n == 0:
            return outcome
        rows = self.accounts.indices(batch.account_ids)
        if offsets is None:
            offs = np.full(n, -1, np.int64)
        else:
            offs = np.asarray(offsets, dtype=np.int64)[batch.indices]
        hashes = np.fromiter((id_hash(t) for t in batch.transaction_ids), np.float64, n)
        features = np.zeros((n, N_FEATURES))
        status = np.zeros(n, np.int8)
        update_accounts(
            self.accounts.rows, rows, offs, batch.timestamps_ms, batch.amounts, hashes,
            features, status,
        )
        self.merchants.fill_features(batch.merchant_ids, batch.timestamps_ms, features)
        applied = np.flatnonzero(status == APPLIED)
        self.accounts.touch(np.unique(rows[applied]))
        outcome.replayed = int(np.count_nonzero(status == ALREADY_APPLIED))
        for i in np.flatnonzero(status == DUPLICATE):
            outcome.rejections.append(
                Rejection(
                    batch.indices[i],
                    "duplicate_transaction",
                    f"transaction_id {batch.transaction_ids[i]!r} already seen for this account",
                )
            )
        features = features[applied]
        model = self.handle.model
        scores = model.score_batch(features)
        flags = self.policy.flags(scores)
        outcome.features, outcome.scores = features, scores
        outcome.activity = count_activity(
            [batch.merchant_ids[i] for i in applied], batch.timestamps_ms[applied]
        )
        self._decide(batch, applied, features, scores, flags, outcome)
        return outcome

    def _decide(self, batch, applied, features, scores, flags, outcome: BatchOutcome) -> None:
        version = self.handle.version
        threshold = float(self.policy.threshold)
        scored_at = int(time.time() * 1000)
        flagged_rows = np.flatnonzero(flags)
        contributions = self.handle.model.contributions(features[flagged_rows])
        reasons = {
            int(j): explain(features[j], contributions[k]) for k, j in enumerate(flagged_rows)
        }
        feature_lists = features.round(6).tolist()
        for j, i in enumerate(applied.tolist()):
            record = batch.records[i]
            decision = {
                "transaction_id": batch.transaction_ids[i],
                "account_id": batch.account_ids[i],
                "merchant_id": batch.merchant_ids[i],
                "amount": float(batch.amounts[i]),
                "event_time": record["timestamp"],
                "event_time_ms": int(batch.timestamps_ms[i]),
                "score": round(float(scores[j]), 6),
                "threshold": threshold,
                "decision": "review" if flags[j] else "approve",
                "model_version": version,
                "scored_at_ms": scored_at,
                "features": feature_lists[j],
            }
            for name in CONTEXT_FIELDS:
                if name in record:
                    decision[name] = record[name]
            outcome.indices.append(batch.indices[i])
            outcome.decisions.append(decision)
            if flags[j]:
                flagged = dict(decision)
                flagged["reasons"] = reasons[j]
                flagged["features"] = dict(zip(FEATURE_NAMES, feature_lists[j], strict=True))
                outcome.flagged.append(flagged)
