"""Merchant state: per-merchant daily activity and fraud labels, and the features read from it.

Merchant rows are not co-partitioned with account-keyed transactions: scorers count a
batch's activity per (merchant, day) and send it on; whoever owns the merchant rows
adds it (:meth:`MerchantState.apply`), and scorers read features from a replicated copy.

>>> state = MerchantState()
>>> touched = state.apply(count_activity(["m-1", "m-1", "m-2"], np.array([0, 1_000, 0])))
>>> sorted(state.arena.keys), len(touched)
(['m-1', 'm-2'], 2)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flagstream.features.arena import Arena
from flagstream.features.kernels import merchant_features, update_merchants
from flagstream.features.layout import (
    DAY_MS,
    MERCHANT_DELAY_DAYS,
    new_merchant_row,
)


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
    """Merchant rows in an arena: read features from them and add activity to them.

    Windows end ``delay_days`` before each transaction, when its labels are known.
    """

    def __init__(self, arena: Arena | None = None, delay_days: int = MERCHANT_DELAY_DAYS) -> None:
        self.arena = arena or Arena(new_merchant_row)
        self.delay_days = delay_days

    def fill_features(self, merchant_ids: Sequence[str], ts_ms: np.ndarray, out: np.ndarray) -> None:
        # indices first: adding unseen merchants may reallocate ``arena.rows``
        idx = self.arena.indices(merchant_ids)
        merchant_features(self.arena.rows, idx, ts_ms, self.delay_days, out)

    def apply(self, activity: MerchantActivity) -> np.ndarray:
        """Add activity; returns the row indices it touched."""
        idx = self.arena.indices(activity.merchant_ids)
        update_merchants(self.arena.rows, idx, activity.days, activity.counts, activity.frauds)
        return idx


def count_activity(merchant_ids: Sequence[str], ts_ms: np.ndarray) -> MerchantActivity:
    """Aggregate one batch's transactions into (merchant, day) counts, sorted by both.

    >>> a = count_activity(["m-2", "m-1", "m-2"], np.array([0, DAY_MS, 5]))
    >>> a.merchant_ids, a.days.tolist(), a.counts.tolist()
    (['m-1', 'm-2'], [1, 0], [1.0, 2.0])
    """
    if not len(merchant_ids):
        return MerchantActivity()
    counts = Counter(zip(merchant_ids, (ts_ms // DAY_MS).tolist(), strict=True))
    pairs = sorted(counts)
    return MerchantActivity(
        [m for m, _ in pairs], np.fromiter((d for _, d in pairs), np.int64, len(pairs)),
        np.fromiter((counts[p] for p in pairs), np.float64, len(pairs)), np.zeros(len(pairs)),
    )
