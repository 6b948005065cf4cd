"""Decision policy: which scores are flagged, and which flags are declined with nobody looking.

>>> import numpy as np
>>> FixedThreshold(0.5).flags(np.array([0.2, 0.7])).tolist()
[False, True]
>>> decisions(FixedThreshold(0.5), np.array([0.2, 0.7])).tolist()
['approve', 'review']
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class DecisionPolicy(Protocol):
    """Anything with a current ``threshold`` can decide."""

    @property
    def threshold(self) -> float: ...

    def flags(self, scores: np.ndarray) -> np.ndarray: ...


class FixedThreshold:
    """Flag every score at or above a constant threshold; every flag goes to a person."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold

    def declines(self, scores: np.ndarray) -> np.ndarray:
        return np.zeros(len(scores), dtype=bool)


#: The three routes: below the threshold, flagged for a person, declined automatically.
ROUTES = np.array(["approve", "review", "decline"])


def decisions(policy: DecisionPolicy, scores: np.ndarray) -> np.ndarray:
    """``approve``/``review``/``decline`` per score: flags go to a person unless the policy
    declines them (a policy without ``declines`` sends every flag to a person)."""
    flags = np.asarray(policy.flags(scores), dtype=bool)
    declines = getattr(policy, "declines", None)
    declined = flags & np.asarray(declines(scores), dtype=bool) if declines else np.zeros_like(flags)
    return ROUTES[flags.astype(np.int64) + declined]
