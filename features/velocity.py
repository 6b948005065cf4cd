"""Velocity and novelty of one card, from the account row's recent events and merchants.

:func:`card_velocity` is inlined into :func:`flagstream.features.kernels.update_accounts`;
``ReferenceAccounts`` in :mod:`flagstream.features.reference` computes the same columns
from full histories. Windows are over the card's last ``N_RECENT_EVENTS`` events, so a
count is exact while the card has fewer events than that in the window (and capped at it
otherwise); "known merchant" means among the card's last ``N_KNOWN_MERCHANTS`` distinct
merchants. Both are fixed-size parts of the row: the memory per account is bounded.

>>> import numpy as np
>>> from flagstream.features.layout import FEATURE_NAMES, TOTAL_COUNT, TOTAL_SUM, VELOCITY, new_account_row
>>> row, out = new_account_row(), np.zeros((3, len(FEATURE_NAMES)))
>>> for i, (ts, amount, merchant) in enumerate([(0, 1.0, 7.0), (60_000, 1.5, 7.0), (90_000, 80.0, 9.0)]):
...     card_velocity(row, ts, amount, merchant, out, i)
...     row[TOTAL_COUNT] += 1
...     row[TOTAL_SUM] += amount
>>> dict(zip(FEATURE_NAMES[VELOCITY:VELOCITY + 8], out[2, VELOCITY:VELOCITY + 8].tolist()))
... # doctest: +NORMALIZE_WHITESPACE
{'card_count_10m': 3.0, 'card_count_1h': 3.0, 'card_small_count_48h': 2.0,
 'card_distinct_merchants_24h': 2.0, 'is_new_merchant': 1.0, 'card_days_since_merchant': 30.0,
 'amount_after_probes': 80.0, 'amount_to_card_mean': 64.0}
"""

from __future__ import annotations

import math

from numba import njit

from flagstream.features.layout import (
    DAY_MS,
    DISTINCT_WINDOW_MS,
    KNOWN_MERCHANTS,
    LARGE_AMOUNTS,
    LARGE_RATIO,
    LARGE_WINDOW_MS,
    MAX_MERCHANT_AGE_DAYS,
    N_KNOWN_MERCHANTS,
    N_RECENT_EVENTS,
    PROBES_BEFORE_CASHOUT,
    RECENT_EVENTS,
    SMALL_AMOUNT,
    SMALL_WINDOW_MS,
    TOTAL_COUNT,
    TOTAL_SUM,
    VELOCITY,
    VELOCITY_WINDOWS_MS,
)


@njit(inline="always")
def _remember_merchant(row, ts, merchant, sequence):
    """Mark ``merchant`` used at ``ts``; return days since its previous use (the cap if new)
    and whether it was new. A new merchant takes the least recently used slot."""
    found = -1
    victim = 0
    for k in range(N_KNOWN_MERCHANTS):
        base = KNOWN_MERCHANTS + 3 * k
        if row[base + 2] > 0 and row[base] == merchant:
            found = k
        if row[base + 2] < row[KNOWN_MERCHANTS + 3 * victim + 2]:
            victim = k
    if found >= 0:
        base = KNOWN_MERCHANTS + 3 * found
        age = min(max((ts - row[base + 1]) / DAY_MS, 0.0), MAX_MERCHANT_AGE_DAYS)
        new = 0.0
    else:
        base = KNOWN_MERCHANTS + 3 * victim
        age = MAX_MERCHANT_AGE_DAYS
        new = 1.0
    row[base] = merchant
    row[base + 1] = ts
    row[base + 2] = sequence
    return age, new


@njit(inline="always")
def card_velocity(row, ts, amount, merchant, out, i):
    """Add one applied event to the row's recent events and merchants and fill
    ``out[i, VELOCITY:VELOCITY + 8]`` and ``out[i, LARGE_AMOUNTS]``. Call it before
    ``TOTAL_COUNT`` and ``TOTAL_SUM`` count the event."""
    n = int(row[TOTAL_COUNT])
    known = n > 0 and row[TOTAL_SUM] > 0
    usual = amount / (row[TOTAL_SUM] / n) if known else 1.0
    large_above = LARGE_RATIO * (row[TOTAL_SUM] / n) if known else math.inf
    age, new = _remember_merchant(row, ts, merchant, n + 1.0)
    slot = RECENT_EVENTS + 3 * (n % N_RECENT_EVENTS)
    row[slot] = ts
    row[slot + 1] = amount
    row[slot + 2] = merchant
    filled = min(n + 1, N_RECENT_EVENTS)
    short = 0.0
    hour = 0.0
    small = 0.0
    distinct = 0.0
    large = 0.0
    for k in range(filled):
        at = row[RECENT_EVENTS + 3 * k]
        if at > ts:
            continue
        back = ts - at
        if back <= VELOCITY_WINDOWS_MS[0]:
            short += 1.0
        if back <= VELOCITY_WINDOWS_MS[1]:
            hour += 1.0
        if back <= SMALL_WINDOW_MS and row[RECENT_EVENTS + 3 * k + 1] < SMALL_AMOUNT:
            small += 1.0
        if back <= LARGE_WINDOW_MS and row[RECENT_EVENTS + 3 * k + 1] > large_above:
            large += 1.0
        if back <= DISTINCT_WINDOW_MS:
            first = True
            for j in range(k):
                at_j = row[RECENT_EVENTS + 3 * j]
                if at_j <= ts and ts - at_j <= DISTINCT_WINDOW_MS:
                    if row[RECENT_EVENTS + 3 * j + 2] == row[RECENT_EVENTS + 3 * k + 2]:
                        first = False
            if first:
                distinct += 1.0
    small_before = small - (1.0 if amount < SMALL_AMOUNT else 0.0)
    probed = small_before >= PROBES_BEFORE_CASHOUT and amount >= SMALL_AMOUNT
    out[i, VELOCITY] = short
    out[i, VELOCITY + 1] = hour
    out[i, VELOCITY + 2] = small
    out[i, VELOCITY + 3] = distinct
    out[i, VELOCITY + 4] = new
    out[i, VELOCITY + 5] = age
    out[i, VELOCITY + 6] = amount if probed else 0.0
    out[i, VELOCITY + 7] = usual
    out[i, LARGE_AMOUNTS] = large - (1.0 if amount > large_above else 0.0)
