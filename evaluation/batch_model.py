"""A batch gradient-boosted model on the pipeline's own feature vectors (``flagstream compare-batch``).

The yardstick the online model is measured against (issue #13): scikit-learn's
``HistGradientBoostingClassifier`` trained offline on the feature vectors the pipeline
computed when it scored each transaction (the same 25 features the online model saw),
with every label known. It never runs in the worker; scikit-learn is an optional extra
(``pip install 'flagstream[batch]'``).

Training (:func:`train_batch_model`) is in two fits, both on the training window only:

1. fit on the training window minus its last week, stopping early on the log-loss of
   that last week (patience ``n_iter_no_change`` iterations);
2. refit on the whole training window with the number of iterations step 1 chose.

No class weights: average precision and AUC depend on the ranking only, and unweighted
log-loss keeps the scores probabilities. One OpenMP thread (``BatchModelParams.threads``)
for fitting and scoring: on a 2-core machine shared with other jobs, scikit-learn's
spinning OpenMP threads made a 100-iteration fit of 11,000 rows take 3.4 s with 2 threads
(8.6 s with the default) against 0.45 s with one.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(4_000, 3))
>>> y = (x[:, 0] * x[:, 1] + 0.3 * rng.normal(size=4_000) > 1.0).astype(np.int8)
>>> ts = np.arange(4_000) * 3_600_000  # one event an hour
>>> fit = train_batch_model(x, y, ts, (0, 3_000 * 3_600_000), 7 * 86_400_000)
>>> fit.n_fit, fit.n_valid, fit.n_iter > 0
(2832, 168, True)
>>> from flagstream.evaluation.detection_metrics import roc_auc
>>> roc_auc(y[3_000:], fit.predict(x[3_000:])) > 0.95  # an interaction a linear model misses
True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BatchModelParams:
    """Fixed hyper-parameters of the batch model (scikit-learn's names).

    ``max_iter`` is a ceiling: early stopping on the last training week chooses the number
    of boosting iterations. ``class_weight`` None: no class weights.
    """

    learning_rate: float = 0.05
    max_iter: int = 1_000
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 100
    l2_regularization: float = 1.0
    max_bins: int = 255
    n_iter_no_change: int = 30
    class_weight: str | None = None
    random_state: int = 0
    #: OpenMP threads for fitting and scoring (see the module docstring)
    threads: int = 1

    def estimator(self, max_iter: int | None = None, early_stopping: bool = True) -> Any:
        """A new, unfitted ``HistGradientBoostingClassifier`` with these parameters."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter if max_iter is None else max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization,
            max_bins=self.max_bins,
            early_stopping=early_stopping,
            n_iter_no_change=self.n_iter_no_change,
            class_weight=self.class_weight,
            random_state=self.random_state,
        )


@dataclass
class BatchFit:
    """A fitted batch model and how it was fitted."""

    model: Any
    params: BatchModelParams
    n_iter: int
    n_fit: int
    n_valid: int
    n_train: int
    n_train_fraud: int
    train_seconds: float
    refit_seconds: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Fraud probabilities of a (n, n_features) matrix."""
        if len(features) == 0:
            return np.empty(0)
        with _threads(self.params.threads):
            return np.asarray(self.model.predict_proba(features)[:, 1], dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no model)."""
        return {
            "params": asdict(self.params),
            "n_iter": self.n_iter,
            "n_fit": self.n_fit,
            "n_valid": self.n_valid,
            "n_train": self.n_train,
            "n_train_fraud": self.n_train_fraud,
            "train_seconds": round(self.train_seconds, 3),
            "refit_seconds": round(self.refit_seconds, 3),
        }


def train_batch_model(
    features: np.ndarray,
    labels: np.ndarray,
    ts_ms: np.ndarray,
    train_ms: tuple[int, int],
    valid_span_ms: int,
    params: BatchModelParams | None = None,
) -> BatchFit:
    """Train on the rows whose event time is in ``train_ms`` = [start, end), nothing else.

    The last ``valid_span_ms`` of that window is the early-stopping set of the first fit;
    the second fit uses the whole window (see the module docstring). Raises ValueError when
    either part is empty or has one class only.
    """
    params = params or BatchModelParams()
    x = np.asarray(features)
    y = np.asarray(labels).astype(np.int8).ravel()
    ts = np.asarray(ts_ms, dtype=np.int64).ravel()
    if not len(x) == len(y) == len(ts):
        raise ValueError("features, labels and times differ in length")
    start, end = train_ms
    split = end - valid_span_ms
    if not start < split < end:
        raise ValueError("the training window must be longer than its early-stopping part")
    train = (ts >= start) & (ts < end)
    fit_rows, valid_rows = train & (ts < split), train & (ts >= split)
    for name, rows in (("fit", fit_rows), ("early-stopping", valid_rows)):
        classes = np.unique(y[rows])
        if classes.size < 2:
            raise ValueError(f"the {name} part of the training window has {classes.size} class(es), needs 2")
    with _threads(params.threads):
        started = time.perf_counter()
        first = params.estimator()
        first.fit(x[fit_rows], y[fit_rows], X_val=x[valid_rows], y_val=y[valid_rows])
        n_iter = int(first.n_iter_)
        refit_started = time.perf_counter()
        model = params.estimator(max_iter=n_iter, early_stopping=False)
        model.fit(x[train], y[train])
        finished = time.perf_counter()
    return BatchFit(
        model, params, n_iter, int(fit_rows.sum()), int(valid_rows.sum()), int(train.sum()),
        int(y[train].sum()), finished - started, finished - refit_started,
    )  # fmt: skip


def _threads(n: int) -> Any:
    """A context limiting OpenMP (scikit-learn's boosting) to ``n`` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="openmp")


def scoring_cost_us(score: Any, features: np.ndarray, batch_size: int = 2_000, repeat: int = 3) -> dict:
    """Microseconds per event of ``score(matrix)``: over ``features`` in one call, and in
    batches of ``batch_size`` (the backtest's batch); the best of ``repeat`` runs each.

    >>> cost = scoring_cost_us(lambda m: m.sum(axis=1), np.ones((10, 2)), batch_size=4)
    >>> sorted(cost), cost["n_events"]
    (['batch_size', 'n_events', 'us_per_event_batched', 'us_per_event_one_call'], 10)
    """
    n = len(features)
    if n == 0:
        raise ValueError("no events to time")

    def best(run: Any) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times) / n * 1e6

    def batched() -> None:
        for lo in range(0, n, batch_size):
            score(features[lo : lo + batch_size])

    return {
        "n_events": n,
        "batch_size": batch_size,
        "us_per_event_one_call": round(best(lambda: score(features)), 3),
        "us_per_event_batched": round(best(batched), 3),
    }
