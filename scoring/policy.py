"""Decision policy: which scores are flagged, and which flags are declined with nobody looking.

>>> import numpy as np
>>> FixedThreshold(0.5).flags(np.array([0.2, 0.7])).tolist()
[False, True]
>>> FixedThreshold(0.5).routes(np.array([0.2, 0.7])).tolist()
['approve', 'review']
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

#: The three routes: below the threshold, flagged for a person, declined automatically.
ROUTES = np.array(["approve", "review", "decline"])


class DecisionPolicy(Protocol):
    """What the scoring core decides with: a current ``threshold`` and a route per score."""

    @property
    def threshold(self) -> float: ...

    def routes(self, scores: np.ndarray, times_ms: np.ndarray | None = None) -> np.ndarray: ...


@runtime_checkable
class UndoablePolicy(Protocol):
    """A policy whose deciding changes state (a review room): a batch that fails part-way
    goes back to :meth:`checkpoint`'s mark (:meth:`rollback`), else keeps it (:meth:`commit`)."""

    def checkpoint(self) -> Any: ...

    def rollback(self, mark: Any) -> None: ...

    def commit(self, mark: Any) -> None: ...


class ThresholdPolicy:
    """Routes from ``flags`` and ``declines``: flags go to a person unless declined.

    Subclasses say which scores are flagged (``flags``) and may decline some of them
    (``declines``; none here). ``times_ms``, the events' times, is for policies that
    decide by event time (:class:`~flagstream.scoring.operating_point.OperatingPoint`).
    """

    def flags(self, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def declines(self, scores: np.ndarray) -> np.ndarray:
        return np.zeros(len(scores), dtype=bool)

    def routes(self, scores: np.ndarray, times_ms: np.ndarray | None = None) -> np.ndarray:
        """``approve``/``review``/``decline`` per score."""
        flags = np.asarray(self.flags(scores), dtype=bool)
        declined = flags & np.asarray(self.declines(scores), dtype=bool)
        return ROUTES[flags.astype(np.int64) + declined]


class FixedThreshold(ThresholdPolicy):
    """Flag every score at or above a constant threshold; every flag goes to a person."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold
