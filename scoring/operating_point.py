"""The operating point: a decision threshold that follows the business target and cannot run away.

The target is stated the way a fraud team states it:

* **false-discovery rate** (default): at most ``target_fdr`` of the alerts are
  legitimate, while catching as much fraud as possible (the lowest threshold that
  keeps the share), or
* **recall**: catch at least ``target_recall`` of the fraud with as few alerts as
  possible (the highest threshold that does);

and in both the **review capacity** is a hard limit: flags per day never above
``capacity_per_day``. The threshold never leaves ``[floor, ceiling]`` (only the
capacity can push it above the ceiling, because people cannot review more).

Estimates come from a :class:`~flagstream.scoring.score_tally.ScoreTally` of all
scored traffic and its delayed labels (not from labels alone: below the threshold
only frauds come back, which would make every lower threshold look free), in
event time, so the backtest and the worker drive it identically.

Every move needs evidence: ``min_labels`` and ``min_frauds`` in the window and
``min_new_labels`` since the last move; it is at most ``max_step``; and it is
decided on an interval, with a dead band between (hysteresis):

* up when the false-discovery rate's lower bound at the threshold is above target,
* down only while the upper bound at the new, lower threshold is within target.

So a model that cannot separate the classes walks up to the ceiling and says
``target_met = False``; it never flags everything.

Three ways, when ``decline_fdr`` is set: scores at or above the **decline threshold** are
declined with nobody looking, the rest of the flags go to a person. The decline threshold
is the lowest point above the review threshold where the false-discovery rate's *upper*
bound is within ``decline_fdr`` (a blocked customer costs more than a review), on at least
``min_decline_labels`` labels above it; with less evidence there is no automatic decline.
Declines are alerts (they count in the false-discovery rate and recall) but not reviews:
the capacity limits the flags that go to people. Capacity needs no labels: the
threshold jumps to the lowest one whose flags per day fit, at once.

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> op = OperatingPoint(target_fdr=0.2, capacity_per_day=5_000, initial_threshold=0.9,
...                     min_labels=50, min_frauds=10, min_new_labels=0, max_step=0.05)
>>> for hour in range(48):
...     frauds, legits = rng.beta(6, 2, 10), rng.beta(1, 12, 200)
...     scores = np.concatenate([frauds, legits])
...     flagged = op.flags(scores)
...     op.observe_traffic(scores, flagged, at_s=hour * 3_600.0)
...     for s, f, y in zip(scores, flagged, [1] * 10 + [0] * 200):
...         if f or y:  # flagged ones are reviewed; missed frauds come back as chargebacks
...             op.observe(s, y, flagged=bool(f), at=hour * 3_600.0)
...     est = op.update()
>>> 0.2 < op.threshold < 0.9, est.target_met, est.false_discovery_rate <= 0.2
(True, True, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from flagstream.features.layout import HOUR_MS
from flagstream.quick_stats import median
from flagstream.scoring.policy import ThresholdPolicy
from flagstream.scoring.review_grants import ReviewGrants
from flagstream.scoring.score_tally import (
    BINS,
    FLAGGED,
    Counts,
    ScoreTally,
    grid_index,
    population_stability,
)

DAY_S = 86_400.0
#: what an update saw, published with the threshold (:meth:`OperatingPoint.published`)
EVIDENCE_FIELDS = ("false_discovery_rate", "fdr_low", "fdr_high", "recall", "flags_per_day",
                   "capacity_threshold", "labels", "frauds")


def wilson(successes: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    >>> [round(x, 3) for x in wilson(8, 10)]
    [0.49, 0.943]
    >>> wilson(0, 0)
    (0.0, 1.0)
    """
    successes, trials = float(successes), float(trials)
    if trials <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = min(1.0, max(0.0, successes / trials))
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def as_label(label: object) -> int:
    """1 for fraud, 0 for legitimate: accepts 0/1, booleans and ``"fraud"``/``"legit"``.

    >>> as_label("fraud"), as_label(0), as_label(True)
    (1, 0, 1)
    """
    if isinstance(label, str):
        if label not in {"fraud", "legit"}:
            raise ValueError(f"unknown label {label!r}")
        return int(label == "fraud")
    return int(bool(label))


@dataclass(frozen=True)
class Estimate:
    """What one :meth:`OperatingPoint.update` saw and did (exported to metrics and pages).

    ``target_met`` is None while there is not enough evidence to say.
    """

    threshold: float
    move: str
    reason: str
    false_discovery_rate: float | None
    fdr_low: float | None
    fdr_high: float | None
    recall: float | None
    recall_low: float | None
    recall_high: float | None
    flags_per_day: float | None
    capacity_threshold: float | None
    labels: int
    frauds: int
    target_met: bool | None
    score_psi: float | None = None
    decline_threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def by_event_hour(times_ms: np.ndarray) -> list[tuple[Any, float]]:
    """A batch's decisions by event hour: (which of them, in batch order, their median event
    time in seconds) per hour, in time order; one group of all of them when they share the
    hour. One sort of the batch: the groups are runs of it, each median the middle of its run
    (a step over partitions that lag, or a backfill, spans many hours).

    >>> [(w.tolist(), at) for w, at in by_event_hour(np.array([7_200_000, 10, 20]))]
    [([1, 2], 0.015), ([0], 7200.0)]
    >>> by_event_hour(np.array([10, 30]))
    [(slice(None, None, None), 0.02)]
    """
    times_ms = np.asarray(times_ms)
    hours = times_ms.astype(np.int64) // HOUR_MS
    if len(hours) == 0:
        return []
    if (hours == hours[0]).all():
        return [(slice(None), median(times_ms) / 1000.0)]
    order = np.lexsort((times_ms, hours))  # hours in order (as np.unique), each hour's by time
    ordered = times_ms[order].astype(np.float64)
    starts = np.flatnonzero(np.diff(hours[order])) + 1
    out = []
    for begin, end in zip([0, *starts.tolist()], [*starts.tolist(), len(order)], strict=True):
        half = (begin + end) // 2
        if math.isnan(ordered[end - 1]):  # (NaN sorts last: the median of a run with one is NaN)
            at_ms = math.nan
        else:
            at_ms = ordered[half] if (end - begin) % 2 else (ordered[half - 1] + ordered[half]) / 2.0
        out.append((np.sort(order[begin:end]), float(at_ms) / 1000.0))
    return out


def by_event_hour_reference(times_ms: np.ndarray) -> list[tuple[Any, float]]:
    """:func:`by_event_hour` one hour at a time (a mask and a median each; one hour's group
    as its indices): the rule it is held to."""
    hours = np.asarray(times_ms).astype(np.int64) // HOUR_MS
    return [(np.flatnonzero(hours == hour), median(np.asarray(times_ms)[hours == hour]) / 1000.0)
            for hour in np.unique(hours)]


class OperatingPoint(ThresholdPolicy):
    """A decision threshold that follows a false-discovery or recall target within capacity.

    Parameters
    ----------
    target_fdr, target_recall
        The target: exactly one of them (``target_fdr`` wins when both are given).
    capacity_per_day
        Flags people can review per day of event time: a hard limit (None: no limit).
    floor, ceiling
        The threshold's bounds.
    initial_threshold
        The threshold until there is evidence to move it.
    window_s
        Event seconds of traffic and labels the estimates use.
    maturity_s
        Recall leaves out transactions younger than this (their chargebacks are not in yet).
    traffic_window_s
        Event seconds of traffic used for flags per day.
    min_labels, min_frauds, min_new_labels
        Evidence a move needs: labels and frauds in the window, labels since the last move.
    max_step
        The largest move one :meth:`update` makes (capacity moves excepted).
    confidence
        Level of the intervals.
    decline_fdr
        Decline automatically where the false-discovery rate's upper bound is within this
        (None: every flag goes to a person).
    min_decline_labels
        Labels above a decline threshold before it is used.
    burst
        Review room is earned with every decision, at this many times the day's review
        capacity spread over the day's traffic, and saved up to this many hours' worth.
    move_interval_s
        Event seconds between two moves on the target (capacity moves excepted): the
        worker updates on every small batch of labels, the backtest once per batch of
        events; both move at most once per this interval, so both follow alike.
    """

    def __init__(
        self,
        target_fdr: float | None = 0.15,
        target_recall: float | None = None,
        capacity_per_day: float | None = None,
        floor: float = 0.02,
        ceiling: float = 0.98,
        initial_threshold: float = 0.5,
        window_s: float = 14 * DAY_S,
        maturity_s: float = 0.0,
        traffic_window_s: float = DAY_S,
        min_labels: int = 200,
        min_frauds: int = 20,
        min_new_labels: int = 25,
        max_step: float = 0.02,
        confidence: float = 0.95,
        bucket_s: float = 3_600.0,
        decline_fdr: float | None = None,
        min_decline_labels: int = 100,
        burst: float = 3.0,
        move_interval_s: float = 3_600.0,
    ) -> None:
        if target_fdr is None and target_recall is None:
            raise ValueError("state a target: target_fdr or target_recall")
        for name, value in (("target_fdr", target_fdr), ("target_recall", target_recall)):
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), not {value!r}")
        if not 0.0 < floor < ceiling < 1.0:
            raise ValueError(f"need 0 < floor < ceiling < 1, not {floor!r}, {ceiling!r}")
        if capacity_per_day is not None and not capacity_per_day > 0:
            raise ValueError("capacity_per_day must be positive (or None)")
        if max_step <= 0:
            raise ValueError("max_step must be positive")
        if decline_fdr is not None and not 0.0 < decline_fdr < 1.0:
            raise ValueError(f"decline_fdr must be in (0, 1), not {decline_fdr!r}")
        self.target_fdr = target_fdr
        self.target_recall = None if target_fdr is not None else target_recall
        self.capacity_per_day = capacity_per_day
        self.floor, self.ceiling = grid_index(floor), grid_index(ceiling)
        self.window_s = window_s
        self.maturity_s = maturity_s
        self.traffic_window_s = traffic_window_s
        self.min_labels, self.min_frauds, self.min_new_labels = min_labels, min_frauds, min_new_labels
        self.step = max(1, round(max_step * BINS))
        self.confidence = confidence
        self.tally = ScoreTally(bucket_s, keep_s=window_s + maturity_s + bucket_s)
        self.index = min(self.ceiling, max(self.floor, grid_index(initial_threshold)))
        #: the grid point the target alone asks for; the threshold is this, or higher while
        #: the review capacity says so (and back here when the capacity allows again)
        self.target_index = self.index
        self.labels_since_move = 0
        self.move_interval_s = move_interval_s
        #: event second of the last move on the target
        self.moved_at_s = -math.inf
        self.last: Estimate | None = None
        self.decline_fdr = decline_fdr
        self.min_decline_labels = min_decline_labels
        #: grid index at and above which scores are declined (None: no automatic decline)
        self.decline_index: int | None = None
        #: review room is earned at this many times the day's pace (see :meth:`review_room`)
        self.burst = burst
        #: review room earned and not yet used (flags it may still send to people)
        self.credit = 0.0
        #: flags held back by :meth:`review_room` so far
        self.capped = 0
        #: the share of the traffic (and so of the review capacity) these decisions are: a
        #: scorer worker holding 2 of 8 partitions reviews 1/4 of what the day allows
        self.capacity_share = 1.0
        #: event time of the batch being decided (:meth:`deciding_at`)
        self.deciding_s = -math.inf
        #: reviews granted and decisions made here over the last event day (in slots)
        self.granted = ReviewGrants()

    @property
    def threshold(self) -> float:
        """The current threshold (a point of the grid ``i / BINS``)."""
        return self.index / BINS

    # --- deciding ----------------------------------------------------------------------------
    def checkpoint(self) -> tuple:
        """What deciding changes (the review room's credit, the flags granted and held back,
        the clock), to go back to if a batch fails part-way (:meth:`rollback`): its records
        are decided again, and their flags must not count twice. :meth:`commit` keeps it."""
        return self.credit, self.capped, self.deciding_s, self.granted.checkpoint()

    def rollback(self, mark: tuple) -> None:
        self.credit, self.capped, self.deciding_s, granted = mark
        self.granted.rollback(granted)

    def commit(self, mark: tuple) -> None:
        self.granted.commit()

    def routes(self, scores: np.ndarray, times_ms: np.ndarray | None = None) -> np.ndarray:
        """The route per score, each event hour of the batch in turn, told its time
        (:meth:`deciding_at`): the review capacity left is judged by event time, and a
        backfill can put days in one batch."""
        if times_ms is None or len(scores) == 0:
            return super().routes(scores)
        hours = by_event_hour(times_ms)
        if len(hours) == 1 or self.capacity_per_day is None:
            # (without a capacity no route depends on the time: the batch is decided at once,
            # the clock told each hour's time, as hour by hour)
            for _, at_s in hours:
                self.deciding_at(at_s)
            return super().routes(scores)
        routes = np.empty(len(scores), dtype=object)
        for part, at_s in hours:
            self.deciding_at(at_s)
            routes[part] = super().routes(scores[part])
        return routes

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """Flag every score at or above the current threshold, within the review room earned
        (:meth:`review_room`): past it, only the highest scores."""
        scores = np.asarray(scores)
        declined = self.declines(scores)  # nobody's work: never held back
        review = (scores >= self.threshold) & ~declined
        room = self.review_room(len(scores))
        n = int(np.count_nonzero(review))
        if room is not None and n > room:
            highest = np.argsort(-np.where(review, scores, -np.inf), kind="stable")[:room]
            kept = np.zeros(len(scores), dtype=bool)
            kept[highest] = True
            review &= kept
            self.capped += n - room
        if self.capacity_per_day is not None:
            reviews = int(np.count_nonzero(review))
            self.granted.add(self.clock_s, reviews, len(scores))
            if room is not None:
                self.credit = max(0.0, self.credit - reviews)
        return review | declined

    def review_room(self, batch: int) -> int | None:
        """How many of a batch of ``batch`` decisions may go to review: the room earned so far
        and never more than the capacity left in the trailing event day. Every decision earns
        ``burst`` times its share of the day's review capacity (the capacity over the day's
        traffic), saved up to ``burst`` hours' worth: small batches add up to what one large
        one would get (a worker decides a few events at a time; the room per batch, rounded
        down, was 0 and held back half the flags of a demo whose reviewers were idle). The
        threshold follows the capacity only after an update; this holds it within each
        batch, even when a new version of the model suddenly scores most traffic high.
        None while there is no traffic to judge by (or no capacity)."""
        if self.capacity_per_day is None or batch <= 0:
            return None
        seen = self.tally.newest_s  # the traffic rate: from the last day the tally has seen
        span = self.tally.span_s(seen - DAY_S, seen)
        if span >= self.tally.bucket_s:
            per_day = float(self.tally.window(seen - DAY_S, seen).traffic().sum()) * DAY_S / span
        elif (first := self.granted.first_s) is not None and self.clock_s - first >= self.tally.bucket_s:
            # nothing heard back yet (a worker's first hour, a backfill): the traffic decided here
            own = self.clock_s - first
            per_day = self.granted.decisions * DAY_S / own
        else:
            return None
        capacity = self.capacity_per_day * self.capacity_share
        saved = self.burst * capacity * self.tally.bucket_s / DAY_S
        self.credit = min(max(saved, 1.0), self.credit + self.burst * capacity * batch / max(per_day, 1.0))
        # what is left today, by the event time of the batch being decided: the tally learns
        # of decisions only when they come back (from the scores topic, in the worker), and
        # traffic sent in bulk (a backfill) runs days ahead of it; the flags granted here
        # count at once, by the day they were granted in
        now = self.clock_s
        self.granted.trim(now - DAY_S)
        mine = self.granted.reviews
        day = self.tally.window(now - DAY_S, now)
        reviewed = day.rows[FLAGGED][:self.decline_index].sum()  # flags below the declines
        left = capacity - max(float(reviewed), mine)
        return max(0, int(min(self.credit, left)))

    @property
    def clock_s(self) -> float:
        """Event time now: the batch being decided (:meth:`deciding_at`), or the newest the
        tally has seen when that is later."""
        return max(self.tally.newest_s, self.deciding_s)

    def deciding_at(self, at_s: float) -> None:
        """The next batch's event time (seconds), said before it is decided."""
        if math.isfinite(at_s):
            self.deciding_s = max(self.deciding_s, float(at_s))

    @property
    def decline_threshold(self) -> float | None:
        """Scores at or above this are declined automatically (None: none are)."""
        return None if self.decline_index is None else self.decline_index / BINS

    def declines(self, scores: np.ndarray) -> np.ndarray:
        """The flags declined with nobody looking (a subset of :meth:`flags`)."""
        if self.decline_index is None:
            return np.zeros(len(scores), dtype=bool)
        return np.asarray(scores) >= max(self.decline_index, self.index) / BINS

    def follow(self, threshold: float, decline_threshold: float | None = None,
               target_threshold: float | None = None) -> None:
        """Decide with the thresholds the learner's operating point published (scorers that do
        not learn follow it rather than estimating their own; a restarted learner resumes
        from it, and from the target's point under a capacity limit)."""
        self.index = grid_index(threshold)
        self.target_index = self.index if target_threshold is None else min(
            self.index, max(self.floor, min(self.ceiling, grid_index(target_threshold))))
        self.decline_index = None if decline_threshold is None else grid_index(decline_threshold)

    def published(self, sequence: int, at_ms: int) -> dict[str, Any]:
        """The record the learner publishes on ``models`` so every scorer decides alike, with
        the evidence of the last update (so a move can be traced on the topic).

        >>> op = OperatingPoint(initial_threshold=0.4)
        >>> record = op.published(1, 0)
        >>> record["threshold"], record["reason"], record["evidence"]["target_threshold"]
        (0.4, 'initial', 0.4)
        """
        last = self.last
        declines = {} if self.decline_index is None else {"decline_threshold": self.decline_threshold}
        evidence = {"target_threshold": self.target_index / BINS,
                    "event_time_ms": int(self.tally.newest_s * 1000) if math.isfinite(self.tally.newest_s)
                    else None}
        if last is not None:
            evidence |= {k: getattr(last, k) for k in EVIDENCE_FIELDS}
        return {"kind": "operating-point", "threshold": self.threshold, **declines, "sequence": sequence,
                "at_ms": at_ms, "reason": last.reason if last else "initial",
                "target_met": last.target_met if last else None, "evidence": evidence}

    def new_model(self) -> None:
        """The champion changed (another lineage): its scores mean something else, so the
        estimates start again from what it scores; the threshold holds until they are due,
        and the capacity limit returns with an hour of its traffic."""
        self.tally.restart()
        self.labels_since_move = 0
        self.decline_index = None  # nothing is declined on another model's evidence

    # --- evidence in -------------------------------------------------------------------------
    def observe_traffic(self, scores: np.ndarray, flagged: np.ndarray, at_s: float) -> None:
        """Decisions made: their scores, whether each was flagged, their event time (seconds)."""
        self.tally.add_traffic(np.asarray(scores, dtype=np.float64), flagged, float(at_s))

    def observe_traffic_by_hour(self, scores: np.ndarray, flagged: np.ndarray, times_ms: np.ndarray) -> None:
        """:meth:`observe_traffic` of a batch whose decisions span event hours (a step over
        partitions that lag differently): each hour's at its own time, as :meth:`routes`
        decides them."""
        scores, flagged = np.asarray(scores, dtype=np.float64), np.asarray(flagged, dtype=bool)
        for part, at_s in by_event_hour(times_ms):
            self.observe_traffic(scores[part], flagged[part], at_s)

    def observe(self, score: float, label: object, flagged: bool | None = None,
                at: float | None = None) -> None:
        """One label: the transaction's score and flag at scoring time, and its event time."""
        flag = float(score) >= self.threshold if flagged is None else bool(flagged)
        at_s = self.tally.newest_s if at is None else float(at)
        self.tally.add_label(float(score), bool(as_label(label)), flag, at_s)
        self.labels_since_move += 1

    def observe_decisions(self, decisions: list[dict]) -> None:
        """Recorded decisions (``score``, ``decision``, ``event_time_ms``), as both drivers see
        them: the worker's learner on ``scores``, the backtest as it scores."""
        if not decisions:
            return
        scores = np.array([d["score"] for d in decisions], dtype=np.float64)
        flagged = np.array([d.get("decision") != "approve" for d in decisions])
        at_ms = median([d["event_time_ms"] for d in decisions])
        self.observe_traffic(scores, flagged, at_ms / 1000)

    def observe_labelled(self, labelled: list[tuple[dict, int, Any]]) -> Estimate:
        """Labels joined to their decisions (``Learner`` outcomes), then one :meth:`update`.

        Counted as arrays: the same as one :meth:`observe` per label
        (:meth:`observe_labelled_reference`, compared in ``tests/test_operating_point.py``).
        """
        if labelled:
            columns: tuple[list, list, list, list] = ([], [], [], [])
            score, fraud, flagged, at = (column.append for column in columns)
            for decision, label, _feedback in labelled:
                score(float(decision["score"]))
                fraud(bool(as_label(label)))
                flagged(decision.get("decision") != "approve")
                at(float(decision["event_time_ms"] / 1000))
            self.tally.add_labels(np.array(columns[0], dtype=np.float64), np.array(columns[1], dtype=bool),
                                  np.array(columns[2], dtype=bool), np.array(columns[3], dtype=np.float64))
            self.labels_since_move += len(labelled)
        return self.update()

    def observe_labelled_reference(self, labelled: list[tuple[dict, int, Any]]) -> Estimate:
        """:meth:`observe_labelled` one label at a time (the per-label path, for tests)."""
        for decision, label, _feedback in labelled:
            self.observe(decision["score"], label, decision.get("decision") != "approve",
                         at=decision["event_time_ms"] / 1000)
        return self.update()

    # --- estimates ---------------------------------------------------------------------------
    def counts(self) -> Counts:
        """The window the false-discovery rate is estimated on."""
        now = self.tally.newest_s
        return self.tally.window(now - self.window_s, now)

    def mature_counts(self) -> Counts:
        """The window recall is estimated on (old enough for its chargebacks)."""
        end = self.tally.newest_s - self.maturity_s
        return self.tally.window(end - self.window_s, end)

    def flags_per_day(self) -> np.ndarray | None:
        """Flags per day of event time at every grid point, from recent traffic."""
        now = self.tally.newest_s
        span = self.tally.span_s(now - self.traffic_window_s, now)
        if span < min(self.traffic_window_s, self.tally.bucket_s):
            return None  # not enough traffic seen to state a rate
        return self.tally.window(now - self.traffic_window_s, now).curve()[0] * DAY_S / span

    def score_shift(self) -> float | None:
        """Population stability index of the last ``traffic_window_s`` of scores against the
        rest of the window before it: the model's own health, with no labels needed."""
        now, recent = self.tally.newest_s, self.traffic_window_s
        if self.tally.span_s(now - self.window_s, now) < 2 * recent:
            return None
        current = self.tally.window(now - recent, now).traffic()
        reference = self.tally.window(now - self.window_s, now - recent - self.tally.bucket_s).traffic()
        return population_stability(reference, current)

    def capacity_index(self, rates: np.ndarray | None) -> int | None:
        """The lowest grid point whose flags per day (``rates``) fit the capacity."""
        if self.capacity_per_day is None or rates is None:
            return None
        return int(np.flatnonzero(rates <= self.capacity_per_day)[0])

    def _fdr_at(self, curve: tuple[np.ndarray, np.ndarray, np.ndarray],
                i: int) -> tuple[float | None, float | None, float | None]:
        traffic, frauds, evidence = curve
        if traffic[i] <= 0:
            return None, None, None
        fdr = max(0.0, 1.0 - float(frauds[i] / traffic[i]))
        low, high = wilson(fdr * evidence[i], evidence[i], self.confidence)
        return fdr, low, high

    # --- the control step --------------------------------------------------------------------
    def update(self) -> Estimate:
        """Move the threshold (or not) on the evidence, and say what was seen and why.

        The target moves the *target point* (:attr:`target_index`); the capacity is a limit
        on top of it, not a move: a flood of high scores (a rollback to a younger version,
        an attack) lifts the threshold at once, and when the flood is over it comes back to
        the target point without waiting for labels, which at a high threshold hardly come.
        """
        counts = self.counts()
        mature_counts = self.mature_counts()
        curve, mature = counts.curve(mature_counts), mature_counts.curve()
        rates = self.flags_per_day()
        i, move, reason = self.target_index, "hold", "not enough labels"
        enough = (counts.labels() >= self.min_labels and counts.frauds() >= self.min_frauds
                  and self.labels_since_move >= self.min_new_labels)
        now = self.tally.newest_s
        if enough and now - self.moved_at_s < self.move_interval_s:
            reason = "moved within the last interval"
        elif enough and self.target_fdr is not None:
            i, move, reason = self._follow_fdr(curve, self.target_fdr)
        elif enough and self.target_recall is not None:
            i, move, reason = self._follow_recall(mature[1], self.target_recall)
        i = min(self.ceiling, max(self.floor, i))
        if i != self.target_index:
            self.target_index, self.moved_at_s, self.labels_since_move = i, now, 0
        if self.decline_fdr is not None:
            self.decline_index = self._decline_point(curve, i)
        if rates is not None and self.decline_index is not None:
            rates = rates - rates[self.decline_index]  # declines are nobody's work
        cap = self.capacity_index(rates)
        if cap is not None and i < cap:
            i, reason = cap, "review capacity"
            move = "up" if cap > self.index else "down" if cap < self.index else "hold"
        elif i < self.index and move == "hold":
            move, reason = "down", "back to the target point: the review capacity allows it"
        self.index = i
        self.last = self._estimate(move, reason, counts, curve, mature[1], rates, cap, enough)
        return self.last

    def _decline_point(self, curve: tuple[np.ndarray, np.ndarray, np.ndarray],
                       review: int) -> int | None:
        """The lowest point above the review threshold whose alerts are legitimate at most
        ``decline_fdr`` of the time (upper bound), on enough labels; None if there is none."""
        target, evidence = float(self.decline_fdr or 0.0), curve[2]
        for j in range(review + 1, BINS):
            if evidence[j] < self.min_decline_labels:
                return None  # fewer labels higher up still
            _, _, high = self._fdr_at(curve, j)
            if high is not None and high <= target:
                return j
        return None

    def _follow_fdr(self, curve: tuple[np.ndarray, np.ndarray, np.ndarray],
                    target: float) -> tuple[int, str, str]:
        i = self.target_index
        _, low, _ = self._fdr_at(curve, i)
        if low is not None and low > target:
            return min(self.ceiling, i + self.step), "up", "false alarms above target"
        # the lowest point within target, walked toward one bounded step at a time
        for j in range(max(self.floor, i - self.step), i):
            _, _, high = self._fdr_at(curve, j)
            if high is not None and high <= target:
                return j, "down", "within target with room to catch more"
        return i, "hold", "at target"

    def _follow_recall(self, frauds: np.ndarray, target: float) -> tuple[int, str, str]:
        i, total = self.target_index, frauds[0]
        if total <= 0:
            return i, "hold", "no frauds known"
        low, high = wilson(frauds[i], total, self.confidence)
        if high < target:
            return max(self.floor, i - self.step), "down", "recall below target"
        above = np.flatnonzero(frauds >= target * total)
        best = int(above[-1]) if above.size else 0
        if low > target and best > i:
            return min(best, i + self.step, self.ceiling), "up", "recall above target: fewer alarms"
        return i, "hold", "at target"

    def _estimate(self, move: str, reason: str, counts: Counts,
                  curve: tuple[np.ndarray, np.ndarray, np.ndarray], mature_frauds: np.ndarray,
                  rates: np.ndarray | None, cap: int | None, enough: bool) -> Estimate:
        i = self.index
        fdr, fdr_low, fdr_high = self._fdr_at(curve, i)
        recall = recall_low = recall_high = None
        if mature_frauds[0] > 0:
            recall = min(1.0, float(mature_frauds[i] / mature_frauds[0]))
            recall_low, recall_high = wilson(mature_frauds[i], mature_frauds[0], self.confidence)
        per_day = None if rates is None else float(rates[i])
        within_capacity = self.capacity_per_day is None or per_day is None or (
            per_day <= self.capacity_per_day)
        met: bool | None = None
        if enough or self.last is not None and self.last.target_met is not None:
            if self.target_fdr is not None:
                met = fdr is not None and fdr <= self.target_fdr and within_capacity
            else:
                met = recall is not None and recall >= float(self.target_recall or 0) and within_capacity
        return Estimate(self.threshold, move, reason, fdr, fdr_low, fdr_high, recall, recall_low,
                        recall_high, per_day, None if cap is None else cap / BINS, counts.labels(),
                        counts.frauds(), met, self.score_shift(), self.decline_threshold)

