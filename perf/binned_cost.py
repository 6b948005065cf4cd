"""What the binned model costs: microseconds per scored event and per learned label.

    python -m flagstream.perf.binned_cost [n_rows]

Synthetic raw feature rows (gamma-distributed, about 3 % fraud), the same for every run
(seed 0). It learns them in the backtest's way (batches of labels, ``learn_many``) and one
label at a time (``learn_one``), then scores them in batches of 2,000 (``score_batch``, as
the core does) and one by one (``predict_one``, the plain-Python reference). Best of three
runs each; it prints one JSON object. Uses the public API only, so the same file measures
an earlier version of the model too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import orjson

from flagstream.features.layout import N_FEATURES
from flagstream.scoring.binned import BinnedLogistic


def best_us(run: Callable[[], object], n: int, repeat: int = 3) -> float:
    """Microseconds per item of ``run()`` over ``n`` items, the best of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(min(times) / n * 1e6, 3)


def measure(n: int = 100_000) -> dict[str, float]:
    """The costs over ``n`` synthetic rows (see the module docstring)."""
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 3.0, size=(n, N_FEATURES))
    y = (rng.random(n) < 0.03).astype(np.int8)
    BinnedLogistic().learn_many(x[:10], y[:10])  # compile (or load) the kernel first

    def learn_batches() -> None:
        model = BinnedLogistic()
        for lo in range(0, n, 500):
            model.learn_many(x[lo:lo + 500], y[lo:lo + 500])

    few = min(n, 5_000)

    def learn_ones() -> None:
        model = BinnedLogistic()
        for row, label in zip(x[:few], y[:few], strict=True):
            model.learn_one(row, int(label))

    trained = BinnedLogistic()
    trained.learn_many(x, y)

    def score_batches() -> None:
        for lo in range(0, n, 2_000):
            trained.score_batch(x[lo:lo + 2_000])

    def score_ones() -> None:
        for row in x[:few]:
            trained.predict_one(row)

    return {
        "n_rows": n,
        "us_per_label_learn_many_500": best_us(learn_batches, n),
        "us_per_label_learn_one": best_us(learn_ones, few),
        "us_per_event_score_batch_2000": best_us(score_batches, n),
        "us_per_event_predict_one": best_us(score_ones, few),
    }


if __name__ == "__main__":
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    sys.stdout.write(orjson.dumps(measure(rows)).decode() + "\n")
