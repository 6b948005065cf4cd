"""Fixed-size numeric rows that hold per-account and per-merchant state.

Windows are bucketed rings: a slot holds ``(bucket id, count, sum)`` and is reset
when a newer bucket claims it, so updates are O(1) and window sums are exact at
bucket granularity. Accounts keep 24 hourly buckets (the 1-day window) and 30
daily buckets (7- and 30-day windows); merchants keep 40 daily buckets of
``(count, frauds)``, because their windows end ``MERCHANT_DELAY_DAYS`` back: fraud
labels arrive late (chargebacks after about a week), so a window that reaches
today would mostly hold transactions whose labels are not known yet.

Accounts also keep their last ``N_RECENT_EVENTS`` (20) events and last
``N_KNOWN_MERCHANTS`` (32) distinct merchants, for velocity and novelty features: counts
in the last 10 minutes and hour, small-amount probes in 48 hours, distinct merchants in
24 hours, whether (and how long ago) the card used this merchant before, and the amount
relative to the card's mean over its whole history (``TOTAL_SUM``), and the centre of its
usual area (where its transactions take place, when records carry coordinates). Merchants also count,
per day, the transactions of cards new to them (a card's ``is_new_merchant``), for the
share of new cards over 7 days and their number over 2 days, windows ending 7 days back like
the merchant's other windows: a merchant
suddenly charging many cards it never saw is what a bust-out looks like. Both are fixed
size, so memory per account is bounded: an account row is ``ACCOUNT_WIDTH`` float64
values, 2.8 KB (1.6 KB of windows, 0.5 KB of recent events, 0.8 KB of merchants, 24 bytes
of usual area), so a million accounts take 2.9 GB.

>>> ACCOUNT_WIDTH, ACCOUNT_WIDTH * 8, MERCHANT_WIDTH, len(FEATURE_NAMES)
(358, 2864, 160, 29)
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
# Velocity and novelty (issue #13): the card's last N_RECENT_EVENTS applied events as
# (epoch ms, amount, merchant hash), slot ``k`` of event number ``k mod N_RECENT_EVENTS``
# (TOTAL_COUNT says how many are filled), and its last N_KNOWN_MERCHANTS distinct
# merchants as (merchant hash, epoch ms of the latest use, sequence number of that use;
# 0: empty slot); a new merchant takes the slot used least recently.
RECENT_EVENTS = DAILY + 3 * N_DAILY
N_RECENT_EVENTS = 20
KNOWN_MERCHANTS = RECENT_EVENTS + 3 * N_RECENT_EVENTS
N_KNOWN_MERCHANTS = 32
# The card's usual area: how many of its transactions had a location, and the centre of
# those locations (a running mean over the first AREA_MEMORY, then a moving one).
AREA = KNOWN_MERCHANTS + 3 * N_KNOWN_MERCHANTS
AREA_COUNT, AREA_X, AREA_Y = AREA, AREA + 1, AREA + 2
ACCOUNT_WIDTH = AREA + 3
#: Widths of earlier account layouts, each a prefix of this one: rows stored by an earlier
#: version are adopted with the new fields of an empty row (``Arena(prefix_widths=...)``):
#: no recent events and merchants (before velocity), no usual area (before locations).
EARLIER_ACCOUNT_WIDTHS = (RECENT_EVENTS, AREA)
#: The usual area's centre moves by ``1 / min(n, AREA_MEMORY)`` of the way to the n-th
#: location: the mean of the first AREA_MEMORY locations, then an exponential moving mean
#: that follows a customer who moves (and forgets a one-off trip).
AREA_MEMORY = 50
#: Coordinates beyond ±this on either axis are not a location (the pair counts as absent).
MAX_COORDINATE = 1e6
#: Short-window velocity features look back this far (ms), at most N_RECENT_EVENTS events.
VELOCITY_WINDOWS_MS = (600_000, HOUR_MS)
#: An amount below this is "small" (a card-testing probe is 0.50-2.00 in the simulator).
SMALL_AMOUNT = 5.0
SMALL_WINDOW_MS = 48 * HOUR_MS
DISTINCT_WINDOW_MS = 24 * HOUR_MS
#: Days since the card last used the merchant are capped here (and used when it is new).
MAX_MERCHANT_AGE_DAYS = 30.0
#: A purchase counts as following probes after this many small ones in the small window.
PROBES_BEFORE_CASHOUT = 2
#: An amount above this many times the card's mean (over its history before it) is large;
#: the card's large amounts are counted over LARGE_WINDOW_MS (a compromised card spends
#: several times its usual amount, again and again, for days).
LARGE_RATIO = 3.0
LARGE_WINDOW_MS = 14 * DAY_MS

# --- merchant rows ----------------------------------------------------------
M_DAILY = 0
N_MERCHANT_DAILY = 40  # holds a 30-day window that ends MERCHANT_DELAY_DAYS back
#: Per daily slot of M_DAILY (same slot number): the transactions that day whose card had
#: not used the merchant before (as far as the card remembers: its last N_KNOWN_MERCHANTS).
M_NEW_CARDS = 3 * N_MERCHANT_DAILY
MERCHANT_WIDTH = M_NEW_CARDS + N_MERCHANT_DAILY
#: Widths of earlier merchant layouts (prefixes of this one): adopted with no new-card counts.
EARLIER_MERCHANT_WIDTHS = (M_NEW_CARDS,)
#: Merchant windows end this many days before the transaction (the label delay).
MERCHANT_DELAY_DAYS = 7
#: Merchant novelty windows end MERCHANT_DELAY_DAYS back too: merchant rows come to every
#: scorer by replication, so only settled days read the same in every worker, after a
#: restart and in the backtest (windows ending the day before differed on bulk replays).
NOVELTY_DAYS = 7
NEW_CARDS_DAYS = 2

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
    "card_count_10m",
    "card_count_1h",
    "card_small_count_48h",
    "card_distinct_merchants_24h",
    "is_new_merchant",
    "card_days_since_merchant",
    "amount_after_probes",
    "amount_to_card_mean",
    "merchant_new_card_share_7d",
    "merchant_new_cards_2d",
    "distance_from_usual_area",
    "card_large_amounts_14d",
)
N_FEATURES = len(FEATURE_NAMES)
N_ACCOUNT_FEATURES = 9  # columns 0..8 come from the account kernel, 9..14 from merchants
#: First column of the velocity and novelty features (filled by the account kernel).
VELOCITY = 17
#: Column of ``is_new_merchant`` (counted per merchant as its cards new to it).
IS_NEW_MERCHANT = 21
#: First column of the merchant novelty features (filled by the merchant kernel).
MERCHANT_NOVELTY = 25
#: Column of the distance from the card's usual area (filled by the account kernel).
DISTANCE = 27
#: Column of the card's earlier large amounts in 14 days (filled with its velocity).
LARGE_AMOUNTS = 28
#: Feature counts of earlier layouts, each a prefix of this one: a stored feature vector of
#: an earlier version is read with the later features at 0 (what "not known" scores as).
EARLIER_FEATURE_COUNTS = (DISTANCE,)

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
