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

import math
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

#: Day numbers accepted in activity (epoch days; 100,000 is the year 2243).
MAX_DAY = 100_000
#: The most transactions one merchant can be credited with in one record.
MAX_DAILY = 1e9


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
    def from_wire(cls, obj: object) -> MerchantActivity:
        """Activity from :meth:`to_wire` output, every field checked (``ValueError`` otherwise).

        >>> MerchantActivity.from_wire({"m": ["m-1"], "d": [17622], "n": [2], "f": [0]}).counts.tolist()
        [2.0]
        >>> MerchantActivity.from_wire({"m": ["m-1"], "d": [1, 2], "n": [1, 1], "f": [0, 0]})
        Traceback (most recent call last):
        ...
        ValueError: merchant activity: every column needs one value per merchant
        """
        if not isinstance(obj, dict):
            raise ValueError("merchant activity must be a JSON object")
        merchants, days, counts, frauds = (obj.get(k) for k in ("m", "d", "n", "f"))
        if not (isinstance(merchants, list) and isinstance(days, list) and isinstance(counts, list)
                and isinstance(frauds, list)) or len({len(merchants), len(days), len(counts),
                                                       len(frauds)}) != 1:
            raise ValueError("merchant activity: every column needs one value per merchant")
        if not all(isinstance(m, str) and 0 < len(m) <= 128 for m in merchants):
            raise ValueError("merchant activity: merchant ids must be short strings")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DAY for d in days):
            raise ValueError("merchant activity: days must be whole day numbers")
        for column in (counts, frauds):
            if not all(isinstance(x, int | float) and not isinstance(x, bool)
                       and math.isfinite(x) and 0 <= x <= MAX_DAILY for x in column):
                raise ValueError("merchant activity: counts must be finite and not negative")
        return cls(list(merchants), np.asarray(days, np.int64), np.asarray(counts, np.float64),
                   np.asarray(frauds, np.float64))


class MerchantState:
    """Merchant rows in an arena: read features from them and add activity to them.

    Windows end ``delay_days`` before each transaction, when its labels are known.
    """

    def __init__(self, arena: Arena | None = None, delay_days: int = MERCHANT_DELAY_DAYS) -> None:
        self.arena = arena if arena is not None else Arena(new_merchant_row)
        self.delay_days = delay_days

    def fill_features(self, merchant_ids: Sequence[str], ts_ms: np.ndarray, out: np.ndarray) -> None:
        # indices first: adding unseen merchants may reallocate ``arena.rows``
        idx = self.arena.indices(merchant_ids)
        merchant_features(self.arena.rows, idx, ts_ms, self.delay_days, out)

    def apply(self, activity: MerchantActivity) -> np.ndarray:
        """Add activity; returns the row indices it touched."""
        idx = self.arena.indices(activity.merchant_ids)
        update_merchants(self.arena.rows, idx, activity.days, activity.counts, activity.frauds)
        self.arena.touch(idx)  # changed rows are written to the replicated table
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
