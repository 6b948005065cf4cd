"""The operating point: a threshold that follows a stated business target, from feedback.

The target is either a required fraud recall (flag as little as possible while
catching at least that share of fraud) or a daily review capacity (flag no more
than people can review, highest scores first, which catches the most fraud that
capacity allows). Both are estimated from delayed feedback over a sliding
window of labelled ``(score, label)`` pairs: reviewers' labels on flagged
transactions and chargebacks on missed frauds, so every known fraud is in the
window whether the model caught it or not. Missed frauds arrive late (a
chargeback takes weeks); ``maturity_s`` leaves out transactions too recent for
their chargebacks to have arrived, so recall is not overstated.

:class:`OperatingPoint` has the same ``threshold``/``flags`` protocol as
:class:`flagstream.scoring.policy.FixedThreshold`, so it can replace it in the scoring core;
``observe`` feeds it labels and ``update`` moves the threshold toward the target
by at most ``max_step`` at a time, reporting the recall at the threshold with a
Wilson interval. Whatever the labels say, the threshold stays within ``[floor, ceiling]``:
feedback can tune it, never turn flagging off or flag everything.

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> op = OperatingPoint(target_recall=0.8, min_labels=50, initial_threshold=0.9, max_step=0.1)
>>> for s in rng.beta(5, 2, 200):   # frauds score high
...     op.observe(s, "fraud")
>>> for s in rng.beta(2, 5, 800):   # legitimate ones low
...     op.observe(s, "legit")
>>> est = op.update()
>>> est.move, round(op.threshold, 2), est.recall < 0.8   # recall at 0.9 was far too low
('down', 0.8, True)
>>> for _ in range(10):
...     est = op.update()
>>> round(op.threshold, 3), round(est.recall, 3), est.recall >= 0.8
(0.602, 0.8, True)
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: Score bins used to count traffic for alarms per day (capacity targets).
BINS = 1_000
DAY_S = 86_400.0


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    >>> [round(x, 3) for x in wilson(8, 10)]
    [0.49, 0.943]
    >>> wilson(0, 0)
    (0.0, 1.0)
    """
    if trials <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def recall_threshold(fraud_scores: np.ndarray, target: float) -> float | None:
    """The highest threshold whose recall on ``fraud_scores`` is at least ``target``.

    >>> recall_threshold(np.array([0.9, 0.8, 0.7, 0.2]), 0.75)
    0.7
    """
    n = len(fraud_scores)
    if n == 0:
        return None
    k = max(1, math.ceil(target * n - 1e-9))
    return float(np.sort(fraud_scores)[::-1][min(k, n) - 1])


def as_label(label: object) -> int:
    """1 for fraud, 0 for legitimate: accepts 0/1, booleans and ``"fraud"``/``"legit"``."""
    if isinstance(label, str):
        if label not in {"fraud", "legit"}:
            raise ValueError(f"unknown label {label!r}")
        return int(label == "fraud")
    return int(bool(label))


@dataclass(frozen=True)
class Estimate:
    """What one :meth:`OperatingPoint.update` saw and did."""

    threshold: float
    target_threshold: float | None
    move: str
    recall: float | None
    recall_low: float | None
    recall_high: float | None
    precision: float | None
    alarms_per_day: float | None
    labels: int
    frauds: int
    achievable: bool


class OperatingPoint:
    """A decision threshold that follows a recall target or a daily review capacity.

    Parameters
    ----------
    target_recall
        Required share of fraud caught (``None`` with a capacity target only).
    capacity_per_day
        Transactions people can review per day; wins over ``target_recall`` when both are set.
    window
        How many recent labels the estimate uses.
    min_labels, min_frauds
        Below these counts the threshold holds still.
    initial_threshold
        The threshold until there is enough feedback.
    max_step
        The largest change one :meth:`update` makes.
    confidence
        Level of the Wilson interval on recall.
    maturity_s
        Labels of transactions scored more recently than this are left out of the estimate.
    traffic_window_s
        Span of scored traffic kept to estimate alarms per day.
    slack
        In capacity mode the threshold only comes down when alarms are this far below capacity.
    seed
        Seed of the bootstrap in :meth:`bootstrap`.
    floor, ceiling
        The lowest and highest threshold feedback can move it to (an ``initial_threshold``
        the operator set outside them is kept, and never moved further out).

    >>> op = OperatingPoint(min_labels=1, min_frauds=1, max_step=1.0, floor=0.05)
    >>> op.observe(0.001, "fraud"); round(op.update().threshold, 3)
    0.05
    """

    def __init__(
        self,
        target_recall: float | None = 0.8,
        capacity_per_day: float | None = None,
        window: int = 5_000,
        min_labels: int = 200,
        min_frauds: int = 20,
        initial_threshold: float = 0.5,
        max_step: float = 0.02,
        confidence: float = 0.95,
        maturity_s: float = 0.0,
        traffic_window_s: float = DAY_S,
        slack: float = 0.1,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        floor: float = 0.05,
        ceiling: float = 0.95,
    ) -> None:
        if target_recall is None and capacity_per_day is None:
            raise ValueError("state a target: target_recall or capacity_per_day")
        if not 0.0 <= floor <= ceiling <= 1.0:
            raise ValueError("need 0 <= floor <= ceiling <= 1")
        if target_recall is not None and not 0.0 < target_recall <= 1.0:
            raise ValueError("target_recall must be in (0, 1]")
        self.target_recall = target_recall
        self.capacity_per_day = capacity_per_day
        self.window = window
        self.min_labels = min_labels
        self.min_frauds = min_frauds
        self.initial_threshold = initial_threshold
        self.max_step = max_step
        self.confidence = confidence
        self.maturity_s = maturity_s
        self.traffic_window_s = traffic_window_s
        self.slack = slack
        self.seed = seed
        self.clock = clock
        self.floor = floor
        self.ceiling = ceiling
        self.threshold = float(initial_threshold)
        self._labels: deque[tuple[float, int, bool, float]] = deque(maxlen=window)
        self._traffic: deque[tuple[float, np.ndarray]] = deque()

    # --- the FixedThreshold protocol -------------------------------------------
    def flags(self, scores: np.ndarray) -> np.ndarray:
        """Flag every score at or above the current threshold."""
        return np.asarray(scores) >= self.threshold

    # --- feedback in ---------------------------------------------------------------
    def observe(self, score: float, label: object, flagged: bool | None = None,
                at: float | None = None) -> None:
        """Add one labelled transaction: its score at scoring time, its label, whether it was
        flagged (default: at the current threshold) and when it was scored (epoch seconds)."""
        score = float(score)
        flag = score >= self.threshold if flagged is None else bool(flagged)
        self._labels.append((score, as_label(label), flag, self.clock() if at is None else float(at)))

    def observe_traffic(self, scores: np.ndarray, at: float | None = None) -> None:
        """Count scored traffic (labelled or not), for alarms per day in capacity mode."""
        now = self.clock() if at is None else float(at)
        counts = np.histogram(np.clip(scores, 0.0, 1.0), bins=BINS, range=(0.0, 1.0))[0]
        self._traffic.append((now, counts))
        while self._traffic and self._traffic[0][0] < now - self.traffic_window_s:
            self._traffic.popleft()

    # --- estimates -----------------------------------------------------------------
    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, labels)`` in the window, old enough for their chargebacks to be in."""
        cutoff = self.clock() - self.maturity_s
        rows = [(s, y) for s, y, _f, at in self._labels if at <= cutoff]
        if not rows:
            return np.empty(0), np.empty(0, np.int64)
        arr = np.asarray(rows)
        return arr[:, 0], arr[:, 1].astype(np.int64)

    def recall_at(self, threshold: float) -> tuple[float | None, float | None, float | None]:
        """Recall at ``threshold`` on the window with its Wilson interval."""
        scores, labels = self.labelled()
        frauds = scores[labels == 1]
        if len(frauds) == 0:
            return None, None, None
        caught = int((frauds >= threshold).sum())
        low, high = wilson(caught, len(frauds), self.confidence)
        return caught / len(frauds), low, high

    def _rates(self) -> np.ndarray | None:
        """Flags per day at each bin edge ``i / BINS`` (the last entry is at 1.0)."""
        span = self._traffic[-1][0] - self._traffic[0][0] if len(self._traffic) > 1 else 0.0
        if span <= 0:
            return None
        counts = np.sum([c for _, c in list(self._traffic)[1:]], axis=0)
        at_or_above = np.append(np.cumsum(counts[::-1])[::-1], 0)
        return at_or_above * DAY_S / span

    def alarms_per_day(self, threshold: float) -> float | None:
        """Expected flags per day at ``threshold`` from the scored traffic seen.

        The rate is the traffic after the first counted batch over the time since it, so
        it needs two batches at different times (None before).
        """
        rates = self._rates()
        if rates is None:
            return None
        return float(rates[min(int(math.ceil(threshold * BINS - 1e-9)), BINS)])

    def capacity_threshold(self) -> float | None:
        """The lowest threshold whose alarms per day fit the review capacity."""
        rates = self._rates()
        if self.capacity_per_day is None or rates is None:
            return None
        return float(np.flatnonzero(rates <= self.capacity_per_day)[0]) / BINS

    def bootstrap(self, n: int = 200) -> tuple[float, float] | None:
        """A 90% bootstrap interval of the recall-target threshold (deterministic per ``seed``)."""
        scores, labels = self.labelled()
        frauds = scores[labels == 1]
        if self.target_recall is None or len(frauds) == 0:
            return None
        rng = np.random.default_rng(self.seed)
        draws = [recall_threshold(rng.choice(frauds, len(frauds)), self.target_recall) for _ in range(n)]
        low, high = np.quantile(np.asarray(draws, dtype=float), (0.05, 0.95))
        return float(low), float(high)

    # --- the control step ----------------------------------------------------------
    def update(self) -> Estimate:
        """Move the threshold toward the target (at most ``max_step``) and say why."""
        scores, labels = self.labelled()
        n_frauds = int(labels.sum())
        target, achievable = None, True
        if self.target_recall is not None:
            target = recall_threshold(scores[labels == 1], self.target_recall)
        capacity_t = self.capacity_threshold()
        if capacity_t is not None:
            achievable = target is None or capacity_t <= target
            target = capacity_t if target is None else max(target, capacity_t)
        move = "hold"
        enough = len(scores) >= self.min_labels and (
            self.target_recall is None or n_frauds >= self.min_frauds
        )
        if enough and target is not None:
            move = self._direction(scores, labels, target, capacity_t)
            t = self.threshold  # never moved past the floor or the ceiling (nor further out)
            if move == "down":
                self.threshold = max(target, t - self.max_step, min(self.floor, t))
            elif move == "up":
                self.threshold = min(target, t + self.max_step, max(self.ceiling, t))
        recall, low, high = self.recall_at(self.threshold)
        flagged = labels[scores >= self.threshold]
        precision = float(flagged.mean()) if len(flagged) else None
        return Estimate(self.threshold, target, move, recall, low, high, precision,
                        self.alarms_per_day(self.threshold), len(scores), n_frauds, achievable)

    def _direction(self, scores: np.ndarray, labels: np.ndarray, target: float,
                   capacity_t: float | None) -> str:
        t = self.threshold
        if capacity_t is not None:
            alarms = self.alarms_per_day(t) or 0.0
            if alarms > self.capacity_per_day:  # type: ignore[operator]
                return "up" if target > t else "hold"
        if self.target_recall is not None:
            recall, low, _ = self.recall_at(t)
            if recall is not None and recall < self.target_recall:
                return "down" if target < t else "hold"
            comfortable = low is not None and low > self.target_recall
            saves = bool(((scores >= t) & (scores < target) & (labels == 0)).any())
            if comfortable and target > t and saves:
                return "up"
            return "hold"
        alarms = self.alarms_per_day(t) or 0.0
        if alarms < self.capacity_per_day * (1 - self.slack) and target < t:  # type: ignore[operator]
            return "down"
        return "hold"


class ThreeWayPolicy:
    """Auto-approve below ``low``, auto-decline at or above ``high``, people in between.

    Tracks the share decided automatically and how often labels overturn an
    automatic decision (a chargeback on an auto-approval, a legit label on an
    auto-decline).

    >>> import numpy as np
    >>> p = ThreeWayPolicy(low=0.2, high=0.9)
    >>> p.route(np.array([0.1, 0.5, 0.95, 0.05])).tolist()
    ['approve', 'review', 'decline', 'approve']
    >>> p.automated_share(), p.flags(np.array([0.1, 0.5])).tolist()
    (0.75, [False, True])
    >>> p.record(0.1, "fraud"); p.record(0.95, "fraud"); p.overturn_rate()
    0.5
    """

    ROUTES = np.array(["approve", "review", "decline"])

    def __init__(self, low: float = 0.1, high: float = 0.95) -> None:
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError("need 0 <= low <= high <= 1")
        self.low = low
        self.high = high
        self.routed = np.zeros(3, np.int64)
        self.auto_labelled = 0
        self.overturned = 0

    @property
    def threshold(self) -> float:
        """Scores at or above this are not auto-approved (the FixedThreshold protocol)."""
        return self.low

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """Scores the model calls suspicious: reviewed or auto-declined."""
        return np.asarray(scores) >= self.low

    def route(self, scores: np.ndarray) -> np.ndarray:
        """``approve``/``review``/``decline`` per score, counted for :meth:`automated_share`."""
        codes = (np.asarray(scores) >= self.low).astype(np.int64) + (np.asarray(scores) >= self.high)
        self.routed += np.bincount(codes, minlength=3)
        return self.ROUTES[codes]

    def record(self, score: float, label: object) -> None:
        """A label for a routed transaction: counts overturns of automatic decisions."""
        fraud = as_label(label)
        if score < self.low or score >= self.high:
            self.auto_labelled += 1
            self.overturned += int(fraud != (score >= self.high))

    def automated_share(self) -> float:
        total = int(self.routed.sum())
        return float(self.routed[0] + self.routed[2]) / total if total else 0.0

    def overturn_rate(self) -> float:
        return self.overturned / self.auto_labelled if self.auto_labelled else 0.0
