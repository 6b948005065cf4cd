"""Readable reasons: the features that pushed a score up, in plain words.

>>> import numpy as np
>>> from flagstream.features.layout import FEATURE_NAMES, N_FEATURES
>>> row = np.zeros(N_FEATURES)
>>> row[FEATURE_NAMES.index("amount_to_30d_mean")] = 6.2
>>> row[FEATURE_NAMES.index("merchant_fraud_rate_7d")] = 0.18
>>> contrib = np.zeros(N_FEATURES)
>>> contrib[FEATURE_NAMES.index("amount_to_30d_mean")] = 2.0
>>> contrib[FEATURE_NAMES.index("merchant_fraud_rate_7d")] = 1.0
>>> [r["text"] for r in explain(row, contrib)]
["amount 6.2× this card's 30-day average", 'merchant fraud rate 18% over 7 days']
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flagstream.features.layout import FEATURE_NAMES

_CARD_VELOCITY = {
    "card_count_10m": lambda v: f"{v:.0f} transactions on this card in 10 minutes",
    "card_count_1h": lambda v: f"{v:.0f} transactions on this card in 1 hour",
    "card_small_count_48h": lambda v: f"{v:.0f} small-amount transactions (under 5) on this card in 48 h",
    "card_distinct_merchants_24h": lambda v: f"{v:.0f} different merchants on this card in 24 h",
    "is_new_merchant": lambda v: "merchant new to this card" if v else "merchant this card used before",
    "card_days_since_merchant": lambda v: (
        "no recent purchase at this merchant" if v >= 30 else f"{v:.1f} days since this card last bought here"
    ),
    "amount_after_probes": lambda v: f"purchase of {v:,.2f} after small-amount probes on this card",
    "amount_to_card_mean": lambda v: f"amount {v:.1f}× this card's average since its first transaction",
    "merchant_new_card_share_7d": lambda v: f"{v:.0%} of this merchant's transactions in 7 days from "
                                            "cards new to it",
    "merchant_new_cards_2d": lambda v: f"{v:.0f} cards new to this merchant in 2 days",
    "distance_from_usual_area": lambda v: f"{v:,.1f} from where this card is usually used"
                                          if v else "location unknown or at the card's usual place",
    "card_large_amounts_14d": lambda v: f"{v:.0f} earlier purchases of over 3× this card's average "
                                        "in 14 days",
}


def _describer(name: str) -> Callable[[float], str]:
    """The sentence fragment of one feature, as a function of its value (built once per
    feature: :func:`describe` is called for every reason of every flagged decision)."""
    if name == "amount":
        return lambda v: f"amount {v:,.2f}"
    if name == "is_weekend":
        return lambda v: "weekend transaction" if v else "weekday transaction"
    if name == "is_night":
        return lambda v: "night-time transaction (00:00–06:59)" if v else "daytime transaction"
    if name == "amount_to_30d_mean":
        return lambda v: f"amount {v:.1f}× this card's 30-day average"
    if name == "seconds_since_previous":
        return _since_previous
    if name in _CARD_VELOCITY:
        return _CARD_VELOCITY[name]
    entity, what, span = name.split("_", 2)[0], name.split("_", 1)[1].rsplit("_", 1)[0], name[-3:]
    days = span.rstrip("d").lstrip("_")
    period = "1 day" if days == "1" else f"{days} days"
    subject = "card" if entity == "account" else "merchant"
    if what == "count":
        return lambda v: f"{v:.0f} transactions at this {subject} over {period}"
    if what == "mean_amount":
        return lambda v: f"{subject} average amount {v:,.2f} over {period}"
    if what == "fraud_rate":
        return lambda v: f"merchant fraud rate {v:.0%} over {period}"
    return lambda v: f"{name} = {v:g}"


def _since_previous(value: float) -> str:
    if value >= 30 * 86_400:
        return "first transaction on this card in 30 days"
    if value < 3_600:
        return f"{value / 60:.0f} min since this card's previous transaction"
    return f"{value / 3_600:.1f} h since this card's previous transaction"


#: :func:`_describer` of every feature, in :data:`FEATURE_NAMES` order.
_DESCRIBERS = tuple(_describer(name) for name in FEATURE_NAMES)
_DESCRIBER_OF = dict(zip(FEATURE_NAMES, _DESCRIBERS, strict=True))


def describe(name: str, value: float) -> str:
    """One feature value as a sentence fragment a reviewer understands.

    >>> describe("card_small_count_48h", 4.0)
    '4 small-amount transactions (under 5) on this card in 48 h'
    >>> describe("not_a_feature", 0.5)
    'not_a_feature = 0.5'
    """
    describer = _DESCRIBER_OF.get(name)
    return describer(value) if describer is not None else _describer(name)(value)


def explain(row: np.ndarray, contributions: np.ndarray, top: int = 3) -> list[dict]:
    """The ``top`` features with the largest positive contribution to the logit, largest
    first: the rule :func:`explain_rows` is held to."""
    order = np.argsort(-contributions)[:top]
    return [
        {
            "feature": FEATURE_NAMES[i],
            "value": round(float(row[i]), 4),
            "contribution": round(float(contributions[i]), 4),
            "text": describe(FEATURE_NAMES[i], float(row[i])),
        }
        for i in order
        if contributions[i] > 0
    ]


def explain_rows(rows: np.ndarray, contributions: np.ndarray, top: int = 3) -> list[list[dict]]:
    """:func:`explain` of every row of a batch: one sort of the whole matrix and the chosen
    values read out as lists at once, then only the reasons themselves built one by one.

    >>> rows = np.array([[1.0, 8.0, 0.5], [2.0, 3.0, 0.0]])
    >>> pushes = np.array([[0.1, 2.0, -1.0], [0.0, 0.0, 0.0]])
    >>> [[r["feature"] for r in reasons] for reasons in explain_rows(rows, pushes, top=2)]
    [['is_weekend', 'amount'], []]
    """
    if len(rows) == 0:
        return []
    order = np.argsort(-contributions, axis=1)[:, :top]
    values = np.take_along_axis(rows, order, axis=1).astype(np.float64).tolist()
    pushes = np.take_along_axis(contributions, order, axis=1).astype(np.float64).tolist()
    names, describers, out = FEATURE_NAMES, _DESCRIBERS, []
    for chosen, vals, contribs in zip(order.tolist(), values, pushes, strict=True):
        out.append([
            {"feature": names[i], "value": round(v, 4), "contribution": round(c, 4),
             "text": describers[i](v)}
            for i, v, c in zip(chosen, vals, contribs, strict=True)
            if c > 0
        ])
    return out
