"""The business metric by event day: false alarms, fraud caught, automation and overturns.

A fraud lead asks of every day of traffic: how many of the flags were false alarms,
how much of the fraud did we catch, how much did the machine decide alone, and how
often was it wrong when it did. :class:`DailyHealth` counts, per event day (UTC), the
decisions the scorer made and the delayed labels joined to them:

* ``decisions``, ``flagged`` (alerts: sent to a person or declined automatically),
  ``auto`` (approved with nobody looking) and ``declined`` (declined with nobody looking);
* labels of flagged transactions, ``flagged_fraud`` and ``flagged_legit`` (reviewers'
  verdicts), and of automatic ones, ``auto_fraud`` (a chargeback on an approval: an
  overturn) and ``auto_legit``, and ``declined_legit`` (an automatic decline that was
  legitimate: an overturn).

From those, per day: the **false-alarm share** (false-discovery rate) of the labelled
flags, **recall** (caught frauds over caught plus missed), the **auto-decided share**
and the **overturn rate** (automatic decisions the labels contradicted), each with a
Wilson interval; and what the operating point said that day (its threshold, its own
estimate and whether the target was met). Days younger than the label maturity are
marked ``mature = False``: their missed frauds are not all back yet.

Memory is bounded: the newest ``keep_days`` event days.

>>> health = DailyHealth(maturity_s=0.0)
>>> day = 17_623 * DAY_MS  # 2018-04-02
>>> health.add_decisions(
...     [{"event_time_ms": day + 1, "decision": "review", "threshold": 0.4, "model_version": "lr-000002"},
...      {"event_time_ms": day + 2, "decision": "approve", "threshold": 0.4, "model_version": "lr-000002"},
...      {"event_time_ms": day + 3, "decision": "approve", "threshold": 0.4, "model_version": "lr-000002"}])
>>> health.add_labels([({"event_time_ms": day + 1, "decision": "review"}, 1),
...                    ({"event_time_ms": day + 2, "decision": "approve"}, 1)])
>>> [row] = health.rows()
>>> row["date"], row["flagged"], row["recall"], row["auto_share"], row["overturn_rate"]
('2018-04-02', 1, 0.5, 0.6667, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flagstream.scoring.operating_point import Estimate, as_label, wilson

DAY_MS = 86_400_000
#: Counted per day, in this order.
COLUMNS = ("decisions", "flagged", "auto", "flagged_fraud", "flagged_legit", "auto_fraud",
           "auto_legit", "declined", "declined_legit")
(DECISIONS, FLAGGED, AUTO, FLAGGED_FRAUD, FLAGGED_LEGIT, AUTO_FRAUD, AUTO_LEGIT, DECLINED,
 DECLINED_LEGIT) = range(len(COLUMNS))
#: Model versions remembered per day (the first ones seen, then only a count).
MAX_VERSIONS = 12


def _share(successes: int, trials: int, confidence: float) -> dict[str, float | None]:
    """A proportion with its Wilson interval, rounded for a page; None when nothing was seen."""
    if trials <= 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    low, high = wilson(successes, trials, confidence)
    return {"value": round(successes / trials, 4), "low": round(low, 4), "high": round(high, 4),
            "n": int(trials)}


def _is_flagged(decision: dict) -> bool:
    return decision.get("decision") != "approve"


def _event_times(decisions: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Event times (ms) and event days of decisions; day -1 where the time is unusable."""
    stamps = np.array([_number(d.get("event_time_ms")) for d in decisions], dtype=np.float64)
    days = np.full(len(stamps), -1, dtype=np.int64)
    finite = np.isfinite(stamps) & (stamps >= 0)
    days[finite] = (stamps[finite] // DAY_MS).astype(np.int64)
    return stamps, days


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


class DailyHealth:
    """Decisions and their labels counted per event day, for the model-health view.

    Parameters
    ----------
    keep_days
        Event days kept (older ones are dropped, and labels for them ignored).
    maturity_s
        Event seconds after which a day's chargebacks are all in (its recall is final).
    confidence
        Level of the Wilson intervals.
    """

    def __init__(self, keep_days: int = 60, maturity_s: float = 7 * 86_400.0,
                 confidence: float = 0.95) -> None:
        if keep_days < 1:
            raise ValueError("keep_days must be at least 1")
        self.keep_days = keep_days
        self.maturity_s = maturity_s
        self.confidence = confidence
        self.counts: dict[int, np.ndarray] = {}
        self.days: dict[int, dict[str, Any]] = {}
        self.newest_day = -1
        self.newest_ms = -math.inf

    # --- evidence in ---------------------------------------------------------------------
    def _keep(self, days: np.ndarray) -> np.ndarray:
        """Mask of the days still kept (advancing the newest day first)."""
        valid = days >= 0
        if valid.any():
            newest = int(days[valid].max())
            if newest > self.newest_day:
                self.newest_day = newest
                self._forget()
        return valid & (days > self.newest_day - self.keep_days)

    def _forget(self) -> None:
        cutoff = self.newest_day - self.keep_days
        for day in [d for d in self.counts if d <= cutoff]:
            del self.counts[day]
            self.days.pop(day, None)

    def _row(self, day: int) -> np.ndarray:
        row = self.counts.get(day)
        if row is None:
            row = self.counts[day] = np.zeros(len(COLUMNS), np.int64)
            self.days[day] = {"threshold_min": None, "threshold_max": None, "versions": {},
                              "estimate": None}
        return row

    def add_decisions(self, decisions: Sequence[dict]) -> None:
        """Decisions made (``event_time_ms``, ``decision``; ``threshold`` and ``model_version``
        when present), counted in their event day."""
        if not decisions:
            return
        stamps, days = _event_times(decisions)
        keep = self._keep(days)
        if not keep.any():
            return
        self.newest_ms = max(self.newest_ms, float(stamps[keep].max()))
        flagged = np.array([_is_flagged(d) for d in decisions], dtype=bool)
        declined = np.array([d.get("decision") == "decline" for d in decisions], dtype=bool)
        kept_days = days[keep]
        unique, inverse = np.unique(kept_days, return_inverse=True)
        per_day = np.bincount(inverse, minlength=len(unique))
        flags = np.bincount(inverse, weights=flagged[keep], minlength=len(unique)).astype(np.int64)
        declines = np.bincount(inverse, weights=declined[keep],
                               minlength=len(unique)).astype(np.int64)
        for day, n, f, x in zip(unique.tolist(), per_day.tolist(), flags.tolist(),
                                declines.tolist(), strict=True):
            row = self._row(day)
            row[DECISIONS] += n
            row[FLAGGED] += f
            row[AUTO] += n - f
            row[DECLINED] += x
        for d, day in zip(decisions, days.tolist(), strict=True):
            if day in self.days:
                self._note(self.days[day], d)

    @staticmethod
    def _note(meta: dict[str, Any], decision: dict) -> None:
        threshold = decision.get("threshold")
        if isinstance(threshold, int | float) and math.isfinite(threshold):
            t = float(threshold)
            lo, hi = meta["threshold_min"], meta["threshold_max"]
            meta["threshold_min"] = t if lo is None else min(lo, t)
            meta["threshold_max"] = t if hi is None else max(hi, t)
        version = decision.get("model_version")
        if isinstance(version, str) and (version in meta["versions"]
                                         or len(meta["versions"]) < MAX_VERSIONS):
            meta["versions"][version] = meta["versions"].get(version, 0) + 1

    def add_labels(self, labelled: Iterable[tuple]) -> None:
        """Labels joined to their decisions: ``(decision, label, ...)`` tuples (a ``Learner``
        outcome's ``labelled``), counted in the day of the transaction they label."""
        pairs = [(t[0], as_label(t[1])) for t in labelled]
        if not pairs:
            return
        _, days = _event_times([d for d, _ in pairs])
        keep = (days >= 0) & (days > self.newest_day - self.keep_days)
        flagged = np.array([_is_flagged(d) for d, _ in pairs], dtype=bool)
        fraud = np.array([y for _, y in pairs], dtype=bool)
        column = np.where(flagged, np.where(fraud, FLAGGED_FRAUD, FLAGGED_LEGIT),
                          np.where(fraud, AUTO_FRAUD, AUTO_LEGIT))
        overturned_decline = np.array([d.get("decision") == "decline" for d, _ in pairs]) & ~fraud
        for day, col, extra in zip(days[keep].tolist(), column[keep].tolist(),
                                   overturned_decline[keep].tolist(), strict=True):
            row = self._row(day)
            row[col] += 1
            row[DECLINED_LEGIT] += extra

    def add_estimate(self, estimate: Estimate | dict, at_ms: float | None = None) -> None:
        """What the operating point said (its latest word counts for the day of ``at_ms``,
        default the newest decision's event time)."""
        at = self.newest_ms if at_ms is None else float(at_ms)
        if not math.isfinite(at) or at < 0:
            return
        day = int(at // DAY_MS)
        if day <= self.newest_day - self.keep_days:
            return
        values = estimate if isinstance(estimate, dict) else estimate.as_dict()
        self._row(day)
        self.days[day]["estimate"] = {
            key: values.get(key) for key in ("threshold", "target_met", "false_discovery_rate",
                                             "fdr_low", "fdr_high", "recall", "recall_low",
                                             "recall_high", "flags_per_day", "reason")}

    # --- what the page shows -------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One row per kept event day, oldest first: counts, shares with intervals, the
        operating point's word, versions seen, and whether the day is mature."""
        out = []
        z = self.confidence
        for day in sorted(self.counts):
            c = [int(x) for x in self.counts[day]]
            meta = self.days[day]
            estimate = meta["estimate"] or {}
            end_ms = (day + 1) * DAY_MS
            fdr = _share(c[FLAGGED_LEGIT], c[FLAGGED_FRAUD] + c[FLAGGED_LEGIT], z)
            recall = _share(c[FLAGGED_FRAUD], c[FLAGGED_FRAUD] + c[AUTO_FRAUD], z)
            # decided without a person: approvals and automatic declines; overturned: an
            # approval that came back as fraud, a decline that came back legitimate
            auto = _share(c[AUTO] + c[DECLINED], c[DECISIONS], z)
            overturn = _share(c[AUTO_FRAUD] + c[DECLINED_LEGIT], c[AUTO] + c[DECLINED], z)
            out.append({
                "day": day,
                "date": datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d"),
                **dict(zip(COLUMNS, c, strict=True)),
                "fdr": fdr["value"], "fdr_low": fdr["low"], "fdr_high": fdr["high"],
                "recall": recall["value"], "recall_low": recall["low"],
                "recall_high": recall["high"],
                "auto_share": auto["value"], "auto_low": auto["low"], "auto_high": auto["high"],
                "overturn_rate": overturn["value"], "overturn_low": overturn["low"],
                "overturn_high": overturn["high"],
                "threshold_min": meta["threshold_min"], "threshold_max": meta["threshold_max"],
                "threshold": estimate.get("threshold", meta["threshold_max"]),
                "target_met": estimate.get("target_met"),
                "estimate": meta["estimate"],
                "versions": dict(meta["versions"]),
                "mature": bool(self.newest_ms >= end_ms + self.maturity_s * 1000),
            })
        return out
