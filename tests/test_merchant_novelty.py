"""Merchant novelty: the share of a merchant's transactions from cards new to it, and their
number lately; counted by the scorers from the cards' own memory, carried on the merchant
activity topic, kept in the merchant rows, read by the merchant kernel (its reference is
checked in tests/test_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import START

from flagstream.codec import dumps
from flagstream.features.arena import Arena
from flagstream.features.layout import (
    DAY_MS,
    EARLIER_MERCHANT_WIDTHS,
    FEATURE_NAMES,
    MERCHANT_DELAY_DAYS,
    new_merchant_row,
)
from flagstream.features.merchants import MerchantActivity, MerchantState, count_activity
from flagstream.scoring.reasons import describe
from flagstream.streams.core import ScoringCore

SHARE = FEATURE_NAMES.index("merchant_new_card_share_7d")
NEW_CARDS = FEATURE_NAMES.index("merchant_new_cards_2d")


def tx(i: int, card: str, merchant: str, day: int, minute: int) -> bytes:
    return dumps({"transaction_id": f"t-{i}", "account_id": card, "merchant_id": merchant,
                  "amount": 20.0, "timestamp": START + day * DAY_MS + minute * 60_000})


def test_a_merchant_suddenly_charging_cards_it_never_saw_stands_out():
    """A neighbourhood shop sees the same 30 cards every day; a bust-out merchant starts
    charging a ring of 40 new cards a day. Once those days are settled (the merchant's
    windows end MERCHANT_DELAY_DAYS back, like its counts and fraud rates: every worker
    then reads the same replicated rows), their novelty features tell them apart."""
    core = ScoringCore()
    records, i = [], 0
    for day in range(14):
        for k in range(30):  # regulars
            records.append(tx(i, f"c-{k}", "m-shop", day, k))
            i += 1
        if day in (5, 6):
            for k in range(40):  # the ring: cards that never bought here
                records.append(tx(i, f"ring-{day}-{k}", "m-bust", day, 600 + k))
                i += 1
    for part in np.array_split(np.array(records, dtype=object), 20):  # as batches come
        outcome = core.process(list(part))
        core.merchants.apply(outcome.activity)
    settled = 6 + MERCHANT_DELAY_DAYS
    last = core.process([tx(i, "c-1", "m-shop", settled, 900), tx(i + 1, "c-2", "m-bust", settled, 901),
                         tx(i + 2, "c-3", "m-bust", settled - 3, 902)])
    shop, bust, early = last.features
    assert bust[SHARE] == 1.0 and bust[NEW_CARDS] == 80
    assert shop[SHARE] < 0.2 and shop[NEW_CARDS] == 0
    assert early[SHARE] == 0.0 and early[NEW_CARDS] == 0, "not settled yet: not read"
    assert "cards new to this merchant" in describe("merchant_new_cards_2d", bust[NEW_CARDS])


def test_activity_counts_new_cards_and_old_records_without_them_still_read():
    activity = count_activity(["m-1", "m-1", "m-2"], np.array([0, 5, DAY_MS]), np.array([1.0, 0.0, 1.0]))
    assert activity.new_cards.tolist() == [1.0, 1.0]
    wire = activity.to_wire()
    again = MerchantActivity.from_wire(wire)
    assert again.new_cards.tolist() == [1.0, 1.0] and again.counts.tolist() == [2.0, 1.0]
    older = MerchantActivity.from_wire({k: v for k, v in wire.items() if k != "c"})
    assert older.new_cards.tolist() == [0.0, 0.0], "written before new cards were counted"
    for bad in ([1.0], [-1.0, 0.0], [float("inf"), 0.0], ["1", 0], [True, 0]):
        with pytest.raises(ValueError, match="merchant activity"):
            MerchantActivity.from_wire(wire | {"c": bad})


def test_merchant_rows_stored_before_novelty_are_adopted():
    """A merchant row of the earlier layout keeps its counts and fraud labels after the
    upgrade, with no new-card counts."""
    state = MerchantState()
    state.apply(MerchantActivity(["m-1"], np.array([START // DAY_MS]), np.array([5.0]), np.array([1.0])))
    old = state.arena.rows[0, : EARLIER_MERCHANT_WIDTHS[0]].tobytes()
    adopted = MerchantState(Arena(new_merchant_row, loader=lambda key: old,
                                  prefix_widths=EARLIER_MERCHANT_WIDTHS))
    row = adopted.arena.row("m-1")
    assert adopted.arena.refused == 0
    width = EARLIER_MERCHANT_WIDTHS[0]
    np.testing.assert_array_equal(row[:width], state.arena.rows[0, :width])
    assert not row[width:].any()


def test_every_feature_reads_as_a_sentence():
    for name in FEATURE_NAMES:
        assert not describe(name, 1.0).startswith(f"{name} ="), name
