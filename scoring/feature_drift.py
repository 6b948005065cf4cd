"""Each feature's drift: population stability of the last day against the fortnight before.

The score distribution can hold still while an input moves (a merchant's counts
double, amounts shift to another currency). :class:`FeatureDrift` keeps a bounded
sample of the feature vectors the scorer used, per bucket of event time (a reservoir
of ``per_bucket`` rows each), and compares, feature by feature, the last
``window_s`` with the ``reference_s`` before it: bins are the deciles of the
reference (so every feature, whatever its scale, gets ten equally full bins), and the
index is the population stability index (:func:`stability`). Above 0.2 is the
usual alarm; 0.1–0.2 is worth a look.

Memory: ``per_bucket × n_features`` float32 values per bucket, for the buckets of
``reference_s + window_s`` (with the defaults, 360 hourly buckets of 128 × 17: 3 MB).

>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> drift = FeatureDrift(("amount", "hour"), min_rows=100)
>>> for hour in range(72):
...     shift = 3.0 if hour >= 48 else 0.0  # amounts move on the third day
...     rows = np.column_stack([rng.normal(shift, 1.0, 50), rng.uniform(0, 24, 50)])
...     drift.add(rows, np.full(50, hour * 3_600_000.0))
>>> psi = drift.stability()
>>> psi["amount"] > 0.2, psi["hour"] < 0.1
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

HOUR_MS = 3_600_000.0
DAY_MS = 86_400_000.0
#: Rows the buckets kept need before the earliest of them is when the state began
#: (:attr:`FeatureDrift.since_ms`).
SINCE_ROWS = 10


def stability(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Population stability index per row of two count arrays ``(features, bins)``.

    Each count gets half an observation added (an empty bin is not an infinite shift).

    >>> import numpy as np
    >>> same = np.array([[10, 10, 10]])
    >>> stability(same, same).tolist(), round(float(stability(same, np.array([[25, 4, 1]]))[0]), 3)
    ([0.0], 1.14)
    """
    ref = np.asarray(reference, dtype=np.float64) + 0.5
    cur = np.asarray(current, dtype=np.float64) + 0.5
    p = ref / ref.sum(axis=-1, keepdims=True)
    q = cur / cur.sum(axis=-1, keepdims=True)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def decile_counts(reference: np.ndarray, current: np.ndarray,
                  groups: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``reference`` and ``current`` rows per feature in bins cut at the
    reference's quantiles (deciles by default): two ``(features, groups)`` arrays.

    A value equal to an edge goes to the bin above it; equal edges (a feature with few
    distinct values) leave empty bins between them, in both arrays alike. Values must be
    finite (:class:`FeatureDrift` keeps only finite rows).

    >>> import numpy as np
    >>> ref = np.arange(100.0).reshape(-1, 1)
    >>> r, c = decile_counts(ref, np.full((5, 1), 95.0))
    >>> r.tolist(), c.tolist()
    ([[10, 10, 10, 10, 10, 10, 10, 10, 10, 10]], [[0, 0, 0, 0, 0, 0, 0, 0, 0, 5]])
    """
    # feature by feature, each sorted once (a contiguous row per feature): a bin's count is
    # where its upper edge falls in the sorted values less where its lower one does
    reference, current = np.asarray(reference), np.asarray(current)
    exact = np.result_type(reference, current, np.float32)  # (float32 samples sort as they are)
    ref = np.sort(np.ascontiguousarray(reference.T, dtype=exact), axis=1)
    cur = np.sort(np.ascontiguousarray(current.T, dtype=exact), axis=1)
    edges = ref[:, np.arange(1, groups) * ref.shape[1] // groups]  # (features, groups - 1)
    return _binned(ref, edges), _binned(cur, edges)


def _binned(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per feature and bin of each feature's sorted values (a row per feature): a
    value's bin is the number of edges at or below it, so the values from bin ``i`` up are
    those at or above edge ``i``."""
    n_features, n = ordered.shape
    below = np.empty((n_features, edges.shape[1] + 2), np.int64)  # values below each edge
    below[:, 0], below[:, -1] = 0, n
    for k in range(n_features):
        below[k, 1:-1] = np.searchsorted(ordered[k], edges[k], side="left")
    return np.diff(below, axis=1)


class FeatureDrift:
    """A bounded sample of feature vectors per bucket of event time, and their drift.

    Parameters
    ----------
    names
        The features (columns), in order.
    per_bucket
        Rows kept per bucket (a uniform sample of the bucket's rows).
    bucket_s, window_s, reference_s
        Bucket width; the current window; the reference window before it (event seconds).
    min_rows
        Rows each window needs before a drift is stated.
    seed
        Of the sampling.
    warm_up_ms
        Per feature, the event time after the state's start before its values mean what they
        mean later (a 30-day count of a stream that began a week ago counts a week): a
        feature's drift is stated only once its reference window begins that long after
        :attr:`since_ms`. None: every feature is stateless.
    since_ms
        When the state began (event ms): ``-inf`` for state of unknown age (taken as warm);
        by default the start of the earliest bucket kept once :data:`SINCE_ROWS` rows are
        (records stamped years back, a device with its clock reset, are older than the
        windows and do not end the warm-up).
    unwatched
        Features kept but never compared: one the calendar sets for a whole window (a day's
        traffic is all weekend or none, so against a fortnight every weekend would alarm).
    """

    def __init__(self, names: Sequence[str], per_bucket: int = 128, bucket_s: float = 3_600.0,
                 window_s: float = 86_400.0, reference_s: float = 14 * 86_400.0,
                 min_rows: int = 200, seed: int = 0, warm_up_ms: Sequence[float] | None = None,
                 since_ms: float = math.inf, unwatched: Sequence[str] = ()) -> None:
        if per_bucket < 1 or bucket_s <= 0 or window_s <= 0 or reference_s <= 0:
            raise ValueError("per_bucket, bucket_s, window_s and reference_s must be positive")
        if warm_up_ms is not None and len(warm_up_ms) != len(names):
            raise ValueError("need one warm-up per feature")
        self.names = tuple(names)
        self.warm_up_ms = np.zeros(len(self.names)) if warm_up_ms is None else np.asarray(
            warm_up_ms, dtype=np.float64)
        self.since_ms = since_ms
        self.watched = np.array([name not in set(unwatched) for name in self.names], dtype=bool)
        self.per_bucket = per_bucket
        self.bucket_ms = bucket_s * 1000
        self.window_ms = window_s * 1000
        self.reference_ms = reference_s * 1000
        self.min_rows = min_rows
        self.rng = np.random.default_rng(seed)
        #: bucket → (sample rows, rows seen in the bucket)
        self.buckets: dict[int, tuple[np.ndarray, int]] = {}
        self.newest_ms = -math.inf

    def add(self, features: np.ndarray, at_ms: np.ndarray) -> None:
        """Feature rows ``(n, len(names))`` scored at event times ``at_ms`` (n,)."""
        rows = np.asarray(features, dtype=np.float32)
        at = np.asarray(at_ms, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.names) or len(rows) != len(at):
            raise ValueError(f"need rows of {len(self.names)} features, one time each")
        usable = np.isfinite(at) & np.isfinite(rows).all(axis=1)
        rows, at = rows[usable], at[usable]
        if not len(rows):
            return
        keys = (at // self.bucket_ms).astype(np.int64)
        for key in np.unique(keys).tolist():
            self._sample(key, rows[keys == key])
        self.newest_ms = max(self.newest_ms, float(at.max()))
        cutoff = (self.newest_ms - self.window_ms - self.reference_ms) // self.bucket_ms
        for key in [k for k in self.buckets if k < cutoff]:
            del self.buckets[key]
        self._date_the_state()

    def _date_the_state(self) -> None:
        """:attr:`since_ms` goes back to the earliest bucket kept once the buckets kept hold
        :data:`SINCE_ROWS` rows: rows older than the windows (a device whose clock was reset
        stamps 2000-01-01) never date it, and one stray row in them dates it at most the
        windows' span early."""
        if not self.buckets:
            return
        earliest = min(self.buckets) * self.bucket_ms
        if earliest < self.since_ms and sum(seen for _, seen in self.buckets.values()) >= SINCE_ROWS:
            self.since_ms = earliest

    def _sample(self, key: int, rows: np.ndarray) -> None:
        """Reservoir sampling, one batch at a time: every row seen in the bucket is kept
        with the same chance."""
        sample, seen = self.buckets.get(key, (np.empty((0, len(self.names)), np.float32), 0))
        room = self.per_bucket - len(sample)
        if room > 0:
            sample = np.concatenate([sample, rows[:room]])
        rest = rows[max(room, 0):]
        if len(rest):
            positions = seen + max(room, 0) + np.arange(len(rest))  # each row's index in the bucket
            slots = (self.rng.random(len(rest)) * (positions + 1)).astype(np.int64)
            chosen = slots < self.per_bucket
            sample[slots[chosen]] = rest[chosen]
        self.buckets[key] = (sample, seen + len(rows))

    def window(self, start_ms: float, end_ms: float) -> np.ndarray:
        """The sampled rows of the buckets in ``[start_ms, end_ms)``."""
        lo, hi = start_ms // self.bucket_ms, end_ms // self.bucket_ms
        parts = [s for k, (s, _) in self.buckets.items() if lo <= k < hi]
        return np.concatenate(parts) if parts else np.empty((0, len(self.names)), np.float32)

    def _reference_start_ms(self) -> float:
        end = (self.newest_ms // self.bucket_ms + 1) * self.bucket_ms
        return end - self.window_ms - self.reference_ms

    def stability(self) -> dict[str, float] | None:
        """PSI per feature of the last ``window_s`` against the ``reference_s`` before it,
        for the features warmed up (:meth:`warming`: the others are left out); None until
        both windows hold ``min_rows`` rows."""
        start = self._reference_start_ms()
        if not math.isfinite(start):
            return None
        end = start + self.reference_ms + self.window_ms
        current = self.window(end - self.window_ms, end)
        reference = self.window(start, end - self.window_ms)
        if len(current) < self.min_rows or len(reference) < self.min_rows:
            return None
        warm = np.flatnonzero(self.watched & ~self._cold(start))
        ref_counts, cur_counts = decile_counts(reference[:, warm], current[:, warm])
        psi = stability(ref_counts, cur_counts)
        return {self.names[k]: round(float(v), 4) for k, v in zip(warm.tolist(), psi, strict=True)}

    def warming(self) -> dict[str, float]:
        """The features whose drift is not stated yet, each with the event time (ms) from which
        it will be: its warm-up after :attr:`since_ms`, then the reference and current
        windows (before any row: every feature with a warm-up, from an unknown time).

        >>> drift = FeatureDrift(("amount", "count_30d"), warm_up_ms=(0.0, 30 * DAY_MS))
        >>> drift.add(np.ones((20, 2)), np.repeat([0.0, 2 * DAY_MS], 10))
        >>> drift.warming() == {"count_30d": 30 * DAY_MS + 14 * DAY_MS + DAY_MS}
        True
        """
        ready = self.since_ms + self.warm_up_ms
        return {self.names[k]: float(ready[k] + self.reference_ms + self.window_ms)
                for k in np.flatnonzero(self._cold(self._reference_start_ms())).tolist()}

    def _cold(self, reference_start_ms: float) -> np.ndarray:
        """Per feature: whether a reference window from ``reference_start_ms`` begins within
        its warm-up (a feature without one is never cold, nor any of state of unknown age)."""
        if self.since_ms == -math.inf:
            return np.zeros(len(self.names), dtype=bool)
        with np.errstate(invalid="ignore"):  # (inf - inf, before any row)
            early = ~(reference_start_ms >= self.since_ms + self.warm_up_ms)
        return self.watched & (self.warm_up_ms > 0) & early
