"""Velocity and novelty features: the Numba kernel against the pure-Python reference on
dense random histories (Hypothesis), and what they say about a card-testing attack."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import ACCOUNT_COLUMNS, START

from flagstream.features.kernels import update_accounts
from flagstream.features.layout import (
    ACCOUNT_WIDTH,
    APPLIED,
    FEATURE_NAMES,
    HOUR_MS,
    MAX_MERCHANT_AGE_DAYS,
    MERCHANT_NOVELTY,
    N_FEATURES,
    N_KNOWN_MERCHANTS,
    N_RECENT_EVENTS,
    VELOCITY,
    new_account_row,
)
from flagstream.features.reference import ReferenceAccounts

VELOCITY_NAMES = FEATURE_NAMES[VELOCITY:MERCHANT_NOVELTY]


def run_kernel(events: list[tuple[int, int, float, int]], offsets: bool = False):
    """(features, status, rows) for events (account, ms after START, amount, merchant)."""
    n = len(events)
    rows = np.stack([new_account_row() for _ in range(3)])
    out, status = np.zeros((n, N_FEATURES)), np.zeros(n, np.int8)
    update_accounts(
        rows,
        np.array([e[0] for e in events], np.int64),
        np.arange(n, dtype=np.int64) if offsets else np.full(n, -1, np.int64),
        np.array([START + e[1] for e in events], np.int64),
        np.array([e[2] for e in events], np.float64),
        np.arange(n, dtype=np.float64),  # distinct transaction ids
        np.array([float(e[3]) for e in events]),
        np.full((n, 4), np.nan),  # no locations
        out,
        status,
    )
    return out, status, rows


dense = st.lists(
    st.tuples(
        st.integers(0, 2),  # account
        st.integers(0, 3 * 24 * 60).map(lambda m: m * 60_000),  # within 3 days, minute steps
        st.one_of(st.floats(0.5, 6.0), st.floats(6.0, 900.0)),  # probes and purchases
        st.integers(0, N_KNOWN_MERCHANTS + 8),  # more merchants than a card remembers
    ),
    min_size=1,
    max_size=140,
)


@settings(max_examples=120, deadline=None)
@given(dense, st.booleans())
def test_velocity_kernel_matches_reference(events, sort_by_time):
    if sort_by_time:
        events = sorted(events, key=lambda e: e[1])
    out, status, _ = run_kernel(events)
    ref = ReferenceAccounts()
    for i, (account, at, amount, merchant) in enumerate(events):
        feats, ref_status = ref.apply(str(account), -1, START + at, amount, float(i), float(merchant))
        assert status[i] == ref_status == APPLIED
        expected = [feats[FEATURE_NAMES[c]] for c in ACCOUNT_COLUMNS]
        np.testing.assert_allclose(out[i, ACCOUNT_COLUMNS], expected, rtol=1e-9, atol=1e-9)


def test_card_testing_then_cashout():
    """Five probes of about a dollar a few minutes apart at one new merchant, then a large
    purchase at a merchant the card knows, six hours later."""
    history = [(0, d * 86_400_000, 40.0, 1 + d % 3) for d in range(10)]  # 10 days of habit
    t0 = 10 * 86_400_000
    probes = [(0, t0 + k * 120_000, 1.0 + k / 10, 99) for k in range(5)]
    cashout = [(0, t0 + 6 * HOUR_MS, 400.0, 2)]
    out, status, _ = run_kernel(history + probes + cashout)
    assert (status == APPLIED).all()
    feats = [dict(zip(VELOCITY_NAMES, row[VELOCITY:MERCHANT_NOVELTY].tolist(), strict=True)) for row in out]
    first, last_probe, cash = feats[10], feats[14], feats[15]
    assert first["is_new_merchant"] == 1.0 and first["card_days_since_merchant"] == MAX_MERCHANT_AGE_DAYS
    assert last_probe["is_new_merchant"] == 0.0 and last_probe["card_count_10m"] == 5.0
    assert last_probe["card_small_count_48h"] == 5.0 and last_probe["amount_after_probes"] == 0.0
    assert cash["card_count_1h"] == 1.0 and cash["card_small_count_48h"] == 5.0
    assert cash["amount_after_probes"] == 400.0 and cash["is_new_merchant"] == 0.0
    # the probed merchant and this one: the habit of the day before is over 24 h back
    assert cash["card_days_since_merchant"] > 0 and cash["card_distinct_merchants_24h"] == 2.0
    # habit alone: known merchants, nothing small, no probes
    assert feats[9]["is_new_merchant"] == 0.0 and feats[9]["amount_after_probes"] == 0.0


def test_memory_is_bounded_and_forgets_least_recently_used():
    """A card that visits more merchants than it remembers forgets the oldest; its row never grows."""
    n = N_KNOWN_MERCHANTS + 1
    visits = [(0, k * 60_000, 10.0, k) for k in range(n)] + [(0, n * 60_000, 10.0, 0)]
    visits += [(0, (n + 1) * 60_000, 10.0, n - 1)]
    out, _, rows = run_kernel(visits)
    new = out[:, FEATURE_NAMES.index("is_new_merchant")]
    assert new[:n].tolist() == [1.0] * n
    assert new[n] == 1.0  # merchant 0 was evicted by merchant n - 1
    assert new[n + 1] == 0.0  # the most recent one is still known
    assert rows.shape[1] == ACCOUNT_WIDTH
    assert out[-1, FEATURE_NAMES.index("card_count_1h")] == min(len(visits), N_RECENT_EVENTS)


def test_replay_leaves_velocity_state_unchanged():
    events = [(k % 2, k * 30_000, 1.0 + k, k % 5) for k in range(30)]
    _, _, rows = run_kernel(events, offsets=True)
    again = rows.copy()
    out, status = np.zeros((30, N_FEATURES)), np.zeros(30, np.int8)
    update_accounts(
        again, np.array([e[0] for e in events], np.int64), np.arange(30, dtype=np.int64),
        np.array([START + e[1] for e in events], np.int64), np.ones(30), np.arange(30.0),
        np.zeros(30), np.full((30, 4), np.nan), out, status,
    )
    assert (status == 1).all()
    np.testing.assert_array_equal(again, rows)


def test_rows_stored_before_velocity_are_adopted():
    """An account row written by the layout without velocity state keeps its windows and
    offset after an upgrade, and starts with no recent events or merchants."""
    from flagstream.features.arena import Arena
    from flagstream.features.layout import EARLIER_ACCOUNT_WIDTHS, LAST_OFFSET, TOTAL_COUNT

    _, _, rows = run_kernel([(0, k * 60_000, 20.0, k) for k in range(5)], offsets=True)
    old = rows[0, : EARLIER_ACCOUNT_WIDTHS[0]].tobytes()
    arena = Arena(new_account_row, loader=lambda key: old, prefix_widths=EARLIER_ACCOUNT_WIDTHS)
    row = arena.row("c-1")
    assert arena.refused == 0 and row[TOTAL_COUNT] == 5.0 and row[LAST_OFFSET] == 4.0
    width = EARLIER_ACCOUNT_WIDTHS[0]
    np.testing.assert_array_equal(row[width:], new_account_row()[width:])
    out, status = np.zeros((1, N_FEATURES)), np.zeros(1, np.int8)
    update_accounts(arena.rows, np.zeros(1, np.int64), np.array([5]), np.array([START + 6 * 60_000]),
                    np.array([20.0]), np.array([99.0]), np.array([1.0]), np.full((1, 4), np.nan), out,
                    status)
    assert status[0] == APPLIED
    assert out[0, FEATURE_NAMES.index("card_count_1h")] == 1.0  # the old events are not in the ring
    assert out[0, FEATURE_NAMES.index("is_new_merchant")] == 1.0
    assert out[0, FEATURE_NAMES.index("amount_to_card_mean")] == 1.0  # from the kept totals
    assert Arena(new_account_row, loader=lambda key: old).row("c-1")[TOTAL_COUNT] == 0.0  # no prefix: refused
