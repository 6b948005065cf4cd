"""A non-linear online model: logistic regression over binned inputs, learned with AdaGrad.

The linear champion gives every input one slope. Fraud risk is rarely a slope: a card
with no purchase in a week and one with twenty are both unusual, a merchant's fraud
share matters above a level and not below it. This model keeps the linear term and adds
one learned weight per *bin* of each input, so each input's effect on the logit is a
free step function plus a slope (a generalised additive model), learned online from the
same delayed labels, one label at a time. A sum of per-input steps cannot say "a large
amount for *this card*, on a card that has just made large purchases": for a few pairs of
inputs (:data:`PAIRS`) it also learns a coarse 2-D step function, one weight per cell of
the two inputs' :data:`PAIR_EDGES` bins (a GA²M: the additive model plus pairwise terms).

Inputs are the linear model's (:func:`flagstream.scoring.linear.transform`), standardised
with running statistics (Welford: mean and sum of squared deviations, one count for all
inputs since every label carries every input). An input counts only once labels have shown
it varying (:data:`flagstream.scoring.linear.MIN_SUPPORT`); until then its ``z`` is 0. A
standardised value ``z`` falls into one of ``len(BIN_EDGES) + 1`` bins: bin ``i`` holds
``BIN_EDGES[i-1] < z <= BIN_EDGES[i]``. Each step is AdaGrad (a per-weight step size that
shrinks with the squared gradients that weight has seen): a rare bin, touched by few labels,
still learns at full speed, where one global rate (plain SGD) would have to choose between
the common and the rare ones.

Learning (:func:`flagstream.scoring.binned_kernel.learn_rows`) is a Numba kernel over a
batch of labelled rows, in order, exactly as one label at a time would be; its pure-Python
reference is in the same module, and ``tests/test_binned.py`` checks they agree. Scoring a
batch is one Numba call too (:func:`~flagstream.scoring.binned_kernel.score_rows`, row by row;
:meth:`BinnedLogistic.predict_one` is its reference): a worker's steps are often one record.

Measured (issue #13; the backtest ``--model binned`` against the default linear champion):
see the README's detection table. The pairs (``flagstream compare-batch``, test week
2018-08-08..14): average precision 0.657 -> 0.672 on the extended stream (the batch
gradient-boosted model: 0.682), 0.704 -> 0.716 on the reference one (0.658 -> 0.664 and
0.687 -> 0.701 on seeds 1 and 2). Costs (``python -m flagstream.perf.binned_cost``):
scoring 1.28 -> 1.44 µs an event in batches of 2,000 (1.24 since scoring is one Numba call),
learning 2.08 -> 2.18 µs a label in batches of 500 and 18.9 -> 20.0 µs one at a time.

Memory: ``n_inputs * (2 * n_bins + 5) + 2 * n_pairs * pair_bins ** 2 + 4`` floats (34 inputs,
14 bins, 3 pairs of 7 x 7 cells: 1,420 floats, 11 KB), whatever the traffic; the state is
plain JSON (never pickle).

>>> import numpy as np
>>> from flagstream.features.layout import N_FEATURES
>>> model = BinnedLogistic(seed=1)
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(2.0, 1.0, size=(2_000, N_FEATURES))
>>> y = (np.abs(x[:, 3] - 2.0) > 1.5).astype(np.int8)   # both tails: no single slope fits
>>> model.learn_many(x, y)
>>> p = model.score_batch(x)
>>> bool(p[y == 1].mean() > 2 * p[y == 0].mean())
True
>>> again = BinnedLogistic.from_state(model.to_state())
>>> bool(np.array_equal(again.score_batch(x), p))
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flagstream.features.layout import N_FEATURES
from flagstream.scoring.binned_kernel import Z_LIMIT, contribute_rows, learn_rows, score_rows
from flagstream.scoring.linear import (
    AMOUNT_KNOTS,
    INPUT_NAMES,
    LOG_COLUMNS,
    MAX_STATISTIC,
    MIN_SUPPORT,
    SUPPORT_Z,
    transform,
)

#: Edges of the bins on the standardised input (a bin per ``(edge[i-1], edge[i]]``).
#: Finer near the mean, where most traffic is, and open at both ends.
BIN_EDGES = np.array([-2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
N_INPUTS = len(INPUT_NAMES)
N_BINS = len(BIN_EDGES) + 1
#: AdaGrad's starting sum of squared gradients (keeps the first step finite).
ADAGRAD_EPS = 1e-8
_AMOUNT = INPUT_NAMES.index("amount")
#: The bin a standardised value of 0 (the input's mean) falls into: contributions are
#: measured from there, so an average input explains nothing.
_MEAN_BIN = int(np.searchsorted(BIN_EDGES, 0.0, side="left"))
#: Input pairs with a learned 2-D term. Chosen by FAST (Lou et al. 2013, the GA²M paper's
#: pair ranking) on the extended stream's training weeks (2018-06-13..07-24, stored feature
#: vectors): for every pair of the 29 features, how much a table of one Newton step per
#: cell fitted to the live binned model's residual beats the better of the two 1-D tables;
#: greedily, refitting after each pick, and kept while the fitted tables lowered the log loss
#: of the held-out week 2018-07-25..31 (0.0494 -> 0.0482, 0.0474, 0.0466; a fourth pair
#: 0.0464, within noise). The first is issue #13's scenario 3 (a compromised card spends
#: far above its own mean after recent large purchases); the merchant pairs say that a fraud
#: share means more at a merchant with many transactions. Inputs are referred to by name.
PAIRS = (
    ("amount_to_card_mean", "card_large_amounts_14d"),
    ("merchant_count_7d", "merchant_fraud_rate_7d"),
    ("merchant_count_30d", "merchant_fraud_rate_30d"),
)
#: Coarse bins of each pair axis on the standardised input (7 per axis, 49 cells a pair):
#: open upward, where the heavy-tailed inputs (fraud shares, counts of large purchases)
#: carry their risk; of the edges tried on the held-out week (``-1,0,1,2``,
#: ``-1,-0.5,0.5,1,2`` and these) these fitted best.
PAIR_EDGES = np.array([-1.5, -0.5, 0.5, 1.5, 3.0, 5.0])
N_PAIRS = len(PAIRS)
N_PAIR_BINS = len(PAIR_EDGES) + 1
_PAIR_AT = np.array([[INPUT_NAMES.index(a), INPUT_NAMES.index(b)] for a, b in PAIRS], dtype=np.int64)
_PAIR_MEAN_BIN = int(np.searchsorted(PAIR_EDGES, 0.0, side="left"))
#: What :func:`~flagstream.scoring.binned_kernel.score_rows` needs of ``transform``: which
#: features are log-squashed, and the amount's knots.
_LOG_MASK = np.isin(np.arange(N_FEATURES), LOG_COLUMNS)
_KNOTS = np.asarray(AMOUNT_KNOTS, dtype=np.float64)


def _feature_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as the kernels read it: C-ordered float64 rows of exactly ``N_FEATURES``
    (one vector is one row). The kernels do not check bounds, so any other width is refused
    here rather than read past.

    >>> _feature_rows(np.zeros(N_FEATURES)).shape == (1, N_FEATURES)
    True
    >>> _feature_rows(np.zeros((2, N_FEATURES * 2)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: feature rows must have ... columns, not ...
    """
    rows = np.ascontiguousarray(np.atleast_2d(matrix), dtype=np.float64)
    if rows.size == 0:
        return np.empty((0, N_FEATURES))
    if rows.ndim != 2 or rows.shape[1] != N_FEATURES:
        raise ValueError(f"feature rows must have {N_FEATURES} columns, not {rows.shape[-1]}")
    return rows


class BinnedLogistic:
    """Logistic regression over standardised inputs plus one weight per input bin (AdaGrad).

    Parameters
    ----------
    learning_rate
        AdaGrad's base step size.
    l2
        L2 penalty on the slopes (the bin weights are bounded by AdaGrad's shrinking steps).
    fraud_weight
        Sample weight of a fraud label.
    prior
        Fraud probability before any label (the starting bias).
    seed
        Unused (the model is deterministic); kept so every model takes one.
    """

    kind = "binned"

    def __init__(self, learning_rate: float = 0.2, l2: float = 0.0, fraud_weight: float = 1.0,
                 prior: float = 0.01, seed: int = 0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.fraud_weight = fraud_weight
        self.prior = prior
        self.seed = seed
        self.n_learned = 0
        self.count = np.zeros(1)
        self.means = np.zeros(N_INPUTS)
        self.m2 = np.zeros(N_INPUTS)
        self.support = np.zeros(N_INPUTS)
        self.slopes = np.zeros(N_INPUTS)
        self.steps = np.zeros((N_INPUTS, N_BINS))
        self.bias = np.array([math.log(prior / (1 - prior))])
        self.slope_g2 = np.full(N_INPUTS, ADAGRAD_EPS)
        self.step_g2 = np.full((N_INPUTS, N_BINS), ADAGRAD_EPS)
        self.bias_g2 = np.array([ADAGRAD_EPS])
        self.pair_steps = np.zeros((N_PAIRS, N_PAIR_BINS, N_PAIR_BINS))
        self.pair_g2 = np.full((N_PAIRS, N_PAIR_BINS, N_PAIR_BINS), ADAGRAD_EPS)
        #: each input's 1/std (0 where not yet known), and the learned state it is for
        self._inv_std: np.ndarray | None = None
        self._inv_std_of: tuple = ()

    # --- learning -------------------------------------------------------------
    def learn_many(self, matrix: np.ndarray, labels: np.ndarray) -> None:
        """Learn labelled raw feature rows in order (the same as one ``learn_one`` each)."""
        inputs = transform(matrix)
        y = np.asarray(labels, dtype=np.float64).ravel()
        if len(y) != len(inputs):
            raise ValueError("one label per row")
        weights = np.where(y > 0, self.fraud_weight, 1.0)
        learn_rows(inputs, y, weights, self.count, self.means, self.m2, self.support, self.slopes,
                   self.steps, self.bias, self.slope_g2, self.step_g2, self.bias_g2, BIN_EDGES,
                   self.learning_rate, self.l2, MIN_SUPPORT, SUPPORT_Z, _PAIR_AT, PAIR_EDGES, self.pair_steps,
                   self.pair_g2)
        self.n_learned += len(y)

    def learn_one(self, features: np.ndarray, label: int) -> None:
        """Learn one labelled raw feature vector."""
        self.learn_many(np.asarray(features, dtype=np.float64).reshape(1, -1), np.array([label]))

    # --- scoring (per batch) --------------------------------------------------
    def predict_one(self, features: np.ndarray) -> float:
        """One raw feature vector's probability, input by input in plain Python: the
        reference :meth:`score_batch` is tested against (and a per-event scorer).

        >>> round(BinnedLogistic(prior=0.02).predict_one(np.zeros(N_FEATURES)), 6)
        0.02
        """
        inputs = transform(np.asarray(features, dtype=np.float64).reshape(1, -1))[0].tolist()
        count, edges = float(self.count[0]), BIN_EDGES.tolist()
        logit, zs = float(self.bias[0]), []
        for j, x in enumerate(inputs):
            var = float(self.m2[j]) / count if count > 0 else 0.0
            known = var > 0 and float(self.support[j]) >= MIN_SUPPORT
            z = min(max((x - float(self.means[j])) / math.sqrt(var), -Z_LIMIT), Z_LIMIT) if known else 0.0
            logit += float(self.slopes[j]) * z + float(self.steps[j, sum(1 for e in edges if z > e)])
            zs.append(z)
        pair_edges = PAIR_EDGES.tolist()
        cells = [[sum(1 for e in pair_edges if zs[j] > e) for j in at] for at in _PAIR_AT.tolist()]
        for p, (a, b) in enumerate(cells):
            logit += float(self.pair_steps[p, a, b])
        return 1.0 / (1.0 + math.exp(-min(max(logit, -50.0), 50.0)))

    def _inverse_std(self) -> np.ndarray:
        """Each input's 1/std, 0 where not yet known; computed once per learned state (a
        scorer's steps are often one record: this was a fifth of scoring one)."""
        state = (self.n_learned, float(self.count[0]), id(self.m2), id(self.support))
        if self._inv_std is None or self._inv_std_of != state:
            var = self.m2 / self.count[0] if self.count[0] > 0 else np.zeros(N_INPUTS)
            known = (var > 0) & (self.support >= MIN_SUPPORT)
            self._inv_std = np.where(known, 1.0 / np.sqrt(np.where(known, var, 1.0)), 0.0)
            self._inv_std_of = state
        return self._inv_std

    def _terms(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each input's term of the logit, (n, N_INPUTS), and each pair's, (n, N_PAIRS)."""
        z = np.clip((transform(matrix) - self.means) * self._inverse_std(), -Z_LIMIT, Z_LIMIT)
        inputs = self.slopes * z + self.steps[np.arange(N_INPUTS), np.searchsorted(BIN_EDGES, z, side="left")]
        return inputs, np.searchsorted(PAIR_EDGES, z[:, _PAIR_AT], side="left")

    def _pair_terms(self, cells: np.ndarray) -> np.ndarray:
        """Each pair's term of the logit, (n, N_PAIRS), from its cells (n, N_PAIRS, 2)."""
        return self.pair_steps[np.arange(N_PAIRS), cells[:, :, 0], cells[:, :, 1]]

    def score_batch(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probabilities for a (n, N_FEATURES) raw feature matrix."""
        rows = _feature_rows(matrix)
        out = np.empty(len(rows))
        score_rows(rows, _LOG_MASK, _AMOUNT, _KNOTS, self.means, self._inverse_std(), self.slopes,
                   self.steps, self.bias, BIN_EDGES, _PAIR_AT, PAIR_EDGES, self.pair_steps, out)
        return out

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per-feature contribution to the logit against inputs at their means, (n, N_FEATURES).

        The amount hinges count toward the amount. A pair's term, against its cell at both
        means, is split between its two inputs by their Shapley values: each gets half of
        what it moves alone (the other at its mean) and half of what it adds to the other,
        so an input at its mean gets nothing of it. They add up to the logit less
        :meth:`baseline`, the logit of an input at every mean. One Numba call
        (:func:`~flagstream.scoring.binned_kernel.contribute_rows`);
        :meth:`contributions_reference` is the same in numpy.
        """
        rows = _feature_rows(matrix)
        out = np.empty((len(rows), N_FEATURES))
        contribute_rows(rows, _LOG_MASK, _AMOUNT, _KNOTS, self.means, self._inverse_std(), self.slopes,
                        self.steps, _MEAN_BIN, BIN_EDGES, _PAIR_AT, PAIR_EDGES, self.pair_steps,
                        _PAIR_MEAN_BIN, out)
        return out

    def contributions_reference(self, matrix: np.ndarray) -> np.ndarray:
        """:meth:`contributions` in numpy, a gather per input and per pair (for tests)."""
        inputs, cells = self._terms(matrix)
        per_input = inputs - self.steps[:, _MEAN_BIN]
        both = self._pair_terms(cells)
        at_mean = np.full_like(cells[:, :, 0], _PAIR_MEAN_BIN)
        only_a = self._pair_terms(np.stack([cells[:, :, 0], at_mean], axis=2))
        only_b = self._pair_terms(np.stack([at_mean, cells[:, :, 1]], axis=2))
        neither = self.pair_steps[:, _PAIR_MEAN_BIN, _PAIR_MEAN_BIN]
        share_a = (only_a - neither + both - only_b) / 2.0
        share_b = (only_b - neither + both - only_a) / 2.0
        # (columns of the transposed view; unbuffered: an input in two pairs gets both shares)
        np.add.at(per_input.T, _PAIR_AT[:, 0], share_a.T)
        np.add.at(per_input.T, _PAIR_AT[:, 1], share_b.T)
        per_feature = per_input[:, :N_FEATURES].copy()
        per_feature[:, _AMOUNT] += per_input[:, N_FEATURES:].sum(axis=1)
        return per_feature

    def baseline(self) -> float:
        """The logit of an input at every mean (what :meth:`contributions` are measured from)."""
        return float(self.bias[0] + self.steps[:, _MEAN_BIN].sum()
                     + self.pair_steps[:, _PAIR_MEAN_BIN, _PAIR_MEAN_BIN].sum())

    # --- state (JSON, never pickle) --------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume learning exactly, as plain JSON values."""
        return {
            "kind": self.kind,
            "params": {"learning_rate": self.learning_rate, "l2": self.l2,
                       "fraud_weight": self.fraud_weight, "prior": self.prior, "seed": self.seed},
            "n_learned": self.n_learned,
            "inputs": list(INPUT_NAMES),
            "bin_edges": BIN_EDGES.tolist(),
            "pairs": [list(pair) for pair in PAIRS],
            "pair_edges": PAIR_EDGES.tolist(),
            **{name: getattr(self, name).tolist() for name in _ARRAYS},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BinnedLogistic:
        """Rebuild a model from :meth:`to_state` output, every field checked first.

        >>> bad = {**BinnedLogistic().to_state(), "steps": [[0.0]]}
        >>> BinnedLogistic.from_state(bad)
        Traceback (most recent call last):
        ...
        ValueError: model state: steps must have shape (34, 14)
        """
        if not isinstance(state, dict) or state.get("kind") != cls.kind:
            kind = state.get("kind") if isinstance(state, dict) else None
            raise ValueError(f"not a {cls.kind} model state: {kind!r}")
        if not _PAIR_KEYS & set(state):
            # stored before pairs: they start unlearned (all 0), so it scores as it did
            state = {**state, **_unlearned_pairs()}
        if set(state) == _STATE_KEYS - {"support"}:
            # stored before inputs needed support: every input it has counts, as it did then
            stored = state["inputs"] if isinstance(state["inputs"], list) else INPUT_NAMES
            state = {**state, "support": [MIN_SUPPORT] * len(stored)}
        if set(state) != _STATE_KEYS:
            raise ValueError(f"model state: expected fields {sorted(_STATE_KEYS)}")
        if state["bin_edges"] != BIN_EDGES.tolist():
            raise ValueError("model state: made for other inputs or bins")
        if state["pairs"] != [list(pair) for pair in PAIRS] or state["pair_edges"] != PAIR_EDGES.tolist():
            raise ValueError("model state: made for other input pairs or pair bins")
        if state["inputs"] != list(INPUT_NAMES):
            state = _with_added_inputs(state)
        params = state["params"]
        if not isinstance(params, dict) or set(params) != _PARAMS:
            raise ValueError("model state: params must hold learning_rate, l2, fraud_weight, prior, seed")
        for name in ("learning_rate", "l2", "fraud_weight"):
            _finite(params[name], f"params.{name}", 0.0)
        if not 0.0 < _finite(params["prior"], "params.prior") < 1.0:
            raise ValueError("model state: params.prior must be in (0, 1)")
        if not isinstance(params["seed"], int) or isinstance(params["seed"], bool):
            raise ValueError("model state: params.seed must be an integer")
        model = cls(**params)
        model.n_learned = int(_finite(state["n_learned"], "n_learned", 0.0))
        for name, shape in _ARRAYS.items():
            try:
                value = np.array(state[name], dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"model state: {name} must be numbers") from None
            if value.shape != shape:
                raise ValueError(f"model state: {name} must have shape {shape}")
            if not np.all(np.isfinite(value)) or np.any(np.abs(value) > MAX_STATISTIC):
                raise ValueError(f"model state: {name} must be finite and within range")
            setattr(model, name, value)
        if model.count[0] < 0 or np.any(model.m2 < 0) or np.any(model.support < 0):
            raise ValueError("model state: count, support and squared deviations must be >= 0")
        if (np.any(model.slope_g2 <= 0) or np.any(model.step_g2 <= 0) or model.bias_g2[0] <= 0
                or np.any(model.pair_g2 <= 0)):
            raise ValueError("model state: AdaGrad sums must be > 0")
        return model


#: Inputs added since a model state could first be stored. A state without some of them (from
#: an earlier version) loads with each missing one unlearned: weights at 0, and statistics
#: as if every label so far had it at 0, which is what an earlier decision's feature vector
#: reads as (``check_decision``'s ``earlier``).
ADDED_INPUTS = frozenset({"distance_from_usual_area", "card_large_amounts_14d"})


def _with_added_inputs(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the inputs it lacks (only those of ``ADDED_INPUTS``) added unlearned.

    >>> old = {**BinnedLogistic().to_state(), "slopes": [1.0] * N_INPUTS}
    >>> at = INPUT_NAMES.index("distance_from_usual_area")
    >>> for name in ("inputs", "means", "m2", "support", "slopes", "steps", "slope_g2", "step_g2"):
    ...     del old[name][at]
    >>> model = BinnedLogistic.from_state(old)
    >>> float(model.slopes[at]), float(model.slopes[at - 1]), float(model.step_g2[at, 0]) == ADAGRAD_EPS
    (0.0, 1.0, True)
    """
    inputs = state["inputs"]
    if not isinstance(inputs, list) or not all(isinstance(n, str) for n in inputs):
        raise ValueError("model state: inputs must be a list of names")
    missing = set(INPUT_NAMES) - set(inputs)
    keep = [n for n in INPUT_NAMES if n in set(inputs)]
    if inputs != keep or not missing <= ADDED_INPUTS:
        raise ValueError("model state: made for other inputs or bins")
    at = [INPUT_NAMES.index(n) for n in inputs]
    out = {**state, "inputs": list(INPUT_NAMES)}
    for name, shape in _ARRAYS.items():
        if shape[0] != N_INPUTS:
            continue
        try:
            stored = np.array(state[name], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"model state: {name} must be numbers") from None
        if stored.shape != (len(inputs), *shape[1:]):
            raise ValueError(f"model state: {name} must have shape {(len(inputs), *shape[1:])}")
        full = np.full(shape, ADAGRAD_EPS if name.endswith("_g2") else 0.0)
        full[at] = stored
        out[name] = full.tolist()
    return out


#: The model's arrays in its state, with their shapes.
_ARRAYS: dict[str, tuple[int, ...]] = {
    "count": (1,), "means": (N_INPUTS,), "m2": (N_INPUTS,), "support": (N_INPUTS,),
    "slopes": (N_INPUTS,),
    "steps": (N_INPUTS, N_BINS), "bias": (1,), "slope_g2": (N_INPUTS,),
    "step_g2": (N_INPUTS, N_BINS), "bias_g2": (1,),
    "pair_steps": (N_PAIRS, N_PAIR_BINS, N_PAIR_BINS), "pair_g2": (N_PAIRS, N_PAIR_BINS, N_PAIR_BINS),
}
_PARAMS = frozenset({"learning_rate", "l2", "fraud_weight", "prior", "seed"})
_STATE_KEYS = frozenset({"kind", "params", "n_learned", "inputs", "bin_edges", "pairs", "pair_edges",
                         *_ARRAYS})
#: The fields pairs added to the state: a state has all of them or (stored before) none.
_PAIR_KEYS = frozenset({"pairs", "pair_edges", "pair_steps", "pair_g2"})


def _unlearned_pairs() -> dict[str, Any]:
    shape = (N_PAIRS, N_PAIR_BINS, N_PAIR_BINS)
    return {"pairs": [list(pair) for pair in PAIRS], "pair_edges": PAIR_EDGES.tolist(),
            "pair_steps": np.zeros(shape).tolist(), "pair_g2": np.full(shape, ADAGRAD_EPS).tolist()}


def _finite(value: Any, what: str, low: float | None = None) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or abs(value) > MAX_STATISTIC or not math.isfinite(value)):
        raise ValueError(f"model state: {what} must be a finite number")
    if low is not None and value < low:
        raise ValueError(f"model state: {what} must be >= {low:g}")
    return float(value)
