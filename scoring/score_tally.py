"""Scored traffic and its labels, counted by score bin and event-time bucket.

The operating point needs, for every candidate threshold, how many transactions
score at or above it and how many of those are fraud. Labels alone cannot say:
people review only what was flagged, and below the threshold only frauds come
back (as chargebacks), so a window of labels makes every lower threshold look
free. :class:`ScoreTally` therefore counts *all* scored traffic (flagged or
not) beside the labels, per score bin, per bucket of event time. A window of it
is a :class:`Counts`: from those the frauds at or above a threshold are

* flagged transactions × the fraud share reviewers found in their score bin, plus
* unflagged transactions that came back as frauds (chargebacks).

Memory is fixed by the window: ``6 × BINS`` integers per bucket.

>>> import numpy as np
>>> tally = ScoreTally(bucket_s=3_600)
>>> tally.add_traffic(np.array([0.1, 0.6, 0.9]), np.array([False, True, True]), at_s=100.0)
>>> tally.add_label(0.9, fraud=True, flagged=True, at_s=100.0)
>>> tally.add_label(0.6, fraud=False, flagged=True, at_s=100.0)
>>> counts = tally.window(0.0, 3_600.0)
>>> [round(x, 2) for x in (counts.at_or_above(0.5), counts.frauds_at_or_above(0.5))]
[2.0, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Score bins: thresholds live on the grid ``i / BINS``.
BINS = 200
FLAGGED, UNFLAGGED, REVIEWED_FRAUD, REVIEWED_LEGIT, MISSED_FRAUD, MISSED_LEGIT = range(6)
#: Window sums a tally keeps up to date (one per role; the operating point asks for five).
KEPT_WINDOWS = 8


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index of each score: bin ``i`` holds scores in ``[i/BINS, (i+1)/BINS)``.

    >>> score_bins(np.array([0.0, 0.004, 0.005, 0.999, 1.0])).tolist()
    [0, 0, 1, 199, 199]
    """
    clipped = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return np.minimum((clipped * BINS).astype(np.int64), BINS - 1)


def grid_index(threshold: float) -> int:
    """The grid point at or just above ``threshold`` (``score >= i/BINS`` ⇔ ``bin >= i``).

    >>> grid_index(0.5), grid_index(0.5024), grid_index(1.0), grid_index(-1.0)
    (100, 101, 200, 0)
    """
    return int(min(BINS, max(0, math.ceil(float(threshold) * BINS - 1e-9))))


@dataclass(frozen=True)
class Counts:
    """A window of the tally: ``rows[kind, bin]`` counts.

    >>> c = Counts(np.zeros((6, BINS), np.int64))
    >>> c.at_or_above(0.5), c.false_discovery_rate(0.5), c.recall(0.5)
    (0.0, None, None)
    """

    rows: np.ndarray

    def _from_top(self, per_bin: np.ndarray) -> np.ndarray:
        """``out[i]`` = sum of ``per_bin`` over bins ``>= i`` (``out[BINS]`` = 0)."""
        return np.append(np.cumsum(per_bin[::-1])[::-1], 0.0)

    def traffic(self) -> np.ndarray:
        return (self.rows[FLAGGED] + self.rows[UNFLAGGED]).astype(np.float64)

    def frauds_per_bin(self, mature: Counts | None = None) -> np.ndarray:
        """Estimated frauds per bin: flagged × the fraud share reviewers found, plus the
        unflagged ones that came back as frauds.

        The share is the reviewed labels' fraud share made non-decreasing in the score
        (isotonic regression, weighted by the labels in each bin; bins without labels take
        the fitted share of the nearest bin below, or above at the bottom): fraud is no rarer
        at higher scores, so a sparse bin borrows from its neighbours and from nothing else.
        (Shrunk toward the pooled share, sparse high bins took the many low-score reviews'
        share and the threshold climbed; shrunk toward the share at or above each bin, every
        bin took a higher one and the estimate was optimistic: 0.13 against a realised 0.19.)

        Unflagged frauds come back only as chargebacks, days later: counted as they are, the
        newest days of unflagged traffic look legitimate. With ``mature`` (a window old enough
        for its chargebacks), a bin's unflagged traffic gets the fraud share its mature
        unflagged traffic had, so lowering the threshold is judged on the truth, not on the
        chargebacks that are still to come.
        """
        r = self.rows
        fraud, legit = r[REVIEWED_FRAUD].astype(np.float64), r[REVIEWED_LEGIT].astype(np.float64)
        share = monotone_share(fraud, fraud + legit)
        missed = r[MISSED_FRAUD].astype(np.float64)
        if mature is not None:
            seen = mature.rows[UNFLAGGED]
            mature_share = mature.rows[MISSED_FRAUD] / np.maximum(seen, 1)
            missed = np.where(seen > 0, np.maximum(missed, r[UNFLAGGED] * mature_share), missed)
        return r[FLAGGED] * share + missed

    def curve(self, mature: Counts | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At every grid point: transactions, estimated frauds, and evidence (reviewed
        labels plus unflagged transactions, whose fraud count is exact once mature).
        ``mature``: see :meth:`frauds_per_bin`."""
        r = self.rows
        evidence = (r[REVIEWED_FRAUD] + r[REVIEWED_LEGIT] + r[UNFLAGGED]).astype(np.float64)
        return (self._from_top(self.traffic()), self._from_top(self.frauds_per_bin(mature)),
                self._from_top(evidence))

    def at_or_above(self, threshold: float) -> float:
        return float(self._from_top(self.traffic())[grid_index(threshold)])

    def frauds_at_or_above(self, threshold: float) -> float:
        return float(self._from_top(self.frauds_per_bin())[grid_index(threshold)])

    def false_discovery_rate(self, threshold: float) -> float | None:
        """Estimated share of flags that are legitimate at ``threshold`` (None: no flags)."""
        n = self.at_or_above(threshold)
        return None if n <= 0 else max(0.0, 1.0 - self.frauds_at_or_above(threshold) / n)

    def recall(self, threshold: float) -> float | None:
        """Estimated share of frauds at or above ``threshold`` (None: no frauds known)."""
        total = float(self.frauds_per_bin().sum())
        return None if total <= 0 else min(1.0, self.frauds_at_or_above(threshold) / total)

    def labels(self) -> int:
        r = self.rows
        return int(r[REVIEWED_FRAUD].sum() + r[REVIEWED_LEGIT].sum() + r[MISSED_FRAUD].sum()
                   + r[MISSED_LEGIT].sum())

    def frauds(self) -> int:
        return int(self.rows[REVIEWED_FRAUD].sum() + self.rows[MISSED_FRAUD].sum())


def monotone_share(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Per bin, the share ``successes / trials`` fitted non-decreasing along the bins
    (weighted isotonic regression, pool-adjacent-violators); bins without trials take the
    fitted share of the nearest bin with trials below them (above, for the lowest ones);
    all zeros when there are no trials at all.

    >>> monotone_share(np.array([0., 1., 0., 3., 0.]), np.array([2., 2., 0., 4., 1.])).round(3).tolist()
    [0.0, 0.5, 0.5, 0.6, 0.6]
    """
    trials = np.asarray(trials, dtype=np.float64)
    has = np.flatnonzero(trials > 0)
    if has.size == 0:
        return np.zeros(len(trials))
    shares = np.asarray(successes, dtype=np.float64)[has] / trials[has]
    v: list[float] = []  # pooled blocks: share, weight, bins
    w: list[float] = []
    n: list[int] = []
    for value, weight in zip(shares.tolist(), trials[has].tolist(), strict=True):
        v.append(value)
        w.append(weight)
        n.append(1)
        while len(v) > 1 and v[-2] > v[-1]:  # pool adjacent violators
            total = w[-2] + w[-1]
            v[-2:] = [(v[-2] * w[-2] + v[-1] * w[-1]) / total]
            w[-2:], n[-2:] = [total], [n[-2] + n[-1]]
    fitted = np.repeat(v, n)
    # every bin takes the fit of the nearest bin with trials at or below it (above: the lowest)
    nearest = np.searchsorted(has, np.arange(len(trials)), side="right") - 1
    return fitted[np.maximum(nearest, 0)]


def population_stability(reference: np.ndarray, current: np.ndarray, groups: int = 10) -> float | None:
    """Population stability index of two score histograms (same bins), over ``groups``
    equal-width score groups; None when either is empty. Above 0.2 is a marked shift.

    >>> ref = np.ones(BINS)
    >>> population_stability(ref, ref), round(population_stability(ref, np.arange(BINS) * 1.0), 3)
    (0.0, 0.47)
    """
    ref = np.add.reduceat(np.asarray(reference, dtype=np.float64), np.arange(0, BINS, BINS // groups))
    cur = np.add.reduceat(np.asarray(current, dtype=np.float64), np.arange(0, BINS, BINS // groups))
    if ref.sum() <= 0 or cur.sum() <= 0:
        return None
    p, q = (ref + 0.5) / (ref.sum() + 0.5 * groups), (cur + 0.5) / (cur.sum() + 0.5 * groups)
    return float(np.sum((q - p) * np.log(q / p)))


class ScoreTally:
    """Counts per ``(event-time bucket, kind, score bin)``; old buckets are dropped.

    Event time, not wall time: labels arrive days after the transaction (a chargeback)
    and are counted in the bucket of the transaction they label, so a window's traffic
    and its labels describe the same transactions.

    A window's sum is kept (one per window *role*: its width and its distance from the
    newest bucket, at most :data:`KEPT_WINDOWS`) and moved as time goes on: every count
    added to a bucket is added to the kept sums that cover it, a forgotten bucket is taken
    out of them, and the next call for the same role adds the buckets it gained and takes
    out those it lost, instead of adding up hundreds of buckets each time. Counts are
    integers, so the sum is exact whichever way it is formed (:meth:`window_reference`
    adds every bucket afresh; ``tests/test_learner_batch.py`` compares them).
    """

    def __init__(self, bucket_s: float = 3_600.0, keep_s: float = 30 * 86_400.0) -> None:
        if bucket_s <= 0 or keep_s <= 0:
            raise ValueError("bucket_s and keep_s must be positive")
        self.bucket_s = float(bucket_s)
        self.keep_s = float(keep_s)
        self.buckets: dict[int, np.ndarray] = {}
        self.newest_s = -math.inf
        self.oldest_s = math.inf
        #: nothing scored before this counts (see :meth:`restart`)
        self.since_s = -math.inf
        #: kept window sums by role (width, distance from the newest bucket): [lo, hi, sum]
        self._sums: dict[tuple[int, int], tuple[int, int, np.ndarray]] = {}

    def restart(self) -> None:
        """Forget everything counted: from now on only transactions scored at or after the
        newest event time seen count (their scores come from another model)."""
        self.buckets.clear()
        self._sums.clear()
        self.since_s, self.oldest_s = self.newest_s, math.inf

    def _touch(self, at_s: float) -> list[np.ndarray]:
        return self._touch_key(int(at_s // self.bucket_s))

    def _touch_key(self, key: int) -> list[np.ndarray]:
        """The bucket ``key`` (made when new), then every kept window sum that covers it: a
        count goes into each of them."""
        rows = self.buckets.get(key)
        if rows is None:
            rows = self.buckets[key] = np.zeros((6, BINS), np.int64)
        return [rows, *(total for lo, hi, total in self._sums.values() if lo <= key <= hi)]

    def add_traffic(self, scores: np.ndarray, flagged: np.ndarray, at_s: float) -> None:
        """Count a batch of decisions scored at event time ``at_s``."""
        if (len(scores) == 0 or not math.isfinite(at_s) or at_s < self.newest_s - self.keep_s
                or at_s < self.since_s):
            return
        bins, flagged = score_bins(scores), np.asarray(flagged, dtype=bool)
        counted = np.bincount(bins[flagged], minlength=BINS), np.bincount(bins[~flagged], minlength=BINS)
        for rows in self._touch(at_s):
            rows[FLAGGED] += counted[0]
            rows[UNFLAGGED] += counted[1]
        self.oldest_s = min(self.oldest_s, at_s)
        if at_s > self.newest_s:
            self.newest_s = at_s
            self._forget()

    def add_label(self, score: float, fraud: bool, flagged: bool, at_s: float) -> None:
        """Count one label of a transaction scored at event time ``at_s``."""
        if not math.isfinite(at_s) or at_s < max(self.newest_s - self.keep_s, self.since_s):
            return  # too old to matter, scored by an earlier model (or nonsense)
        kind = (REVIEWED_FRAUD if fraud else REVIEWED_LEGIT) if flagged else (
            MISSED_FRAUD if fraud else MISSED_LEGIT)
        at = kind, score_bins(np.array([score]))[0]
        for rows in self._touch(at_s):
            rows[at] += 1

    def add_labels(self, scores: np.ndarray, frauds: np.ndarray, flagged: np.ndarray,
                   at_s: np.ndarray) -> None:
        """Count labels at once: the same counts as one :meth:`add_label` per label (counts
        add up in any order; labels do not move :attr:`newest_s`, so every label is judged
        against the same cut-off).

        >>> a, b = ScoreTally(), ScoreTally()
        >>> a.add_labels(np.array([0.9, 0.2]), np.array([True, False]), np.array([True, False]),
        ...              np.array([10.0, 7_300.0]))
        >>> b.add_label(0.9, True, True, 10.0); b.add_label(0.2, False, False, 7_300.0)
        >>> sorted(a.buckets) == sorted(b.buckets) and all(
        ...     np.array_equal(a.buckets[k], b.buckets[k]) for k in a.buckets)
        True
        """
        at = np.asarray(at_s, dtype=np.float64)
        if len(at) == 0:
            return
        cut = max(self.newest_s - self.keep_s, self.since_s)
        keep = np.isfinite(at) & ~(at < cut)
        if not keep.any():
            return
        fraud = np.asarray(frauds, dtype=bool)[keep]
        kinds = np.where(np.asarray(flagged, dtype=bool)[keep],
                         np.where(fraud, REVIEWED_FRAUD, REVIEWED_LEGIT),
                         np.where(fraud, MISSED_FRAUD, MISSED_LEGIT))
        bins = score_bins(np.asarray(scores, dtype=np.float64)[keep])
        keys = np.array([int(a // self.bucket_s) for a in at[keep].tolist()], dtype=np.int64)
        for key in np.unique(keys).tolist():
            mine = keys == key
            cells = np.bincount(kinds[mine] * BINS + bins[mine], minlength=6 * BINS).reshape(6, BINS)
            for rows in self._touch_key(key):
                rows += cells

    def _forget(self) -> None:
        cutoff = int((self.newest_s - self.keep_s) // self.bucket_s)
        for key in [k for k in self.buckets if k < cutoff]:
            for _, _, total in (s for s in self._sums.values() if s[0] <= key <= s[1]):
                total -= self.buckets[key]
            del self.buckets[key]
        self.oldest_s = max(self.oldest_s, cutoff * self.bucket_s)

    def window(self, start_s: float, end_s: float) -> Counts:
        """Counts of transactions scored in ``[start_s, end_s]`` (whole buckets)."""
        lo_f, hi_f = start_s // self.bucket_s, end_s // self.bucket_s
        if not (math.isfinite(lo_f) and math.isfinite(hi_f) and math.isfinite(self.newest_s)) \
                or hi_f < lo_f:
            return self.window_reference(start_s, end_s)
        lo, hi = int(lo_f), int(hi_f)
        role = (hi - lo, int(self.newest_s // self.bucket_s) - hi)
        kept = self._sums.pop(role, None)
        if kept is None or abs(lo - kept[0]) + abs(hi - kept[1]) > min(hi - lo + 1, len(self.buckets)):
            total = self.window_reference(start_s, end_s).rows
        else:  # move the kept sum: add the buckets it gains, take out those it loses
            old_lo, old_hi, total = kept
            for first, last, sign in ((old_lo, min(old_hi, lo - 1), -1), (max(old_lo, hi + 1), old_hi, -1),
                                      (lo, min(hi, old_lo - 1), 1), (max(lo, old_hi + 1), hi, 1)):
                for key in range(first, last + 1):
                    rows = self.buckets.get(key)
                    if rows is not None:
                        total += sign * rows
        self._sums[role] = (lo, hi, total)
        while len(self._sums) > KEPT_WINDOWS:
            del self._sums[next(iter(self._sums))]
        return Counts(total.copy())

    def window_reference(self, start_s: float, end_s: float) -> Counts:
        """:meth:`window` adding up every bucket in it afresh."""
        lo, hi = start_s // self.bucket_s, end_s // self.bucket_s
        total = np.zeros((6, BINS), np.int64)
        for key, counts in self.buckets.items():  # (adding in place: no stacked copy)
            if lo <= key <= hi:
                total += counts
        return Counts(total)

    def span_s(self, start_s: float, end_s: float) -> float:
        """Event seconds of traffic seen in the buckets :meth:`window` sums for these bounds."""
        start = (start_s // self.bucket_s) * self.bucket_s
        return max(0.0, min(end_s, self.newest_s) - max(start, self.oldest_s))
