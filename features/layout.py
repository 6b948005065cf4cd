"""Fixed-size numeric rows that hold per-account and per-merchant state.

Windows are bucketed rings: a slot holds ``(bucket id, count, sum)`` and is reset
when a newer bucket claims it, so updates are O(1) and window sums are exact at
bucket granularity. Accounts keep 24 hourly buckets (the 1-day window) and 30
daily buckets (7- and 30-day windows); merchants keep 40 daily buckets of
``(count, frauds)``, because their windows end ``MERCHANT_DELAY_DAYS`` back: fraud
labels arrive late (chargebacks after about a week), so a window that reaches
today would mostly hold transactions whose labels are not known yet. An account
row is ``ACCOUNT_WIDTH`` float64 values: 1.6 KB, so a million accounts take 1.6 GB.

>>> ACCOUNT_WIDTH, MERCHANT_WIDTH, len(FEATURE_NAMES)
(199, 120, 17)
>>> float(new_account_row()[LAST_OFFSET])
-1.0
"""

from __future__ import annotations

import numpy as np

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: Seconds-since-previous is capped here (and used when the account is new).
MAX_GAP_S = 30 * 86_400.0

# --- account rows -----------------------------------------------------------
LAST_OFFSET = 0  # source-partition offset of the last applied event (-1: none)
LAST_TS = 1  # epoch ms of the latest transaction seen
TOTAL_COUNT = 2
TOTAL_SUM = 3
RECENT_IDS = 4  # hashes of the last N_RECENT_IDS transaction ids (duplicate check)
N_RECENT_IDS = 32
RECENT_POS = RECENT_IDS + N_RECENT_IDS  # next slot to overwrite in RECENT_IDS
HOURLY = RECENT_POS + 1
N_HOURLY = 24
DAILY = HOURLY + 3 * N_HOURLY
N_DAILY = 30
ACCOUNT_WIDTH = DAILY + 3 * N_DAILY

# --- merchant rows ----------------------------------------------------------
M_DAILY = 0
N_MERCHANT_DAILY = 40  # holds a 30-day window that ends MERCHANT_DELAY_DAYS back
MERCHANT_WIDTH = 3 * N_MERCHANT_DAILY
#: Merchant windows end this many days before the transaction (the label delay).
MERCHANT_DELAY_DAYS = 7

#: Columns of the feature matrix, in order.
FEATURE_NAMES = (
    "amount",
    "is_weekend",
    "is_night",
    "account_count_1d",
    "account_mean_amount_1d",
    "account_count_7d",
    "account_mean_amount_7d",
    "account_count_30d",
    "account_mean_amount_30d",
    "merchant_count_1d",
    "merchant_fraud_rate_1d",
    "merchant_count_7d",
    "merchant_fraud_rate_7d",
    "merchant_count_30d",
    "merchant_fraud_rate_30d",
    "seconds_since_previous",
    "amount_to_30d_mean",
)
N_FEATURES = len(FEATURE_NAMES)
N_ACCOUNT_FEATURES = 9  # columns 0..8 come from the account kernel, 9..14 from merchants

# Outcome of applying one event to account state.
APPLIED = 0
ALREADY_APPLIED = 1  # offset at or below the row's LAST_OFFSET: a replay after a restart
DUPLICATE = 2  # transaction id seen among the account's recent ones


def new_account_row() -> np.ndarray:
    """An empty account row: no offset, no transactions, every bucket unclaimed."""
    row = np.zeros(ACCOUNT_WIDTH, dtype=np.float64)
    row[LAST_OFFSET] = -1.0
    row[RECENT_IDS:RECENT_POS] = -1.0
    row[HOURLY : HOURLY + 3 * N_HOURLY : 3] = -1.0
    row[DAILY : DAILY + 3 * N_DAILY : 3] = -1.0
    return row


def new_merchant_row() -> np.ndarray:
    """An empty merchant row: every daily bucket unclaimed."""
    row = np.zeros(MERCHANT_WIDTH, dtype=np.float64)
    row[M_DAILY : M_DAILY + 3 * N_MERCHANT_DAILY : 3] = -1.0
    return row
