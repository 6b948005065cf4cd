"""Spatial reachability and fraud scenarios for :mod:`flagstream.simulation.simulator`.

Everything here works on whole numpy columns; the only Python loops run over
days or over the cells of a small grid, never over transactions.

>>> import numpy as np
>>> offsets, terminals = reachable_terminals(
...     np.array([[50.0, 50.0], [0.0, 0.0]]), np.array([[52.0, 50.0], [90.0, 90.0]]), 5.0
... )
>>> offsets.tolist(), terminals.tolist()
([0, 1, 1], [0])
>>> daily_draw(seed=0, day=3, population=10, k=2) == daily_draw(seed=0, day=3, population=10, k=2)
True
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np

#: Amount above which a transaction is fraudulent (scenario 1).
FRAUD_AMOUNT = 220.0
#: Terminals compromised per day and how many days (from the draw day) they stay compromised.
TERMINALS_PER_DAY, TERMINAL_WINDOW_DAYS = 2, 28
#: Customers compromised per day, the length of their window, and the amount multiplier.
CUSTOMERS_PER_DAY, CUSTOMER_WINDOW_DAYS, CUSTOMER_AMOUNT_FACTOR = 3, 14, 5.0
#: Coordinates of customers and terminals lie in ``[0, EXTENT]^2``.
EXTENT = 100.0
_MAX_CELLS = 1024


def reachable_terminals(
    customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Terminals within Euclidean distance ``< radius`` of each customer, in CSR form.

    Terminals are bucketed into a square grid whose cells are at least ``radius`` wide, so
    only the 3x3 block of cells around a customer holds candidates.

    Parameters
    ----------
    customer_xy, terminal_xy : ndarray of shape (n, 2)
        Locations in ``[0, EXTENT]^2``.
    radius : float
        Reach of a customer.

    Returns
    -------
    offsets : ndarray of int64, shape (n_customers + 1,)
        Customer ``c`` reaches ``terminals[offsets[c]:offsets[c + 1]]``.
    terminals : ndarray of int64
        Terminal indices, ascending within each customer.
    """
    n_c, n_t = len(customer_xy), len(terminal_xy)
    cells = int(min(max(EXTENT // radius, 1), _MAX_CELLS))  # cell width EXTENT/cells >= radius
    width = EXTENT / cells

    def cell_of(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ij = np.clip((xy / width).astype(np.int64), 0, cells - 1)
        return ij[:, 0], ij[:, 1]

    ti, tj = cell_of(terminal_xy)
    by_cell = np.argsort(ti * cells + tj, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(ti * cells + tj, minlength=cells**2))))
    ci, cj = cell_of(customer_xy)
    cand_c, cand_t = [], []
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ni, nj = ci + di, cj + dj
            ok = (ni >= 0) & (ni < cells) & (nj >= 0) & (nj < cells)
            flat = ni[ok] * cells + nj[ok]
            lo, count = starts[flat], starts[flat + 1] - starts[flat]
            first = np.repeat(np.cumsum(count) - count, count)
            pos = np.arange(count.sum()) - first + np.repeat(lo, count)
            cand_c.append(np.repeat(np.flatnonzero(ok), count))
            cand_t.append(by_cell[pos])
    c = np.concatenate(cand_c) if cand_c else np.zeros(0, np.int64)
    t = np.concatenate(cand_t) if cand_t else np.zeros(0, np.int64)
    near = ((customer_xy[c] - terminal_xy[t]) ** 2).sum(axis=1) < radius * radius
    c, t = c[near], t[near]
    order = np.argsort(c * max(n_t, 1) + t, kind="stable")
    offsets = np.concatenate(([0], np.cumsum(np.bincount(c, minlength=n_c))))
    return offsets.astype(np.int64), t[order].astype(np.int64)


def daily_draw(seed: int, day: int, population: int, k: int) -> list[int]:
    """Draw ``k`` distinct indices out of ``range(population)`` for one day.

    Each ``(seed, day)`` has its own :class:`random.Random`, seeded with ``seed * 2**32 + day``
    (just ``day`` for seed 0, the convention of the reference benchmark), so the schedule of
    compromised terminals/customers does not depend on anything else being simulated.
    """
    return random.Random((seed << 32) | day).sample(range(population), min(k, population))


def window_mask(
    draws: Iterable[tuple[int, list[int]]], size: int, days: int, window: int
) -> np.ndarray:
    """Boolean ``(size, days)`` matrix: entity drawn on day ``d`` is marked on ``[d, d+window)``."""
    mask = np.zeros((size, days), dtype=bool)
    for day, chosen in draws:
        mask[chosen, day : day + window] = True
    return mask


def apply_scenarios(
    *,
    customer: np.ndarray,
    terminal: np.ndarray,
    day: np.ndarray,
    amount: np.ndarray,
    n_customers: int,
    n_terminals: int,
    days: int,
    seed: int,
    scenarios: Iterable[int] = (1, 2, 3),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label fraud in place of the reference benchmark's three scenarios.

    The columns must be ordered by customer, then day (the order they are generated in).
    Scenarios run in the order 1, 2, 3; ``is_fraud`` is their union and ``scenario`` keeps the
    first scenario that flagged a transaction.

    1. ``amount > FRAUD_AMOUNT``.
    2. Each day ``d`` draws ``TERMINALS_PER_DAY`` terminals; all their transactions on days
       ``d .. d + TERMINAL_WINDOW_DAYS - 1`` are fraud.
    3. Each day ``d`` draws ``CUSTOMERS_PER_DAY`` customers; of their pooled transactions on
       days ``d .. d + CUSTOMER_WINDOW_DAYS - 1``, ``floor(n / 3)`` chosen uniformly get their
       amount multiplied by ``CUSTOMER_AMOUNT_FACTOR`` (and re-rounded to cents) and are fraud.

    Returns
    -------
    amount : ndarray of float64
        A copy, with scenario-3 amounts multiplied.
    is_fraud, scenario : ndarray of int8
    """
    enabled = set(scenarios)
    amount = amount.copy()
    is_fraud = np.zeros(len(amount), dtype=np.int8)
    scenario = np.zeros(len(amount), dtype=np.int8)

    def flag(index: np.ndarray, label: int) -> None:
        is_fraud[index] = 1
        fresh = index[scenario[index] == 0]
        scenario[fresh] = label

    if 1 in enabled:
        flag(np.flatnonzero(amount > FRAUD_AMOUNT), 1)
    if 2 in enabled and n_terminals:
        draws = ((d, daily_draw(seed, d, n_terminals, TERMINALS_PER_DAY)) for d in range(days))
        compromised = window_mask(draws, n_terminals, days, TERMINAL_WINDOW_DAYS)
        flag(np.flatnonzero(compromised[terminal, day]), 2)
    if 3 in enabled and n_customers:
        rng = np.random.default_rng([seed, 3])
        offsets = np.concatenate(([0], np.cumsum(np.bincount(customer, minlength=n_customers))))
        for d in range(days):
            parts = []
            for c in daily_draw(seed, d, n_customers, CUSTOMERS_PER_DAY):
                lo, hi = offsets[c], offsets[c + 1]
                a, b = np.searchsorted(day[lo:hi], [d, d + CUSTOMER_WINDOW_DAYS])
                parts.append(np.arange(lo + a, lo + b))
            pool = np.concatenate(parts)
            if len(pool) // 3:
                chosen = pool[rng.choice(len(pool), len(pool) // 3, replace=False)]
                amount[chosen] = np.round(amount[chosen] * CUSTOMER_AMOUNT_FACTOR, 2)
                flag(chosen, 3)
    return amount, is_fraud, scenario


def expected_window_share(population: int, per_day: int, window: int, days: int) -> float:
    """Expected share of entity-days inside at least one compromise window.

    An entity is compromised on day ``D`` unless it escaped each of the ``min(window, D + 1)``
    preceding daily draws, each of which misses it with probability ``1 - per_day/population``.
    Used to derive the expected scenario-2 share (and, divided by three, scenario-3 share).
    """
    if not population or not days:
        return 0.0
    w = np.minimum(window, np.arange(days) + 1)
    return float(np.mean(1.0 - (1.0 - min(per_day, population) / population) ** w))
