"""Fraud patterns beyond the reference benchmark (scenarios 4, 5, 6) and drift of legitimate
behaviour, for :mod:`flagstream.simulation.simulator`. All are off in the reference run.

The three patterns add transactions (they never relabel genuine ones); each added row is
fraud and carries its pattern's code in ``fraud_scenario``:

4. **Card testing** (:class:`CardTesting`): a fraudster checks a stolen card with a burst of
   tiny purchases at one merchant, anywhere, then cashes out with a few large purchases in
   the card's own area, hours later.
5. **Account takeover** (:class:`AccountTakeover`): someone who has taken over the account buys
   for hours to days at merchants around a spot far from the card's home.
6. **Merchant bust-out** (:class:`BustOut`): a colluding merchant charges a ring of stolen cards
   that have never bought there, with volume and amounts growing until it disappears.

:class:`Drift` changes genuine transactions slowly (amounts, time of day) over the period,
which a model that learned the first weeks must follow; it adds no code.

Rates are per day and per 1,000 cards (per 10,000 merchants for bust-out), so a smaller world
sees proportionally as many. Every pattern draws from its own random stream,
``default_rng([seed, code])`` (drift: ``[seed, 7]``), so switching one on changes neither the
genuine transactions nor the other patterns.

>>> import numpy as np
>>> world = World(np.array([[10.0, 10.0]]), np.array([[11.0, 10.0], [90.0, 90.0]]),
...               np.array([40.0]), np.array([0, 1]), np.array([0]), days=30, radius=5.0)
>>> rows = inject(world, seed=0, enabled=(5,), takeover=AccountTakeover(rate=100.0))
>>> len(rows.code) > 0, bool((rows.code == 5).all()), set(rows.terminal.tolist())
(True, True, {1})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from flagstream.simulation.scenarios import reachable_terminals

SECONDS_PER_DAY = 86_400
#: Codes of the extended patterns.
CARD_TESTING, ACCOUNT_TAKEOVER, BUST_OUT = 4, 5, 6
PATTERN_CODES = (CARD_TESTING, ACCOUNT_TAKEOVER, BUST_OUT)
#: Short names of every scenario code (1-3: the reference benchmark's).
SCENARIO_NAMES = {
    1: "large amount",
    2: "compromised merchant",
    3: "compromised card",
    CARD_TESTING: "card testing",
    ACCOUNT_TAKEOVER: "account takeover",
    BUST_OUT: "merchant bust-out",
}


@dataclass(frozen=True)
class CardTesting:
    """Scenario 4: tiny probes on a stolen card, then large purchases.

    Attributes
    ----------
    rate : cards tested per day per 1,000 cards (0.5: 2.5 a day in the reference world).
    probes : inclusive range of the number of probes (3..8).
    probe_amount : range of a probe's amount (0.50..2.00, below any genuine mean).
    probe_gap_s : seconds between consecutive probes (30 s .. 10 min: a script or a person).
    cashout_delay_h : hours from the last probe to the first large purchase (1..48).
    cashouts : inclusive range of large purchases (1..3), an hour or two apart.
    cashout_factor : a large purchase is this multiple of the card's mean amount (3..10).

    >>> CardTesting(rate=1.0).probes
    (3, 8)
    """

    rate: float = 0.5
    probes: tuple[int, int] = (3, 8)
    probe_amount: tuple[float, float] = (0.5, 2.0)
    probe_gap_s: tuple[float, float] = (30.0, 600.0)
    cashout_delay_h: tuple[float, float] = (1.0, 48.0)
    cashouts: tuple[int, int] = (1, 3)
    cashout_factor: tuple[float, float] = (3.0, 10.0)


@dataclass(frozen=True)
class AccountTakeover:
    """Scenario 5: purchases far from the card's home while the cardholder buys as usual.

    Attributes
    ----------
    rate : accounts taken over per day per 1,000 cards (0.5).
    min_distance : the fraudster's spot is at least this far from the card's home (30, six
        reference radii: another city); purchases are at merchants within the world's
        ``radius`` of one merchant there, so at least ``min_distance - radius`` away.
    duration_h : hours the takeover lasts (2..72).
    purchases : inclusive range of purchases (2..8), uniform over the takeover.
    amount_factor : a purchase is this multiple of the card's mean amount (1..4).

    >>> AccountTakeover().min_distance
    30.0
    """

    rate: float = 0.5
    min_distance: float = 30.0
    duration_h: tuple[float, float] = (2.0, 72.0)
    purchases: tuple[int, int] = (2, 8)
    amount_factor: tuple[float, float] = (1.0, 4.0)


@dataclass(frozen=True)
class BustOut:
    """Scenario 6: a colluding merchant charges a ring of stolen cards new to it, then vanishes.

    Attributes
    ----------
    rate : merchants turning per day per 10,000 merchants (0.25: one every 4 days); a
        merchant busts out at most once.
    days : inclusive range of the scheme's length in days (7..21).
    peak_per_day : fraudulent charges a day at the end (10..30); day ``i`` of ``n`` expects
        ``peak * ((i + 1) / n) ** 2``: it starts small and grows.
    ring : inclusive range of ring size (10..40 cards, drawn from all cards).
    amount : range of a charge's base amount (20..200), multiplied by ``0.5 + 1.5 * progress``
        (progress 0 on the first day, 1 on the last).

    >>> BustOut().ring
    (10, 40)
    """

    rate: float = 0.25
    days: tuple[int, int] = (7, 21)
    peak_per_day: tuple[float, float] = (10.0, 30.0)
    ring: tuple[int, int] = (10, 40)
    amount: tuple[float, float] = (20.0, 200.0)


@dataclass(frozen=True)
class Drift:
    """Slow drift of genuine transactions; zero (the default) is off.

    Attributes
    ----------
    amount : relative change of a card's genuine amounts by the last day (0.3: +30 %),
        growing linearly from day 0; each card's own change is drawn from
        ``Normal(amount, |amount| / 2)``. Genuine amounts may thus pass the scenario-1 line.
    hours : hours the time of day moves later by the last day, the same way (clipped to the day).

    >>> Drift().active, Drift(amount=0.2).active
    (False, True)
    """

    amount: float = 0.0
    hours: float = 0.0

    @property
    def active(self) -> bool:
        return self.amount != 0.0 or self.hours != 0.0


class World:
    """What the patterns need of the simulated population (see ``simulate``)."""

    def __init__(
        self,
        customer_xy: np.ndarray,
        terminal_xy: np.ndarray,
        customer_mean: np.ndarray,
        offsets: np.ndarray,
        reach: np.ndarray,
        days: int,
        radius: float,
    ) -> None:
        self.customer_xy, self.terminal_xy, self.customer_mean = customer_xy, terminal_xy, customer_mean
        self.offsets, self.reach, self.days, self.radius = offsets, reach, days, radius
        self.n_reach = np.diff(offsets)


class Injected(NamedTuple):
    """Added transactions, unsorted: card, merchant, seconds from the first day, amount, code."""

    customer: np.ndarray
    terminal: np.ndarray
    t_s: np.ndarray
    amount: np.ndarray
    code: np.ndarray


def _empty() -> Injected:
    i32, f64 = np.zeros(0, np.int32), np.zeros(0, np.float64)
    return Injected(i32, i32, np.zeros(0, np.int64), f64, np.zeros(0, np.int8))


def _starts(rng: np.random.Generator, per_day: float, days: int) -> np.ndarray:
    """Start times (seconds from the first day) of a Poisson number of events each day."""
    count = rng.poisson(per_day, size=days)
    day = np.repeat(np.arange(days, dtype=np.int64), count)
    return day * SECONDS_PER_DAY + (rng.random(len(day)) * SECONDS_PER_DAY).astype(np.int64)


def _group_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` restarted at each group (groups are consecutive runs)."""
    total = np.cumsum(values)
    before = np.repeat(total[np.cumsum(counts) - counts] - values[np.cumsum(counts) - counts], counts)
    return total - before


def _pick_in_reach(
    rng: np.random.Generator, offsets: np.ndarray, reach: np.ndarray, owner: np.ndarray
) -> np.ndarray:
    """For each ``owner`` row, a uniform pick among its reachable terminals (CSR form)."""
    k = np.diff(offsets)[owner]
    pick = np.minimum((rng.random(len(owner)) * k).astype(np.int64), k - 1)
    return reach[offsets[owner] + pick]


def _round(amount: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(amount, 2), 0.01)


def card_testing(world: World, p: CardTesting, seed: int) -> Injected:
    """Scenario 4 rows (see :class:`CardTesting`)."""
    rng = np.random.default_rng([seed, CARD_TESTING])
    eligible = np.flatnonzero(world.n_reach > 0)
    if not len(eligible) or not len(world.terminal_xy):
        return _empty()
    start = _starts(rng, p.rate * len(world.customer_xy) / 1000, world.days)
    card = eligible[rng.integers(0, len(eligible), len(start))]
    probe_at = rng.integers(0, len(world.terminal_xy), len(start))
    n_probe = rng.integers(p.probes[0], p.probes[1] + 1, len(start))
    owner = np.repeat(np.arange(len(start)), n_probe)
    gap = rng.uniform(*p.probe_gap_s, len(owner))
    gap[np.cumsum(n_probe) - n_probe] = 0.0  # the first probe is at the start
    probe_t = start[owner] + _group_cumsum(gap, n_probe).astype(np.int64)
    probe_amount = rng.uniform(*p.probe_amount, len(owner))
    last = probe_t[np.cumsum(n_probe) - 1]
    n_cash = rng.integers(p.cashouts[0], p.cashouts[1] + 1, len(start))
    cash_owner = np.repeat(np.arange(len(start)), n_cash)
    step = rng.uniform(1800.0, 7200.0, len(cash_owner))
    step[np.cumsum(n_cash) - n_cash] = rng.uniform(*p.cashout_delay_h, len(start)) * 3600
    cash_t = last[cash_owner] + _group_cumsum(step, n_cash).astype(np.int64)
    cash_card = card[cash_owner]
    cash_amount = world.customer_mean[cash_card] * rng.uniform(*p.cashout_factor, len(cash_owner))
    cash_terminal = _pick_in_reach(rng, world.offsets, world.reach, cash_card)
    return Injected(
        np.concatenate((card[owner], cash_card)).astype(np.int32),
        np.concatenate((probe_at[owner], cash_terminal)).astype(np.int32),
        np.concatenate((probe_t, cash_t)),
        _round(np.concatenate((probe_amount, cash_amount))),
        np.full(len(owner) + len(cash_owner), CARD_TESTING, np.int8),
    )


def account_takeover(world: World, p: AccountTakeover, seed: int, rounds: int = 64) -> Injected:
    """Scenario 5 rows (see :class:`AccountTakeover`); a takeover whose card has no merchant
    ``min_distance`` away after ``rounds`` draws is left out."""
    rng = np.random.default_rng([seed, ACCOUNT_TAKEOVER])
    n_t = len(world.terminal_xy)
    if not n_t or not len(world.customer_xy):
        return _empty()
    start = _starts(rng, p.rate * len(world.customer_xy) / 1000, world.days)
    card = rng.integers(0, len(world.customer_xy), len(start))
    anchor = np.full(len(start), -1, np.int64)
    for _ in range(rounds):  # rejection sampling of a far merchant, all takeovers at once
        todo = np.flatnonzero(anchor < 0)
        if not len(todo):
            break
        guess = rng.integers(0, n_t, len(todo))
        far = np.hypot(*(world.terminal_xy[guess] - world.customer_xy[card[todo]]).T) >= p.min_distance
        anchor[todo[far]] = guess[far]
    kept = anchor >= 0
    start, card, anchor = start[kept], card[kept], anchor[kept]
    offsets, near = reachable_terminals(world.terminal_xy[anchor], world.terminal_xy, world.radius)
    n_buy = rng.integers(p.purchases[0], p.purchases[1] + 1, len(start))
    owner = np.repeat(np.arange(len(start)), n_buy)
    duration = rng.uniform(*p.duration_h, len(start)) * 3600
    t_s = start[owner] + (rng.random(len(owner)) * duration[owner]).astype(np.int64)
    amount = world.customer_mean[card[owner]] * rng.uniform(*p.amount_factor, len(owner))
    return Injected(
        card[owner].astype(np.int32),
        _pick_in_reach(rng, offsets, near, owner).astype(np.int32),
        t_s,
        _round(amount),
        np.full(len(owner), ACCOUNT_TAKEOVER, np.int8),
    )


def bust_out(world: World, p: BustOut, seed: int) -> Injected:
    """Scenario 6 rows (see :class:`BustOut`)."""
    rng = np.random.default_rng([seed, BUST_OUT])
    n_c, n_t = len(world.customer_xy), len(world.terminal_xy)
    if not n_c or not n_t:
        return _empty()
    start_day = _starts(rng, p.rate * n_t / 10_000, world.days)[:n_t] // SECONDS_PER_DAY
    merchant = rng.choice(n_t, len(start_day), replace=False)  # a merchant busts out once
    length = rng.integers(p.days[0], p.days[1] + 1, len(start_day))
    peak = rng.uniform(*p.peak_per_day, len(start_day))
    ring = rng.integers(p.ring[0], p.ring[1] + 1, len(start_day))
    ring_cards = rng.integers(0, n_c, int(ring.sum()))
    ring_at = np.cumsum(ring) - ring
    scheme = np.repeat(np.arange(len(start_day)), length)  # one entry per scheme-day
    i = np.arange(len(scheme)) - np.repeat(np.cumsum(length) - length, length)
    progress = i / np.maximum(length[scheme] - 1, 1)
    count = rng.poisson(peak[scheme] * ((i + 1) / length[scheme]) ** 2)
    day = start_day[scheme] + i
    inside = day < world.days
    count = np.where(inside, count, 0)
    row_of = np.repeat(np.arange(len(scheme)), count)
    s = scheme[row_of]
    card = ring_cards[ring_at[s] + rng.integers(0, ring[s])]
    t_s = day[row_of] * SECONDS_PER_DAY + (rng.random(len(row_of)) * SECONDS_PER_DAY).astype(np.int64)
    amount = rng.uniform(*p.amount, len(row_of)) * (0.5 + 1.5 * progress[row_of])
    return Injected(
        card.astype(np.int32),
        merchant[s].astype(np.int32),
        t_s,
        _round(amount),
        np.full(len(row_of), BUST_OUT, np.int8),
    )


def inject(
    world: World,
    seed: int,
    enabled: tuple[int, ...],
    card_test: CardTesting | None = None,
    takeover: AccountTakeover | None = None,
    bust: BustOut | None = None,
) -> Injected:
    """The rows of every enabled pattern (codes 4, 5, 6 in ``enabled``), inside the period."""
    parts = []
    if CARD_TESTING in enabled:
        parts.append(card_testing(world, card_test or CardTesting(), seed))
    if ACCOUNT_TAKEOVER in enabled:
        parts.append(account_takeover(world, takeover or AccountTakeover(), seed))
    if BUST_OUT in enabled:
        parts.append(bust_out(world, bust or BustOut(), seed))
    if not parts:
        return _empty()
    rows = Injected(*(np.concatenate(column) for column in zip(*parts, strict=True)))
    inside = rows.t_s < world.days * SECONDS_PER_DAY
    return Injected(*(column[inside] for column in rows))


def drift(
    drift_: Drift, seed: int, customer: np.ndarray, day: np.ndarray, seconds: np.ndarray,
    amount: np.ndarray, genuine: np.ndarray, n_customers: int, days: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Drifted copies of ``seconds`` and ``amount``: only the ``genuine`` rows change.

    A card's amounts are multiplied by ``1 + g * day / days`` and its times moved
    ``h * day / days`` hours later, with ``g ~ Normal(drift.amount, |drift.amount| / 2)`` and
    ``h`` the same for hours, per card (see :class:`Drift`).
    """
    rng = np.random.default_rng([seed, 7])
    g = rng.normal(drift_.amount, abs(drift_.amount) / 2, n_customers)
    h = rng.normal(drift_.hours, abs(drift_.hours) / 2, n_customers)
    frac = day / max(days, 1)
    amount, seconds = amount.copy(), seconds.copy()
    factor = np.maximum(1.0 + g[customer] * frac, 0.05)
    amount[genuine] = _round(amount[genuine] * factor[genuine])
    moved = seconds + (h[customer] * frac * 3600).astype(np.int64)
    seconds[genuine] = np.clip(moved[genuine], 0, SECONDS_PER_DAY - 1)
    return seconds, amount
