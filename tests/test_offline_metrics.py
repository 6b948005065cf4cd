"""Offline metrics (flagstream.evaluation.detection_metrics) against hand-computed cases and
brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.evaluation.detection_metrics import (
    average_precision,
    average_ranks,
    card_precision_at_k,
    evaluate_window,
    known_compromised_mask,
    operating_point,
    precision_recall_curve,
    roc_auc,
)

# Scores drawn from a small grid so that ties are common.
scores_on_grid = st.integers(0, 6).map(lambda v: v / 6)


@st.composite
def labelled_scores(draw, min_size=1, max_size=40):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    s = np.array(draw(st.lists(scores_on_grid, min_size=n, max_size=n)), dtype=float)
    return y, s


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def brute_ap(y, s):
    """sum over distinct thresholds t (high to low) of (R(t) - R(previous t)) * P(t)."""
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        flagged = s >= t
        tp = int((flagged & (y == 1)).sum())
        recall = tp / (y == 1).sum()
        total += (recall - prev_recall) * tp / flagged.sum()
        prev_recall = recall
    return total


# --- hand-computed cases --------------------------------------------------------------
def test_auc_and_ap_hand_cases():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, s) == 0.75  # 3 of the 4 (fraud, legit) pairs ordered right
    assert average_precision(y, s) == pytest.approx((1 / 2) * 1 + (1 / 2) * (2 / 3))
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts half
    assert average_precision([1, 0], [0.5, 0.5]) == 0.5  # tied scores enter together
    assert roc_auc([0, 1, 1], [0.2, 0.9, 0.3]) == 1.0
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_undefined_cases_are_nan():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert math.isnan(roc_auc([0, 0], [0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.2, 0.3]))
    assert precision_recall_curve([0], [0.1])[0].size == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        average_precision([0, 1], [0.1, np.nan])


def test_average_ranks_hand_case():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4, 1, 4, 2, 4]


def test_card_precision_hand_case():
    # day 0: card 1 (fraud) 0.9, card 2 0.8, card 3 0.1; top-2 → 1 fraud → 0.5
    # day 1: card 1 again (already detected, removed), card 2 fraud 0.7, card 3 0.6 → 0.5
    days = np.array([0, 0, 0, 0, 1, 1, 1])
    cards = np.array([1, 2, 3, 1, 1, 2, 3])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.99, 0.7, 0.6])
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    mean, per_day, day_values = card_precision_at_k(days, cards, scores, labels, k=2)
    assert per_day.tolist() == [0.5, 0.5] and mean == 0.5 and day_values.tolist() == [0, 1]
    # without removal card 1 stays on day 1 and takes a top-2 place: 2 frauds → 1.0
    _, kept, _ = card_precision_at_k(days, cards, scores, labels, k=2, remove_detected=False)
    assert kept.tolist() == [0.5, 1.0]
    # fewer cards than k still divides by k
    assert card_precision_at_k([0], [0], [0.5], [1], k=100)[0] == 0.01


def test_known_compromised_mask_follows_the_reference_days():
    # test day 20; known window starts on day 6; a fraud on day <= 12 is known by day 20
    days = np.array([5, 6, 12, 13, 20, 20, 20, 20])
    cards = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    test = days == 20
    mask = known_compromised_mask(days, cards, labels, test, known_from_day=6, delay_days=7)
    # card 0's fraud is before the known window; card 3's is too recent
    assert mask.tolist() == [False] * 4 + [False, True, True, False]


def test_operating_point():
    op = operating_point(np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.2, 0.7, 0.6, 0.1]), 0.5, 2)
    assert (op.flagged, op.true_positives) == (3, 1)
    assert op.recall == 0.5 and op.false_discovery_rate == pytest.approx(2 / 3)
    assert op.flags_per_day == 1.5
    assert operating_point(np.array([0]), np.array([0.1]), 0.5, 1).false_discovery_rate == 0.0


def test_evaluate_window_counts_and_ranges():
    rng = np.random.default_rng(3)
    n, day = 4000, 86_400_000
    ts = np.sort(rng.integers(0, 30 * day, n))
    y = rng.random(n) < 0.05
    s = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    cards = rng.integers(0, 50, n)
    scen = np.where(y, rng.integers(1, 4, n), 0)
    m, daily, precision, recall = evaluate_window(ts, y, s, s >= 0.5, cards, scen, 21 * day, 28 * day, 0.5)
    assert m["n_events"] == n and m["n_fraud"] == int(y.sum())
    test = (ts >= 21 * day) & (ts < 28 * day)
    assert m["n_test_events"] + m["n_excluded_known"] == int(test.sum())
    for key in ("auc", "average_precision", "card_precision_at_100", "recall"):
        assert 0.0 <= m[key] <= 1.0
    assert len(daily) == 30 and sum(r["test"] for r in daily) == 9  # days 21..29
    assert precision.size == recall.size and recall[-1] == 1.0
    everything, *_ = evaluate_window(ts, y, s, s >= 0.5, cards, scen, 21 * day, 28 * day, 0.5, "all")
    assert everything["n_excluded_known"] == 0 and everything["auc"] == everything["auc_all"]


# --- properties against brute force -------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(labelled_scores(min_size=2))
def test_auc_matches_pairwise_definition(data):
    y, s = data
    if 0 < y.sum() < len(y):
        assert roc_auc(y, s) == pytest.approx(brute_auc(y, s))
    else:
        assert math.isnan(roc_auc(y, s))


@settings(max_examples=200, deadline=None)
@given(labelled_scores())
def test_ap_matches_threshold_definition(data):
    y, s = data
    if y.any():
        assert average_precision(y, s) == pytest.approx(brute_ap(y, s))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_ap_without_ties_is_mean_precision_at_each_fraud(labels, rnd):
    y = np.array(labels)
    s = np.array(rnd.sample(range(1000), len(y)), dtype=float)  # distinct scores
    if not y.any():
        return
    ranked = y[np.argsort(-s)]
    hits = np.cumsum(ranked)
    expected = np.mean([hits[i] / (i + 1) for i in np.flatnonzero(ranked)])
    assert average_precision(y, s) == pytest.approx(expected)


@settings(max_examples=100, deadline=None)
@given(labelled_scores(min_size=2))
def test_auc_is_invariant_under_monotone_transforms(data):
    y, s = data
    if 0 < y.sum() < len(y):
        assert roc_auc(y, np.exp(3 * s) - 7) == pytest.approx(roc_auc(y, s))


@settings(max_examples=100, deadline=None)
@given(st.lists(scores_on_grid, min_size=1, max_size=40))
def test_average_ranks_match_brute_force(values):
    v = np.array(values)
    expected = [(v < x).sum() + ((v == x).sum() + 1) / 2 for x in v]
    assert average_ranks(v).tolist() == pytest.approx(expected)


def brute_card_precision(days, cards, scores, labels, k):
    detected: set[int] = set()
    per_day = []
    for day in sorted(set(days)):
        best: dict[int, float] = {}
        fraud: dict[int, bool] = {}
        for d, c, s, y in zip(days, cards, scores, labels, strict=True):
            if d != day or c in detected:
                continue
            best[c] = max(best.get(c, -1.0), s)
            fraud[c] = fraud.get(c, False) or bool(y)
        top = sorted(best, key=lambda c: (-best[c], c))[:k]
        per_day.append(sum(fraud[c] for c in top) / k)
        detected |= {c for c in top if fraud[c]}
    return float(np.mean(per_day))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 8), scores_on_grid, st.integers(0, 1)),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 5),
)
def test_card_precision_matches_brute_force(rows, k):
    days, cards, scores, labels = (list(c) for c in zip(*rows, strict=True))
    mean, _, _ = card_precision_at_k(days, cards, scores, labels, k=k)
    assert mean == pytest.approx(brute_card_precision(days, cards, scores, labels, k))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5), st.integers(0, 1)), min_size=1, max_size=50),
    st.integers(0, 10),
)
def test_known_compromised_mask_matches_brute_force(rows, known_from):
    days, cards, labels = (np.array(c) for c in zip(*rows, strict=True))
    test = days >= 14
    mask = known_compromised_mask(days, cards, labels, test, known_from, 7)
    for i in range(len(days)):
        known = any(
            labels[j] and cards[j] == cards[i] and known_from <= days[j] <= days[i] - 8
            for j in range(len(days))
        )
        assert mask[i] == (test[i] and known)
