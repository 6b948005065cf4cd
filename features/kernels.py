"""Numba kernels that update state rows and read features, one call per batch.

Each kernel has an independent pure-Python reference in :mod:`flagstream.features.reference`;
the property tests in ``tests/test_kernels.py`` check that the two agree.

The kernels are cached on disk (``cache=True``), which saves every worker about four
seconds of compiling at start-up. Numba keys its cache on this file alone, but the
kernels also compile in the row layout's constants (``layout.py``) and the helpers they
inline (``location.py``, ``velocity.py``): so this file carries the digest of those
(:data:`COMPILED_IN_DIGEST`), and a change there changes this file too (Numba from 0.68
stamps a file by the digest of its contents; before, by its time and size, which a new
digest of the same length may not change). Should one of
them change without the digest being updated, the kernels are compiled afresh in every
process, never read stale from the cache (and ``tests/test_kernels.py`` fails, naming the
new digest).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

from flagstream.features.layout import (
    ALREADY_APPLIED,
    APPLIED,
    DAILY,
    DAY_MS,
    DISTANCE,
    DUPLICATE,
    HOUR_MS,
    HOURLY,
    LAST_OFFSET,
    LAST_TS,
    M_DAILY,
    M_NEW_CARDS,
    MAX_GAP_S,
    MERCHANT_NOVELTY,
    N_DAILY,
    N_HOURLY,
    N_MERCHANT_DAILY,
    N_RECENT_IDS,
    NEW_CARDS_DAYS,
    NOVELTY_DAYS,
    RECENT_IDS,
    RECENT_POS,
    TOTAL_COUNT,
    TOTAL_SUM,
)
from flagstream.features.location import card_distance
from flagstream.features.velocity import card_velocity

#: The files beside this one whose code or constants the kernels compile in.
COMPILED_IN = ("layout.py", "location.py", "velocity.py")
#: Their digest (:func:`compiled_in_digest`) when this file was last updated for them.
COMPILED_IN_DIGEST = "c47716a68b03a582949b691d0fd98fa8a953da42f15e1b33c72070c62ef46892"


def compiled_in_digest(folder: Path = Path(__file__).parent) -> str:
    """SHA-256 of the :data:`COMPILED_IN` files in ``folder``, in order ("" if one is unreadable).

    >>> len(compiled_in_digest())
    64
    """
    digest = hashlib.sha256()
    try:
        for name in COMPILED_IN:
            digest.update((folder / name).read_bytes())
    except OSError:
        return ""
    return digest.hexdigest()


#: Whether the kernels may be read from (and written to) Numba's disk cache.
CACHED = compiled_in_digest() == COMPILED_IN_DIGEST


@njit(inline="always")
def _ring_add(row, base, n_slots, bucket, value):
    """Add one event to the ring at ``base``; events older than the ring are ignored."""
    slot = base + 3 * (bucket % n_slots)
    held = row[slot]
    if held == bucket:
        row[slot + 1] += 1.0
        row[slot + 2] += value
    elif held < bucket:
        row[slot] = bucket
        row[slot + 1] = 1.0
        row[slot + 2] = value


@njit(inline="always")
def _ring_window(row, base, n_slots, first, last):
    """(count, sum) over buckets ``first..last`` inclusive."""
    count = 0.0
    total = 0.0
    for k in range(n_slots):
        held = row[base + 3 * k]
        if first <= held <= last:
            count += row[base + 3 * k + 1]
            total += row[base + 3 * k + 2]
    return count, total


@njit(cache=CACHED)
def update_accounts(rows, row_of, offsets, ts_ms, amounts, id_hashes, merchant_hashes, places, out,
                    status):
    """Apply a batch of transactions, in order, to account rows and fill account features.

    ``row_of[i]`` is the row of event ``i``; ``out[i, 0:9]`` receives amount, weekend,
    night, and the account's 1/7/30-day count and mean amount (windows include the
    event); ``out[i, 15:17]`` receives seconds since the previous transaction and the
    amount relative to the 30-day mean before it; ``out[i, 17:25]`` the card's velocity
    and novelty (:func:`flagstream.features.velocity.card_velocity`; ``merchant_hashes[i]``
    identifies the event's merchant); ``out[i, 27]`` the distance from the card's usual area
    (:func:`flagstream.features.location.card_distance`; ``places[i]`` is the event's
    location and its holder's address, ``(x, y, home x, home y)``, NaN where absent).
    ``status[i]`` says whether the event
    was applied, already applied (offset replay), or a duplicate transaction id.
    Negative offsets skip the replay check.
    """
    for i in range(ts_ms.shape[0]):
        row = rows[row_of[i]]
        offset = offsets[i]
        if offset >= 0 and offset <= row[LAST_OFFSET]:
            status[i] = ALREADY_APPLIED
            continue
        duplicate = False
        for k in range(N_RECENT_IDS):
            if row[RECENT_IDS + k] == id_hashes[i]:
                duplicate = True
        if duplicate:
            status[i] = DUPLICATE
            continue
        status[i] = APPLIED
        ts = ts_ms[i]
        amount = amounts[i]
        hour = ts // HOUR_MS
        day = ts // DAY_MS
        # before adding: gap and 30-day mean
        if row[TOTAL_COUNT] > 0:
            gap = (ts - row[LAST_TS]) / 1000.0
            gap = min(max(gap, 0.0), MAX_GAP_S)
        else:
            gap = MAX_GAP_S
        c30, s30 = _ring_window(row, DAILY, N_DAILY, day - 29, day)
        ratio = amount / (s30 / c30) if c30 > 0 else 1.0
        _ring_add(row, HOURLY, N_HOURLY, hour, amount)
        _ring_add(row, DAILY, N_DAILY, day, amount)
        card_velocity(row, ts, amount, merchant_hashes[i], out, i)
        out[i, DISTANCE] = card_distance(row, places[i, 0], places[i, 1], places[i, 2], places[i, 3])
        row[TOTAL_COUNT] += 1.0
        row[TOTAL_SUM] += amount
        row[LAST_TS] = max(row[LAST_TS], ts)
        if offset >= 0:
            row[LAST_OFFSET] = offset
        pos = int(row[RECENT_POS])
        row[RECENT_IDS + pos] = id_hashes[i]
        row[RECENT_POS] = (pos + 1) % N_RECENT_IDS

        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday == 0
        out[i, 0] = amount
        out[i, 1] = 1.0 if weekday >= 5 else 0.0
        out[i, 2] = 1.0 if (ts % DAY_MS) // HOUR_MS <= 6 else 0.0
        c1, s1 = _ring_window(row, HOURLY, N_HOURLY, hour - 23, hour)
        c7, s7 = _ring_window(row, DAILY, N_DAILY, day - 6, day)
        c30, s30 = _ring_window(row, DAILY, N_DAILY, day - 29, day)
        out[i, 3] = c1
        out[i, 4] = s1 / c1 if c1 > 0 else 0.0
        out[i, 5] = c7
        out[i, 6] = s7 / c7 if c7 > 0 else 0.0
        out[i, 7] = c30
        out[i, 8] = s30 / c30 if c30 > 0 else 0.0
        out[i, 15] = gap
        out[i, 16] = ratio


@njit(cache=CACHED)
def _new_cards(row, first, last):
    """(all its transactions, those from cards new to it) over days ``first..last`` inclusive."""
    count = 0.0
    new = 0.0
    for k in range(N_MERCHANT_DAILY):
        held = row[M_DAILY + 3 * k]
        if first <= held <= last:
            count += row[M_DAILY + 3 * k + 1]
            new += row[M_NEW_CARDS + k]
    return count, new


@njit(cache=CACHED)
def merchant_features(rows, row_of, ts_ms, delay_days, out):
    """Fill ``out[i, 9:15]``: the merchant's 1/7/30-day count and fraud rate (read only),
    over windows that end ``delay_days`` before the transaction's day; and its novelty
    (``MERCHANT_NOVELTY``): the share of new cards over the ``NOVELTY_DAYS`` and the new
    cards over the ``NEW_CARDS_DAYS`` that end at the same day."""
    for i in range(ts_ms.shape[0]):
        row = rows[row_of[i]]
        day = ts_ms[i] // DAY_MS - delay_days
        col = 9
        for span in (1, 7, 30):
            count, frauds = _ring_window(row, M_DAILY, N_MERCHANT_DAILY, day - span + 1, day)
            out[i, col] = count
            out[i, col + 1] = frauds / count if count > 0 else 0.0
            col += 2
        count, new = _new_cards(row, day - NOVELTY_DAYS + 1, day)
        out[i, MERCHANT_NOVELTY] = new / count if count > 0 else 0.0
        out[i, MERCHANT_NOVELTY + 1] = _new_cards(row, day - NEW_CARDS_DAYS + 1, day)[1]


@njit(cache=CACHED)
def update_merchants(rows, row_of, days, counts, frauds, new_cards):
    """Add transaction counts, fraud labels and cards new to the merchant to its daily buckets."""
    for i in range(days.shape[0]):
        row = rows[row_of[i]]
        day = days[i]
        k = day % N_MERCHANT_DAILY
        slot = M_DAILY + 3 * k
        held = row[slot]
        if held < day:
            row[slot] = day
            row[slot + 1] = 0.0
            row[slot + 2] = 0.0
            row[M_NEW_CARDS + k] = 0.0
        elif held > day:
            continue
        row[slot + 1] += counts[i]
        row[slot + 2] += frauds[i]
        row[M_NEW_CARDS + k] += new_cards[i]


def warm_up() -> None:
    """Compile every kernel now, or read them from Numba's cache (see the module's docstring)."""
    from flagstream.features.layout import ACCOUNT_WIDTH, MERCHANT_WIDTH, N_FEATURES

    rows = np.zeros((1, ACCOUNT_WIDTH))
    out = np.zeros((1, N_FEATURES))
    one = np.zeros(1, np.int64)
    places = np.full((1, 4), np.nan)
    update_accounts(rows, one, one - 1, one, np.ones(1), np.ones(1), np.ones(1), places, out,
                    np.zeros(1, np.int8))
    mrows = np.zeros((1, MERCHANT_WIDTH))
    merchant_features(mrows, one, one, 7, out)
    update_merchants(mrows, one, one, np.zeros(1), np.zeros(1), np.zeros(1))
