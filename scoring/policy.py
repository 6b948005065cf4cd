"""Decision policy: which scores go to a person.

>>> import numpy as np
>>> FixedThreshold(0.5).flags(np.array([0.2, 0.7])).tolist()
[False, True]
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
    """Flag every score at or above a constant threshold."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold
