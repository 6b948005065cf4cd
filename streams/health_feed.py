"""The model-health view's numbers, kept by the learner and shown on its review page.

The learner already sees every decision (the ``scores`` topic, for the feedback join)
and every label joined to its decision, and it owns the operating point. So it keeps,
beside them, a :class:`flagstream.scoring.model_health.DailyHealth` (false alarms,
recall, automation and overturns per event day), a
:class:`flagstream.scoring.feature_drift.FeatureDrift` (each feature's population
stability) and the event time at which it saw each change of the champion seat; it
exports the drift as metrics (``flagstream_feature_psi``, ``flagstream_drift_alert``).

The review page is served by the same process (only learning workers serve it:
:mod:`flagstream.streams.review_page`), so :meth:`HealthFeed.report` is read in
memory, with no record of its own on a topic. A restarted learner starts counting
again from the traffic and labels that arrive (as its operating point's estimates do);
the seat history comes from the registry (signed, checked), so promotions and
rollbacks survive restarts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flagstream.features.layout import FEATURE_NAMES, MERCHANT_DELAY_DAYS, N_DAILY, N_FEATURES
from flagstream.scoring.feature_drift import FeatureDrift
from flagstream.scoring.model_health import DAY_MS, DailyHealth
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.scoring.registry import SEAT
from flagstream.scoring.score_tally import BINS
from flagstream.streams.app import Pipeline

#: Score groups of the score-distribution chart.
SCORE_GROUPS = 20
#: Seat changes whose event time this process remembers.
MAX_SEATS = 200
#: Features that keep no state: their values mean the same from a stream's first event.
STATELESS_FEATURES = ("amount", "is_weekend", "is_night")
#: Features whose drift is not watched, and why (shown on the page): the calendar sets
#: ``is_weekend`` for a whole day, so the last day against the fortnight before alarmed every
#: Saturday (a fresh demo showed it).
UNWATCHED = {"is_weekend": "the calendar sets it for a whole day: it would alarm every Saturday"}
UNWATCHED_FEATURES = tuple(UNWATCHED)
#: Event time after the state's start until every other feature is full: the merchants'
#: 30-day windows end ``MERCHANT_DELAY_DAYS`` back (the accounts' reach 30 days, and
#: days-since features are capped at 30). Before it, a feature's drift is not stated: the
#: counts of a fresh stream grow by construction, and the reference fortnight of a young
#: stream differs from its last day for no other reason (a fresh demo alerted on them).
STATE_WARM_UP_MS = (N_DAILY + MERCHANT_DELAY_DAYS) * DAY_MS


class HealthFeed:
    """Daily business metrics, feature drift and seat changes of one learner, and the report.

    Parameters
    ----------
    p
        The learner's pipeline (settings, metrics, its operating point, the registry).
    refresh_s
        Wall seconds between two computations of the drift (it samples, sorts, bins).
    clock
        Wall clock (monotonic seconds).
    """

    def __init__(self, p: Pipeline, refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        s = p.settings
        self.p = p
        self.alert = s.drift_psi_alert
        self.daily = DailyHealth(keep_days=60, maturity_s=s.label_maturity_s)
        policy = p.core.policy
        window_s = policy.traffic_window_s if isinstance(policy, OperatingPoint) else 86_400.0
        reference_s = policy.window_s if isinstance(policy, OperatingPoint) else 14 * 86_400.0
        self.drift = FeatureDrift(FEATURE_NAMES, window_s=window_s, reference_s=reference_s,
                                  warm_up_ms=[0.0 if name in STATELESS_FEATURES else STATE_WARM_UP_MS
                                              for name in FEATURE_NAMES],
                                  unwatched=UNWATCHED_FEATURES)
        if isinstance(policy, OperatingPoint):
            p.metrics.drift.targets(policy.target_fdr, policy.target_recall, policy.capacity_per_day)
        self.refresh_s = refresh_s
        self.clock = clock
        self.computed_at = -math.inf
        #: decisions or labels arrived since the drift was last computed
        self.changed = False
        self.feature_psi: dict[str, float] | None = None
        self.score_psi: float | None = None
        #: seat epoch → newest event time (ms) seen when this learner first saw it
        self.seat_seen: dict[int, float] = {}

    # --- fed by the learner's agents ------------------------------------------------------------
    def decisions(self, decisions: list[dict]) -> None:
        """Recorded decisions (checked by ``parse_decision``: ``features`` of the layout)."""
        usable = [d for d in decisions if len(d.get("features", ())) == N_FEATURES]
        if not usable:
            return
        at = np.array([d["event_time_ms"] for d in usable], dtype=np.float64)
        self.note_seat(float(at.min()))  # a new seat decided (about) from these decisions on
        self.daily.add_decisions(usable)
        self.drift.add(np.array([d["features"] for d in usable], dtype=np.float64), at)
        self.changed = True
        self.refresh()

    def labelled(self, labelled: list) -> None:
        """Labels joined to their decisions, after the operating point took them."""
        if not labelled:
            return
        self.daily.add_labels(labelled)
        policy = self.p.core.policy
        if isinstance(policy, OperatingPoint) and policy.last is not None:
            self.daily.add_estimate(policy.last)
        self.changed = True
        self.refresh()

    def since_state(self) -> int | None:
        """When the stream's state began, for the learner's snapshot: event ms (0: of unknown
        age, taken as warm), None before any decision.

        >>> feed = HealthFeed.__new__(HealthFeed)
        >>> feed.drift = FeatureDrift(("amount",))
        >>> feed.since_state(), feed.resume_since(1_522_540_800_000), feed.since_state()
        (None, None, 1522540800000)
        >>> feed.resume_since(0), feed.drift.since_ms, feed.since_state()
        (None, -inf, 0)
        """
        since = self.drift.since_ms
        return None if since == math.inf else 0 if since == -math.inf else int(since)

    def resume_since(self, since_ms: int | None) -> None:
        """:meth:`since_state` from a snapshot (one written before it was kept says 0: the
        state is older than this version of the learner, so taken as warm)."""
        unknown = -math.inf if since_ms == 0 else math.inf
        self.drift.since_ms = unknown if not since_ms else float(since_ms)

    def note_seat(self, at_ms: float) -> None:
        """Remember the event time from which the seat's champion decides (the first batch of
        decisions seen under it; a seat that was already there at start has none)."""
        seat = self.p.models.read(SEAT)
        if seat is not None and seat["epoch"] not in self.seat_seen and math.isfinite(at_ms):
            self.seat_seen[seat["epoch"]] = at_ms
            while len(self.seat_seen) > MAX_SEATS:
                del self.seat_seen[min(self.seat_seen)]

    def refresh(self, force: bool = False) -> None:
        """Compute the drift (at most every ``refresh_s`` unless forced) and export it."""
        now = self.clock()
        if not force and now - self.computed_at < self.refresh_s:
            return
        self.computed_at, self.changed = now, False
        self.feature_psi = self.drift.stability()
        policy = self.p.core.policy
        self.score_psi = policy.score_shift() if isinstance(policy, OperatingPoint) else None
        self.p.metrics.drift.show(self.feature_psi, self.score_psi, self.alert)

    # --- read by the review page -----------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Everything the model-health view draws (JSON-ready), with the drift of all the
        traffic seen so far."""
        self.refresh(force=self.changed)
        s, policy = self.p.settings, self.p.core.policy
        op = policy if isinstance(policy, OperatingPoint) else None
        days = self.daily.rows()
        return {
            "target": {
                "false_discovery_rate": op.target_fdr if op else None,
                "recall": op.target_recall if op else None,
                "capacity_per_day": op.capacity_per_day if op else None,
                "label_maturity_days": round(s.label_maturity_s / 86_400, 2),
            },
            "now": {
                "threshold": float(policy.threshold),
                "model_version": self.p.handle.version,
                "estimate": op.last.as_dict() if op and op.last else None,
            },
            "days": days,
            "drift": {
                "alert": self.alert, "score_psi": _rounded(self.score_psi),
                "features": self.feature_psi,
                # not stated yet: feature → the event time (ms) its drift will be, when known
                "warming": {name: at if math.isfinite(at) else None
                            for name, at in self.drift.warming().items()},
                # never stated: feature → why
                "unwatched": dict(UNWATCHED),
                "alerting": sorted(n for n, v in (self.feature_psi or {}).items() if v > self.alert)
                + (["score"] if self.score_psi is not None and self.score_psi > self.alert else []),
            },
            "scores": score_histograms(op),
            "seat_changes": self.seat_changes(days),
        }

    def seat_changes(self, days: list[dict]) -> list[dict]:
        """The registry's promotions and rollbacks, each with the event day it applies from:
        when this learner saw it, else the first day its version decided traffic."""
        seat = self.p.models.read(SEAT)
        out = []
        for change in (seat or {}).get("history", []):
            epoch, version = change.get("epoch"), change.get("version")
            seen = self.seat_seen.get(epoch) if isinstance(epoch, int) else None
            day = int(seen // DAY_MS) if seen is not None else next(
                (d["day"] for d in days if version in d["versions"]), None)
            out.append({key: change.get(key) for key in
                        ("epoch", "action", "version", "from", "reason", "by", "at_ms")}
                       | {"day": day})
        return out


def score_histograms(op: OperatingPoint | None) -> dict[str, Any] | None:
    """Shares of scored traffic per score group: the last day and the fortnight before."""
    if op is None or not math.isfinite(op.tally.newest_s):
        return None
    now, recent = op.tally.newest_s, op.traffic_window_s
    current = op.tally.window(now - recent, now).traffic()
    reference = op.tally.window(now - op.window_s, now - recent - op.tally.bucket_s).traffic()
    step = BINS // SCORE_GROUPS

    def shares(counts: np.ndarray) -> list[float] | None:
        grouped = np.add.reduceat(counts, np.arange(0, BINS, step))
        total = grouped.sum()
        return None if total <= 0 else [round(float(x), 5) for x in grouped / total]

    return {"edges": [round(i / SCORE_GROUPS, 3) for i in range(SCORE_GROUPS + 1)],
            "current": shares(current), "reference": shares(reference),
            "current_n": int(current.sum()), "reference_n": int(reference.sum())}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
