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


def describe(name: str, value: float) -> str:
    """One feature value as a sentence fragment a reviewer understands.

    >>> describe("card_small_count_48h", 4.0)
    '4 small-amount transactions (under 5) on this card in 48 h'
    """
    if name == "amount":
        return f"amount {value:,.2f}"
    if name == "is_weekend":
        return "weekend transaction" if value else "weekday transaction"
    if name == "is_night":
        return "night-time transaction (00:00–06:59)" if value else "daytime transaction"
    if name == "amount_to_30d_mean":
        return f"amount {value:.1f}× this card's 30-day average"
    if name == "seconds_since_previous":
        if value >= 30 * 86_400:
            return "first transaction on this card in 30 days"
        if value < 3_600:
            return f"{value / 60:.0f} min since this card's previous transaction"
        return f"{value / 3_600:.1f} h since this card's previous transaction"
    if name in _CARD_VELOCITY:
        return _CARD_VELOCITY[name](value)
    entity, what, span = name.split("_", 2)[0], name.split("_", 1)[1].rsplit("_", 1)[0], name[-3:]
    days = span.rstrip("d").lstrip("_")
    period = "1 day" if days == "1" else f"{days} days"
    subject = "card" if entity == "account" else "merchant"
    if what == "count":
        return f"{value:.0f} transactions at this {subject} over {period}"
    if what == "mean_amount":
        return f"{subject} average amount {value:,.2f} over {period}"
    if what == "fraud_rate":
        return f"merchant fraud rate {value:.0%} over {period}"
    return f"{name} = {value:g}"


def explain(row: np.ndarray, contributions: np.ndarray, top: int = 3) -> list[dict]:
    """The ``top`` features with the largest positive contribution to the logit."""
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
