"""Offline metrics of a fraud backtest, in plain numpy.

Ranking metrics follow the definitions used by the card-fraud benchmark this
project measures itself against (see ``shared/reference/fraud-handbook-facts.md``):
AUC ROC with ties counted as half, Average Precision as scikit-learn's step-wise
sum, and Card Precision@k with already-detected cards removed from later days.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1])
>>> s = np.array([0.1, 0.4, 0.35, 0.8])
>>> roc_auc(y, s), round(average_precision(y, s), 4)
(0.75, 0.8333)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order, tied values sharing their mean rank.

    >>> average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # start index of each run of equal values, and the run each sorted position belongs to
    new_run = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], v.size]  # exclusive
    run_of = np.cumsum(new_run) - 1
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(v.size)
    ranks[order] = mean_rank[run_of]
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a fraud > score of a legit), ties counting 1/2.

    Parameters
    ----------
    labels : array of 0/1 (or bool)
    scores : array of float, same length

    Returns
    -------
    float
        NaN when only one class is present (the AUC is undefined).
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(average_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def precision_recall_curve(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold, highest threshold first.

    Returns
    -------
    precision, recall, thresholds : arrays of equal length
        ``precision[i]`` and ``recall[i]`` are for flagging every score >= ``thresholds[i]``.
        Empty when there are no positives.
    """
    y, s = _check(labels, scores)
    if not y.any():
        return np.empty(0), np.empty(0), np.empty(0)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each group of equal scores: a threshold includes the whole group
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    flagged = last + 1.0
    return tps / flagged, tps / tps[-1], s_sorted[last]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average Precision as scikit-learn defines it: ``sum_n (R_n - R_{n-1}) * P_n``.

    The sum runs over distinct score thresholds from the highest down, so tied scores
    enter together (no interpolation).

    Returns
    -------
    float
        NaN when there are no positives.
    """
    precision, recall, _ = precision_recall_curve(labels, scores)
    if precision.size == 0:
        return float("nan")
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def card_precision_at_k(
    days: np.ndarray,
    cards: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    k: int = 100,
    remove_detected: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Card Precision@k averaged over days, as in the reference benchmark.

    Each day, every card gets its highest score and is fraudulent if any of its
    transactions that day is; cards are ranked by that score and the precision of the
    top ``k`` is ``frauds among them / k``. With ``remove_detected``, the fraudulent
    cards found in a day's top ``k`` are left out of every later day.

    Parameters
    ----------
    days, cards : integer arrays (day number and card code of each transaction)
    scores, labels : arrays of the same length
    k : int
    remove_detected : bool

    Returns
    -------
    mean, per_day, day_values : float, array, array
        The mean over days, each day's precision and the days (ascending).
        Ties in the day's ranking are broken by card code.
    """
    y, s = _check(labels, scores)
    days = np.asarray(days, dtype=np.int64).ravel()
    cards = np.asarray(cards, dtype=np.int64).ravel()
    day_values = np.unique(days)
    detected = np.zeros(int(cards.max()) + 1 if cards.size else 0, dtype=bool)
    per_day = np.zeros(day_values.size)
    for n, day in enumerate(day_values):
        sel = (days == day) & ~detected[cards]
        c, sc, lab = cards[sel], s[sel], y[sel]
        if c.size == 0:
            continue
        ids, inverse = np.unique(c, return_inverse=True)
        best = np.full(ids.size, -np.inf)
        np.maximum.at(best, inverse, sc)
        fraud = np.zeros(ids.size, dtype=bool)
        np.logical_or.at(fraud, inverse, lab)
        top = np.lexsort((ids, -best))[:k]
        per_day[n] = fraud[top].sum() / k
        if remove_detected:
            detected[ids[top][fraud[top]]] = True
    mean = float(per_day.mean()) if per_day.size else float("nan")
    return mean, per_day, day_values


def known_compromised_mask(
    days: np.ndarray,
    cards: np.ndarray,
    labels: np.ndarray,
    test_days: np.ndarray,
    known_from_day: int,
    delay_days: int = 7,
) -> np.ndarray:
    """Which test transactions the reference protocol excludes as known-compromised cards.

    For a test day ``t``, a card is known compromised when it had a fraud on any day
    from ``known_from_day`` (the start of the reference's training week) up to
    ``t - delay_days - 1``; all its transactions on day ``t`` leave the test set.

    Parameters
    ----------
    days, cards, labels : arrays over every transaction (day number, card code, 0/1)
    test_days : bool array, True for the transactions in the test window
    known_from_day : int
    delay_days : int

    Returns
    -------
    bool array
        True for test transactions to exclude.
    """
    days = np.asarray(days, dtype=np.int64).ravel()
    cards = np.asarray(cards, dtype=np.int64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    test = np.asarray(test_days, dtype=bool).ravel()
    n_cards = int(cards.max()) + 1 if cards.size else 0
    # first fraud day of each card within the known window's start
    first = np.full(n_cards, np.iinfo(np.int64).max)
    frauds = y & (days >= known_from_day)
    np.minimum.at(first, cards[frauds], days[frauds])
    return test & (first[cards] <= days - delay_days - 1)


@dataclass(frozen=True)
class OperatingPoint:
    """Flagging at a fixed threshold: how much fraud it catches and what it costs."""

    threshold: float
    flagged: int
    true_positives: int
    recall: float
    false_discovery_rate: float
    flags_per_day: float


def operating_point(
    labels: np.ndarray, scores: np.ndarray, threshold: float, n_days: float
) -> OperatingPoint:
    """Recall, false-discovery rate (share of flagged that are legitimate) and flags a day.

    >>> operating_point(np.array([1, 0, 1, 0]), np.array([.9, .8, .2, .1]), .5, 2.0)
    OperatingPoint(threshold=0.5, flagged=2, true_positives=1, recall=0.5, \
false_discovery_rate=0.5, flags_per_day=1.0)
    """
    y, s = _check(labels, scores)
    return flagging_outcome(y, s >= threshold, n_days, threshold)


def flagging_outcome(labels: np.ndarray, flags: np.ndarray, n_days: float,
                     threshold: float = float("nan")) -> OperatingPoint:
    """What the flags that were raised caught and cost (a moving threshold too).

    >>> flagging_outcome(np.array([1, 0, 1, 0]), np.array([True, True, False, False]), 2.0).recall
    0.5
    """
    y, flags = np.asarray(labels).astype(bool), np.asarray(flags, dtype=bool)
    flagged = int(flags.sum())
    tp = int((flags & y).sum())
    positives = int(y.sum())
    return OperatingPoint(
        threshold=float(threshold),
        flagged=flagged,
        true_positives=tp,
        recall=tp / positives if positives else float("nan"),
        false_discovery_rate=(flagged - tp) / flagged if flagged else 0.0,
        flags_per_day=flagged / n_days if n_days else float("nan"),
    )


#: The reference protocol: a training week, then a 7-day label delay, then the test week.
REFERENCE_TRAIN_DAYS, REFERENCE_DELAY_DAYS = 7, 7
DAY_MS = 86_400_000


def ranked_window(ts_ms: np.ndarray, labels: np.ndarray, cards: np.ndarray, start_ms: int,
                  end_ms: int, protocol: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """``(test, ranked)``: the transactions in ``[start_ms, end_ms)``, and those of them the
    ranking metrics count (``protocol`` ``"reference"`` leaves known-compromised cards out,
    :func:`known_compromised_mask`; ``"all"`` keeps every one).

    >>> day = DAY_MS
    >>> ts = np.array([0, 10 * day, 20 * day, 20 * day])
    >>> test, ranked = ranked_window(ts, np.array([0, 1, 0, 0]), np.array([7, 7, 7, 8]),
    ...                              20 * day, 21 * day)
    >>> test.tolist(), ranked.tolist()
    ([False, False, True, True], [False, False, False, True])
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    test = (ts >= start_ms) & (ts < end_ms)
    if protocol == "all":
        return test, test
    if protocol != "reference":
        raise ValueError(f"protocol must be 'reference' or 'all', got {protocol!r}")
    known_from = start_ms // DAY_MS - REFERENCE_TRAIN_DAYS - REFERENCE_DELAY_DAYS
    exclude = known_compromised_mask(ts // DAY_MS, cards, y, test, known_from, REFERENCE_DELAY_DAYS)
    return test, test & ~exclude


def ranking_figures(days: np.ndarray, cards: np.ndarray, labels: np.ndarray,
                    scores: np.ndarray) -> dict[str, float]:
    """AUC, AP and CP@100 of ranked transactions (the benchmark's three figures).

    >>> ranking_figures(np.zeros(4), np.arange(4), np.array([0, 0, 1, 1]),
    ...                 np.array([0.1, 0.4, 0.35, 0.8]))["auc"]
    0.75
    """
    cp, _, _ = card_precision_at_k(days, cards, scores, labels, k=100)
    return {"auc": roc_auc(labels, scores), "average_precision": average_precision(labels, scores),
            "card_precision_at_100": cp}


def evaluate_window(
    ts_ms: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    cards: np.ndarray,
    scenarios: np.ndarray,
    start_ms: int,
    end_ms: int,
    threshold: float,
    protocol: str = "reference",
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Every metric of a backtest's test window ``[start_ms, end_ms)``, plus per-day rows.

    Ranking metrics (AUC, AP, CP@100) follow the reference protocol when ``protocol`` is
    ``"reference"``: a card with a fraud from the start of the reference training week
    (14 days before the window) up to 8 days before a test day is left out of that day
    (:func:`known_compromised_mask`); ``"all"`` keeps every card. The operating point
    (recall, false-discovery rate, flags a day) covers every test-window transaction:
    every flag costs a reviewer, known card or not.

    Parameters
    ----------
    ts_ms, labels, scores, flagged, cards, scenarios : arrays over the scored transactions
        Event time, ground truth, score, whether it was flagged, card code, fraud scenario.
    start_ms, end_ms : int
    threshold : float
    protocol : {"reference", "all"}

    Returns
    -------
    metrics, daily, precision, recall
        JSON-ready metrics, one row per day of the whole run (:func:`daily_rows`), and the
        test precision-recall curve. ``metrics["by_scenario"]`` has, for every fraud scenario
        code present among the transactions (test window or not), the test window's count
        ``n``, ``recall`` (share flagged; NaN when none is in the window) and ``auc_vs_legit``.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    y, s = _check(labels, scores)
    f = np.asarray(flagged, dtype=bool)
    cards, scen = np.asarray(cards, dtype=np.int64), np.asarray(scenarios)
    days = ts // DAY_MS
    test, ev = ranked_window(ts, y, cards, start_ms, end_ms, protocol)
    exclude = test & ~ev
    op = flagging_outcome(y[test], f[test], (end_ms - start_ms) / DAY_MS, threshold)
    precision, recall, _ = precision_recall_curve(y[ev], s[ev])
    out: dict[str, Any] = {
        **ranking_figures(days[ev], cards[ev], y[ev], s[ev]),
        "recall": op.recall,
        "false_discovery_rate": op.false_discovery_rate,
        "flags_per_day": op.flags_per_day,
        "n_events": int(y.size),
        "n_fraud": int(y.sum()),
        "n_test_events": int(ev.sum()),
        "n_test_fraud": int(y[ev].sum()),
        "n_excluded_known": int(exclude.sum()),
        "auc_all": roc_auc(y[test], s[test]),
        "average_precision_all": average_precision(y[test], s[test]),
        "threshold": float(threshold),
        "protocol": protocol,
        "by_scenario": {},
    }
    legit = test & ~y
    for k in np.unique(scen[scen > 0]).tolist():  # every scenario present in the stream
        sel = test & (scen == k)
        out["by_scenario"][str(k)] = {
            "n": int(sel.sum()),
            "recall": float(f[sel].mean()) if sel.any() else float("nan"),
            "auc_vs_legit": roc_auc(y[sel | legit], s[sel | legit]),
        }
    return out, daily_rows(days, y, s, f, start_ms // DAY_MS), precision, recall


def daily_rows(
    days: np.ndarray, labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray, test_day: int
) -> list[dict[str, Any]]:
    """One row per day: transactions, frauds, flagged, recall, FDR, AUC and AP (all cards)."""
    y, s = _check(labels, scores)
    f = np.asarray(flagged, dtype=bool)
    rows = []
    for day in np.unique(days).tolist():
        sel = days == day
        yd, sd, fd = y[sel], s[sel], f[sel]
        n_flag, tp = int(fd.sum()), int((fd & yd).sum())
        rows.append(
            {
                "date": str(np.datetime64(day, "D")),
                "test": day >= test_day,
                "n": int(sel.sum()),
                "fraud": int(yd.sum()),
                "flagged": n_flag,
                "recall": tp / yd.sum() if yd.any() else float("nan"),
                "fdr": (n_flag - tp) / n_flag if n_flag else float("nan"),
                "auc": roc_auc(yd, sd),
                "ap": average_precision(yd, sd),
            }
        )
    return rows
