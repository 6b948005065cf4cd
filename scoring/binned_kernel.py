"""The binned model's learner: a Numba kernel and its pure-Python reference.

:func:`learn_rows` learns a batch of labelled rows in order, exactly as one label at a
time would (see :mod:`flagstream.scoring.binned` for the model); :func:`learn_rows_reference`
is the same in plain Python, one row, one input and one pair at a time, and
``tests/test_binned.py`` checks that they agree on random inputs.

Per row: update each input's running mean and squared deviations (Welford), standardise it
(``z``, clipped to ±:data:`Z_LIMIT`, 0 until ``min_support`` labels had it beyond ``support_z``),
find its bin, and its coarse pair bin; the logit is the bias, plus each input's slope times
``z`` and its bin weight, plus each pair's cell weight; then one AdaGrad step on every term
that took part (the bias, every slope, one bin weight per input, one cell per pair).

>>> import numpy as np
>>> edges, pair_edges = np.array([0.0]), np.array([0.0])
>>> count, bias, bias_g2 = np.zeros(1), np.zeros(1), np.full(1, 1e-8)
>>> means, m2, support, slopes, slope_g2 = (np.zeros(2) for _ in range(5))
>>> slope_g2 += 1e-8
>>> steps, step_g2 = np.zeros((2, 2)), np.full((2, 2), 1e-8)
>>> pairs, pair_steps, pair_g2 = np.array([[0, 1]]), np.zeros((1, 2, 2)), np.full((1, 2, 2), 1e-8)
>>> rows = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]] * 10)
>>> labels = (rows[:, 0] == rows[:, 1]).astype(float)   # an interaction: no input alone says
>>> learn_rows(rows, labels, np.ones(40), count, means, m2, support, slopes, steps, bias, slope_g2,
...            step_g2, bias_g2, edges, 0.5, 0.0, 0.0, 0.5, pairs, pair_edges, pair_steps, pair_g2)
>>> bool(pair_steps[0, 1, 1] > 0 > pair_steps[0, 1, 0])   # both high: risky; one high: not
True
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Standardised inputs are clipped to ±this: beyond it a value says nothing more, and a
#: bounded ``z`` keeps every term, and so every score, finite whatever a loaded state holds.
Z_LIMIT = 1e3


@numba.njit(cache=True, nogil=True)
def _bin(z: float, edges: np.ndarray) -> int:
    i = 0
    while i < edges.shape[0] and z > edges[i]:
        i += 1
    return i


@numba.njit(cache=True, nogil=True)
def learn_rows(inputs: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray,
               count: np.ndarray, means: np.ndarray, m2: np.ndarray, support: np.ndarray,
               slopes: np.ndarray, steps: np.ndarray, bias: np.ndarray,
               slope_g2: np.ndarray, step_g2: np.ndarray, bias_g2: np.ndarray,
               edges: np.ndarray, learning_rate: float, l2: float, min_support: float,
               support_z: float, pairs: np.ndarray, pair_edges: np.ndarray, pair_steps: np.ndarray,
               pair_g2: np.ndarray) -> None:
    """Learn ``inputs`` (n, k) row by row, in place (see the module docstring).

    ``count``, ``bias`` and ``bias_g2`` are length-1 arrays (so they update in place);
    ``pairs`` is (p, 2) input indices, ``pair_steps`` and ``pair_g2`` (p, b, b) with
    ``b = len(pair_edges) + 1``.
    """
    n, k = inputs.shape
    n_pairs = pairs.shape[0]
    z = np.empty(k)
    bins = np.empty(k, np.int64)
    cells = np.empty((n_pairs, 2), np.int64)
    for r in range(n):
        count[0] += 1.0
        c = count[0]
        logit = bias[0]
        for j in range(k):
            x = inputs[r, j]
            delta = x - means[j]
            means[j] += delta / c
            m2[j] += delta * (x - means[j])
            var = m2[j] / c
            z[j] = min(max((x - means[j]) / math.sqrt(var), -Z_LIMIT), Z_LIMIT) if var > 0.0 else 0.0
            if abs(z[j]) > support_z:
                support[j] += 1.0
            if support[j] < min_support:
                z[j] = 0.0
            bins[j] = _bin(z[j], edges)
            logit += slopes[j] * z[j] + steps[j, bins[j]]
        for p in range(n_pairs):
            cells[p, 0] = _bin(z[pairs[p, 0]], pair_edges)
            cells[p, 1] = _bin(z[pairs[p, 1]], pair_edges)
            logit += pair_steps[p, cells[p, 0], cells[p, 1]]
        logit = min(max(logit, -50.0), 50.0)
        g = (1.0 / (1.0 + math.exp(-logit)) - labels[r]) * sample_weights[r]
        bias_g2[0] += g * g
        bias[0] -= learning_rate * g / math.sqrt(bias_g2[0])
        for j in range(k):
            gs = g * z[j] + l2 * slopes[j]
            slope_g2[j] += gs * gs
            slopes[j] -= learning_rate * gs / math.sqrt(slope_g2[j])
            b = bins[j]
            step_g2[j, b] += g * g
            steps[j, b] -= learning_rate * g / math.sqrt(step_g2[j, b])
        for p in range(n_pairs):
            a, b = cells[p, 0], cells[p, 1]
            pair_g2[p, a, b] += g * g
            pair_steps[p, a, b] -= learning_rate * g / math.sqrt(pair_g2[p, a, b])


@numba.njit(cache=True, nogil=True)
def _standardise(row: np.ndarray, log_columns: np.ndarray, amount: int, knots: np.ndarray,
                 means: np.ndarray, inverse_std: np.ndarray, z: np.ndarray) -> None:
    """One raw feature row's standardised model inputs into ``z``: the features
    (``log1p`` where ``log_columns`` says), then one hinge of the ``amount`` feature per
    knot, as :func:`flagstream.scoring.linear.transform` makes them; each less its mean,
    times ``inverse_std`` (0 where an input is not yet known), clipped to ±:data:`Z_LIMIT`."""
    f = row.shape[0]
    for j in range(z.shape[0]):
        if j < f:
            x = row[j]
            if log_columns[j]:
                x = math.log1p(max(x, 0.0))
        else:
            x = max(row[amount] - knots[j - f], 0.0)
        z[j] = min(max((x - means[j]) * inverse_std[j], -Z_LIMIT), Z_LIMIT)


@numba.njit(cache=True, nogil=True)
def score_rows(matrix: np.ndarray, log_columns: np.ndarray, amount: int, knots: np.ndarray,
               means: np.ndarray, inverse_std: np.ndarray, slopes: np.ndarray, steps: np.ndarray,
               bias: np.ndarray, edges: np.ndarray, pairs: np.ndarray, pair_edges: np.ndarray,
               pair_steps: np.ndarray, out: np.ndarray) -> None:
    """The fraud probability of each raw feature row of ``matrix`` (n, f) into ``out``.

    Each row's inputs are made and standardised (:func:`_standardise`); the logit is then
    summed as in :func:`learn_rows`. One call for a whole step: a step of one record costs a few
    microseconds, where numpy's gathers cost their fixed price per array.
    :meth:`flagstream.scoring.binned.BinnedLogistic.predict_one` is its plain-Python reference.
    """
    z = np.empty(means.shape[0])
    for r in range(matrix.shape[0]):
        _standardise(matrix[r], log_columns, amount, knots, means, inverse_std, z)
        logit = bias[0]
        for j in range(z.shape[0]):
            logit += slopes[j] * z[j] + steps[j, _bin(z[j], edges)]
        for p in range(pairs.shape[0]):
            logit += pair_steps[p, _bin(z[pairs[p, 0]], pair_edges), _bin(z[pairs[p, 1]], pair_edges)]
        logit = min(max(logit, -50.0), 50.0)
        out[r] = 1.0 / (1.0 + math.exp(-logit))


@numba.njit(cache=True, nogil=True)
def contribute_rows(matrix: np.ndarray, log_columns: np.ndarray, amount: int, knots: np.ndarray,
                    means: np.ndarray, inverse_std: np.ndarray, slopes: np.ndarray, steps: np.ndarray,
                    mean_bin: int, edges: np.ndarray, pairs: np.ndarray, pair_edges: np.ndarray,
                    pair_steps: np.ndarray, pair_mean_bin: int, out: np.ndarray) -> None:
    """Each raw feature's contribution to the logit of each row of ``matrix`` into ``out``
    (n, f), against inputs at their means (bin ``mean_bin``, pair cell ``pair_mean_bin``
    on both axes): the inputs as in :func:`score_rows`, the amount's hinges counted toward
    the amount, each pair's term split between its two inputs by their Shapley values.
    :meth:`flagstream.scoring.binned.BinnedLogistic.contributions_reference` is its reference.
    """
    f, k = matrix.shape[1], means.shape[0]
    z, per_input = np.empty(k), np.empty(k)
    for r in range(matrix.shape[0]):
        _standardise(matrix[r], log_columns, amount, knots, means, inverse_std, z)
        for j in range(k):
            per_input[j] = slopes[j] * z[j] + steps[j, _bin(z[j], edges)] - steps[j, mean_bin]
        m = pair_mean_bin
        for p in range(pairs.shape[0]):
            a, b = _bin(z[pairs[p, 0]], pair_edges), _bin(z[pairs[p, 1]], pair_edges)
            both, only_a, only_b = pair_steps[p, a, b], pair_steps[p, a, m], pair_steps[p, m, b]
            neither = pair_steps[p, m, m]
            per_input[pairs[p, 0]] += (only_a - neither + both - only_b) / 2.0
            per_input[pairs[p, 1]] += (only_b - neither + both - only_a) / 2.0
        for j in range(f):
            out[r, j] = per_input[j]
        for j in range(f, k):
            out[r, amount] += per_input[j]


def learn_rows_reference(inputs: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray,
                         count: np.ndarray, means: np.ndarray, m2: np.ndarray,
                         support: np.ndarray, slopes: np.ndarray, steps: np.ndarray,
                         bias: np.ndarray, slope_g2: np.ndarray, step_g2: np.ndarray,
                         bias_g2: np.ndarray, edges: np.ndarray, learning_rate: float, l2: float,
                         min_support: float, support_z: float, pairs: np.ndarray, pair_edges: np.ndarray,
                         pair_steps: np.ndarray, pair_g2: np.ndarray) -> None:
    """:func:`learn_rows` in plain Python, one row, one input and one pair at a time (for tests)."""
    pair_list = [(int(a), int(b)) for a, b in pairs.tolist()]
    for row, label, weight in zip(inputs.tolist(), labels.tolist(), sample_weights.tolist(), strict=True):
        count[0] += 1.0
        zs, bins = [], []
        for j, x in enumerate(row):
            old = float(means[j])
            means[j] = old + (x - old) / count[0]
            m2[j] = m2[j] + (x - old) * (x - means[j])
            var = m2[j] / count[0]
            z = min(max((x - means[j]) / math.sqrt(var), -Z_LIMIT), Z_LIMIT) if var > 0 else 0.0
            support[j] = support[j] + (abs(z) > support_z)
            zs.append(z if support[j] >= min_support else 0.0)
            bins.append(sum(1 for e in edges.tolist() if zs[-1] > e))
        cells = [tuple(sum(1 for e in pair_edges.tolist() if zs[i] > e) for i in pair) for pair in pair_list]
        logit = float(bias[0])
        for j in range(len(row)):
            logit += float(slopes[j]) * zs[j] + float(steps[j, bins[j]])
        for p, (a, b) in enumerate(cells):
            logit += float(pair_steps[p, a, b])
        logit = min(max(logit, -50.0), 50.0)
        g = (1.0 / (1.0 + math.exp(-logit)) - label) * weight
        bias_g2[0] += g * g
        bias[0] -= learning_rate * g / math.sqrt(bias_g2[0])
        for j in range(len(row)):
            gs = g * zs[j] + l2 * slopes[j]
            slope_g2[j] += gs * gs
            slopes[j] -= learning_rate * gs / math.sqrt(slope_g2[j])
            step_g2[j, bins[j]] += g * g
            steps[j, bins[j]] -= learning_rate * g / math.sqrt(step_g2[j, bins[j]])
        for p, (a, b) in enumerate(cells):
            pair_g2[p, a, b] += g * g
            pair_steps[p, a, b] -= learning_rate * g / math.sqrt(pair_g2[p, a, b])


def warm_up() -> None:
    """Compile the scoring and learning kernels now (a second or two each the first time,
    loaded from Numba's cache after), so that no step pays for it."""
    matrix, k, edges = np.zeros((1, 1)), 2, np.zeros(1)
    means, zeros, mask = np.zeros(k), np.zeros(k), np.zeros(1, np.bool_)
    steps, pairs, pair_steps = np.zeros((k, 2)), np.zeros((1, 2), np.int64), np.zeros((1, 2, 2))
    score_rows(matrix, mask, 0, np.zeros(1), means, zeros, zeros, steps, np.zeros(1), edges, pairs,
               edges, pair_steps, np.empty(1))
    contribute_rows(matrix, mask, 0, np.zeros(1), means, zeros, zeros, steps, 0, edges, pairs, edges,
                    pair_steps, 0, np.empty((1, 1)))
    learn_rows(np.zeros((1, k)), np.zeros(1), np.ones(1), np.zeros(1), np.zeros(k), np.zeros(k),
               np.zeros(k), np.zeros(k), np.zeros((k, 2)), np.zeros(1), np.ones(k), np.ones((k, 2)),
               np.ones(1), edges, 0.1, 0.0, 1.0, 0.5, pairs, edges, np.zeros((1, 2, 2)), np.ones((1, 2, 2)))
