"""Pure-Python references for the Numba kernels, written from the definitions.

They keep each entity's full history and compute every window directly, instead of
rings. A bucket's events count toward a window while that bucket is the newest one
seen in its ring slot (its residue class modulo the ring length) — the ring's only
approximation, stated here once, in plain Python.

>>> acc = ReferenceAccounts()
>>> feats, status = acc.apply("c-1", offset=-1, ts_ms=0, amount=10.0, id_hash=1, merchant_hash=5)
>>> status, feats["account_count_1d"], feats["seconds_since_previous"], feats["is_new_merchant"]
(0, 1, 2592000.0, 1.0)
>>> feats, status = acc.apply("c-1", offset=-1, ts_ms=60_000, amount=30.0, id_hash=2, merchant_hash=5)
>>> feats["account_mean_amount_1d"], feats["seconds_since_previous"], feats["amount_to_30d_mean"]
(20.0, 60.0, 3.0)
>>> feats["card_count_10m"], feats["is_new_merchant"], round(feats["card_days_since_merchant"] * 1440)
(2, 0.0, 1)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from flagstream.features.layout import (
    ALREADY_APPLIED,
    APPLIED,
    AREA_MEMORY,
    DAY_MS,
    DISTINCT_WINDOW_MS,
    DUPLICATE,
    HOUR_MS,
    LARGE_RATIO,
    LARGE_WINDOW_MS,
    MAX_GAP_S,
    MAX_MERCHANT_AGE_DAYS,
    N_DAILY,
    N_HOURLY,
    N_KNOWN_MERCHANTS,
    N_MERCHANT_DAILY,
    N_RECENT_EVENTS,
    N_RECENT_IDS,
    NEW_CARDS_DAYS,
    NOVELTY_DAYS,
    PROBES_BEFORE_CASHOUT,
    SMALL_AMOUNT,
    SMALL_WINDOW_MS,
    VELOCITY_WINDOWS_MS,
)


def _retained(buckets: list[int], ring: int) -> dict[int, int]:
    """Newest bucket per ring slot among ``buckets``."""
    newest: dict[int, int] = {}
    for b in buckets:
        newest[b % ring] = max(newest.get(b % ring, b), b)
    return newest


def _window(events: list[tuple[int, float]], unit: int, ring: int, first: int, last: int):
    """(count, sum) of events whose bucket is in [first, last] and still retained."""
    buckets = [ts // unit for ts, _ in events]
    newest = _retained(buckets, ring)
    chosen = [
        amount
        for (ts, amount), b in zip(events, buckets, strict=True)
        if first <= b <= last and newest[b % ring] == b
    ]
    return len(chosen), sum(chosen)


@dataclass
class _Account:
    events: list[tuple[int, float]] = field(default_factory=list)
    ids: list[float] = field(default_factory=list)
    merchants: list[float] = field(default_factory=list)  # merchant hash of each event
    locations: list[tuple[float, float]] = field(default_factory=list)  # of located events
    last_offset: int = -1
    last_ts: int = 0


class ReferenceAccounts:
    """Account state as full histories; ``apply`` mirrors ``kernels.update_accounts``."""

    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = defaultdict(_Account)

    def apply(
        self, key: str, offset: int, ts_ms: int, amount: float, id_hash: float, merchant_hash: float,
        place: tuple[float, float, float, float] = (math.nan,) * 4,
    ):
        """``place``: the event's location and its holder's address, NaN where absent."""
        acc = self.accounts[key]
        if offset >= 0 and offset <= acc.last_offset:
            return None, ALREADY_APPLIED
        if id_hash in acc.ids[-N_RECENT_IDS:]:
            return None, DUPLICATE
        hour, day = ts_ms // HOUR_MS, ts_ms // DAY_MS
        if acc.events:
            gap = min(max((ts_ms - acc.last_ts) / 1000.0, 0.0), MAX_GAP_S)
        else:
            gap = MAX_GAP_S
        c_before, s_before = _window(acc.events, DAY_MS, N_DAILY, day - 29, day)
        total = sum(a for _, a in acc.events)
        usual = amount / (total / len(acc.events)) if acc.events and total > 0 else 1.0
        ratio = amount / (s_before / c_before) if c_before else 1.0
        novelty = _merchant_novelty(acc, ts_ms, merchant_hash)
        distance = _distance_from_usual_area(acc.locations, place)
        acc.events.append((ts_ms, amount))
        acc.merchants.append(merchant_hash)
        acc.ids.append(id_hash)
        acc.last_ts = max(acc.last_ts, ts_ms) if len(acc.events) > 1 else ts_ms
        if offset >= 0:
            acc.last_offset = offset
        c1, s1 = _window(acc.events, HOUR_MS, N_HOURLY, hour - 23, hour)
        c7, s7 = _window(acc.events, DAY_MS, N_DAILY, day - 6, day)
        c30, s30 = _window(acc.events, DAY_MS, N_DAILY, day - 29, day)
        weekday = (day + 3) % 7
        features = {
            "amount": amount,
            "is_weekend": 1.0 if weekday >= 5 else 0.0,
            "is_night": 1.0 if (ts_ms % DAY_MS) // HOUR_MS <= 6 else 0.0,
            "account_count_1d": c1,
            "account_mean_amount_1d": s1 / c1 if c1 else 0.0,
            "account_count_7d": c7,
            "account_mean_amount_7d": s7 / c7 if c7 else 0.0,
            "account_count_30d": c30,
            "account_mean_amount_30d": s30 / c30 if c30 else 0.0,
            "seconds_since_previous": gap,
            "amount_to_30d_mean": ratio,
            **novelty,
            **_velocity(acc, ts_ms, amount),
            "amount_to_card_mean": usual,
            "distance_from_usual_area": distance,
        }
        return features, APPLIED


def usual_area(locations: list[tuple[float, float]]) -> tuple[float, float]:
    """The centre of a card's locations: their mean while there are at most AREA_MEMORY,
    then an exponential moving mean (weight ``1 / AREA_MEMORY`` on each newer one), written
    out as the weighted sum it is.

    >>> usual_area([(0.0, 0.0), (4.0, 2.0)])
    (2.0, 1.0)
    """
    first, rest = locations[:AREA_MEMORY], locations[AREA_MEMORY:]
    keep = 1.0 - 1.0 / AREA_MEMORY
    centre = []
    for axis in (0, 1):
        value = sum(p[axis] for p in first) / len(first) * keep ** len(rest)
        value += sum(p[axis] / AREA_MEMORY * keep ** (len(rest) - 1 - k) for k, p in enumerate(rest))
        centre.append(value)
    return centre[0], centre[1]


def _distance_from_usual_area(
    locations: list[tuple[float, float]], place: tuple[float, float, float, float]
) -> float:
    """From the event's location to the centre of the card's earlier ones (its holder's
    address before it has any); 0 when unknown. A located event joins ``locations``."""
    x, y, home_x, home_y = place
    if math.isnan(x) or math.isnan(y):
        return 0.0
    if locations:
        centre = usual_area(locations)
    elif not (math.isnan(home_x) or math.isnan(home_y)):
        centre = (home_x, home_y)
    else:
        centre = (x, y)
    locations.append((x, y))
    return math.dist((x, y), centre)


def _merchant_novelty(acc: _Account, ts_ms: int, merchant: float) -> dict[str, float]:
    """Whether ``merchant`` is among the card's last N_KNOWN_MERCHANTS distinct merchants
    (before this event), and days since the latest event there."""
    recent: list[float] = []
    for i in range(len(acc.merchants) - 1, -1, -1):
        if len(recent) == N_KNOWN_MERCHANTS:
            break
        if acc.merchants[i] == merchant:
            days = min(max((ts_ms - acc.events[i][0]) / DAY_MS, 0.0), MAX_MERCHANT_AGE_DAYS)
            return {"is_new_merchant": 0.0, "card_days_since_merchant": days}
        if acc.merchants[i] not in recent:
            recent.append(acc.merchants[i])
    return {"is_new_merchant": 1.0, "card_days_since_merchant": MAX_MERCHANT_AGE_DAYS}


def _velocity(acc: _Account, ts_ms: int, amount: float) -> dict[str, float]:
    """Windows over the last N_RECENT_EVENTS events (this one included), ending at ``ts_ms``."""
    last = list(zip(acc.events, acc.merchants, strict=True))[-N_RECENT_EVENTS:]

    def within(span: int) -> list[tuple[float, float]]:
        return [(a, m) for (t, a), m in last if 0 <= ts_ms - t <= span]

    small = sum(1 for a, _ in within(SMALL_WINDOW_MS) if a < SMALL_AMOUNT)
    small_before = small - (amount < SMALL_AMOUNT)
    probed = small_before >= PROBES_BEFORE_CASHOUT and amount >= SMALL_AMOUNT
    return {
        "card_count_10m": len(within(VELOCITY_WINDOWS_MS[0])),
        "card_count_1h": len(within(VELOCITY_WINDOWS_MS[1])),
        "card_small_count_48h": small,
        "card_distinct_merchants_24h": len({m for _, m in within(DISTINCT_WINDOW_MS)}),
        "amount_after_probes": amount if probed else 0.0,
        "card_large_amounts_14d": _large_amounts(acc, ts_ms),
    }


def _large_amounts(acc: _Account, ts_ms: int) -> float:
    """The card's earlier events among its last N_RECENT_EVENTS - 1 before this one, within
    LARGE_WINDOW_MS, whose amount is above LARGE_RATIO times its mean before this event."""
    before = acc.events[:-1]
    total = sum(a for _, a in before)
    if not before or total <= 0:
        return 0.0
    mean = total / len(before)
    return float(sum(1 for t, a in before[-(N_RECENT_EVENTS - 1):]
                     if 0 <= ts_ms - t <= LARGE_WINDOW_MS and a > LARGE_RATIO * mean))


class ReferenceMerchants:
    """Merchant state as lists of (day, count, frauds, cards new to it) updates."""

    def __init__(self) -> None:
        self.updates: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)

    def add(self, key: str, day: int, count: float, frauds: float, new_cards: float = 0.0) -> None:
        self.updates[key].append((day, count, frauds, new_cards))

    def features(self, key: str, ts_ms: int, delay_days: int) -> dict[str, float]:
        updates = self.updates.get(key, [])
        ring = N_MERCHANT_DAILY
        newest = _retained([u[0] for u in updates], ring)

        def kept(first: int, last: int) -> list[tuple[float, float, float]]:
            return [(c, f, n) for d, c, f, n in updates if first <= d <= last and newest[d % ring] == d]

        last = ts_ms // DAY_MS - delay_days
        out = {}
        for span in (1, 7, 30):
            window = kept(last - span + 1, last)
            count = sum(c for c, _, _ in window)
            frauds = sum(f for _, f, _ in window)
            out[f"merchant_count_{span}d"] = count
            out[f"merchant_fraud_rate_{span}d"] = frauds / count if count else 0.0
        week = kept(last - NOVELTY_DAYS + 1, last)
        count, new = sum(c for c, _, _ in week), sum(n for _, _, n in week)
        out["merchant_new_card_share_7d"] = new / count if count else 0.0
        out["merchant_new_cards_2d"] = sum(n for _, _, n in kept(last - NEW_CARDS_DAYS + 1, last))
        return out
