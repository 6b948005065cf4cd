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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flagstream.features.arena import Arena
from flagstream.features.kernels import merchant_features, update_merchants
from flagstream.features.layout import (
    DAY_MS,
    EARLIER_MERCHANT_WIDTHS,
    MERCHANT_DELAY_DAYS,
    new_merchant_row,
)

#: Day numbers accepted in activity run to this many days after today's (by this machine's
#: clock): activity counts transactions scored, and none is stamped in the future; a day
#: far ahead would claim a slot of the merchant's daily ring that no real day could take
#: back, and its counts would be lost for good.
DAYS_AHEAD = 1
#: The most transactions one merchant can be credited with in one record.
MAX_DAILY = 1e9


@dataclass
class MerchantActivity:
    """Per-merchant, per-day counts (and fraud labels) to add to merchant state."""

    merchant_ids: list[str] = field(default_factory=list)
    days: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0))
    frauds: np.ndarray = field(default_factory=lambda: np.empty(0))
    #: transactions of cards new to the merchant (None: none, as for labels)
    new_cards: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.new_cards is None:
            self.new_cards = np.zeros(len(self.merchant_ids))

    def __len__(self) -> int:
        return len(self.merchant_ids)

    def select(self, rows: np.ndarray) -> MerchantActivity:
        """The activity of these rows only (one merchant-state partition's share).

        >>> a = MerchantActivity(["m-1", "m-2"], np.array([1, 2]), np.array([3.0, 4.0]),
        ...                      np.zeros(2), np.array([1.0, 0.0]))
        >>> b = a.select(np.array([1])); b.merchant_ids, b.counts.tolist(), b.new_cards.tolist()
        (['m-2'], [4.0], [0.0])
        """
        assert self.new_cards is not None
        return MerchantActivity([self.merchant_ids[i] for i in rows.tolist()], self.days[rows],
                                self.counts[rows], self.frauds[rows], self.new_cards[rows])

    def to_wire(self) -> dict:
        assert self.new_cards is not None
        return {
            "m": self.merchant_ids,
            "d": self.days.tolist(),
            "n": self.counts.tolist(),
            "f": self.frauds.tolist(),
            "c": self.new_cards.tolist(),
        }

    @classmethod
    def from_wire(cls, obj: object) -> MerchantActivity:
        """Activity from :meth:`to_wire` output, every field checked (``ValueError`` otherwise).
        Records written before new cards were counted (no ``"c"``) count none.

        >>> MerchantActivity.from_wire({"m": ["m-1"], "d": [17622], "n": [2], "f": [0]}).counts.tolist()
        [2.0]
        >>> MerchantActivity.from_wire({"m": ["m-1"], "d": [1, 2], "n": [1, 1], "f": [0, 0]})
        Traceback (most recent call last):
        ...
        ValueError: merchant activity: every column needs one value per merchant
        """
        if not isinstance(obj, dict):
            raise ValueError("merchant activity must be a JSON object")
        columns = [obj.get(k) for k in ("m", "d", "n", "f")]
        if isinstance(columns[0], list):
            columns.append(obj.get("c", [0] * len(columns[0])))
        lists = [c for c in columns if isinstance(c, list)]
        if len(lists) != 5 or len({len(c) for c in lists}) != 1:
            raise ValueError("merchant activity: every column needs one value per merchant")
        merchants, days, counts, frauds, new_cards = lists
        if not all(isinstance(m, str) and 0 < len(m) <= 128 for m in merchants):
            raise ValueError("merchant activity: merchant ids must be short strings")
        latest = int(time.time() // 86_400) + DAYS_AHEAD
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= latest for d in days):
            raise ValueError("merchant activity: days must be whole day numbers, none in the future")
        for column in (counts, frauds, new_cards):
            if not all(isinstance(x, int | float) and not isinstance(x, bool)
                       and math.isfinite(x) and 0 <= x <= MAX_DAILY for x in column):
                raise ValueError("merchant activity: counts must be finite and not negative")
        return cls(list(merchants), np.asarray(days, np.int64), np.asarray(counts, np.float64),
                   np.asarray(frauds, np.float64), np.asarray(new_cards, np.float64))


class MerchantState:
    """Merchant rows in an arena: read features from them and add activity to them.

    Windows end ``delay_days`` before each transaction, when its labels are known.
    """

    def __init__(self, arena: Arena | None = None, delay_days: int = MERCHANT_DELAY_DAYS) -> None:
        self.arena = arena if arena is not None else Arena(
            new_merchant_row, prefix_widths=EARLIER_MERCHANT_WIDTHS)
        self.delay_days = delay_days

    def fill_features(self, merchant_ids: Sequence[str], ts_ms: np.ndarray, out: np.ndarray) -> None:
        # indices first: adding unseen merchants may reallocate ``arena.rows``
        idx = self.arena.indices(merchant_ids)
        merchant_features(self.arena.rows, idx, ts_ms, self.delay_days, out)

    def apply(self, activity: MerchantActivity) -> np.ndarray:
        """Add activity; returns the row indices it touched."""
        idx = self.arena.indices(activity.merchant_ids)
        update_merchants(self.arena.rows, idx, activity.days, activity.counts, activity.frauds,
                         activity.new_cards)
        self.arena.touch(idx)  # changed rows are written to the replicated table
        return idx


def count_activity(merchant_ids: Sequence[str], ts_ms: np.ndarray,
                   new_cards: np.ndarray | None = None) -> MerchantActivity:
    """Aggregate one batch's transactions into (merchant, day) counts, sorted by both, with
    how many of them came from cards new to the merchant (``new_cards``: 1 per such
    transaction, e.g. the ``is_new_merchant`` feature; None: none).

    >>> a = count_activity(["m-2", "m-1", "m-2"], np.array([0, DAY_MS, 5]), np.array([1., 1., 0.]))
    >>> a.merchant_ids, a.days.tolist(), a.counts.tolist(), a.new_cards.tolist()
    (['m-1', 'm-2'], [1, 0], [1.0, 2.0], [1.0, 1.0])
    """
    if not len(merchant_ids):
        return MerchantActivity()
    # (plain dicts and lists: a worker's steps are often one record, where Counters and
    # numpy's fixed costs were a tenth of scoring it)
    days = (ts_ms // DAY_MS).tolist()
    new_flags = new_cards.tolist() if new_cards is not None else [0.0] * len(days)
    counts: dict[tuple[str, int], list[int]] = {}
    for pair, is_new in zip(zip(merchant_ids, days, strict=True), new_flags, strict=True):
        tally = counts.get(pair)
        if tally is None:
            tally = counts[pair] = [0, 0]
        tally[0] += 1
        tally[1] += is_new > 0
    pairs = sorted(counts)
    return MerchantActivity(
        [m for m, _ in pairs], np.array([d for _, d in pairs], np.int64),
        np.array([counts[p][0] for p in pairs], np.float64), np.zeros(len(pairs)),
        np.array([counts[p][1] for p in pairs], np.float64),
    )
