"""The small-batch median and quantiles give numpy's numbers exactly."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.quick_stats import SMALL, median, quantiles

QS = (0.0, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0)
floats = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(st.lists(floats, min_size=1, max_size=SMALL + 8))
def test_median_and_quantiles_are_numpys(values):
    array = np.asarray(values, dtype=np.float64)
    assert median(array) == float(np.median(array))
    assert median(values) == float(np.median(array))
    assert quantiles(array, QS) == np.quantile(array, QS).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**45), min_size=1, max_size=SMALL))
def test_integer_times_give_numpys_median(values):
    array = np.asarray(values, dtype=np.int64)
    assert median(array) == float(np.median(array))


def test_a_nan_makes_the_answer_nan_as_numpys_does():
    values = np.array([0.2, math.nan, 0.4])
    assert math.isnan(median(values)) and math.isnan(float(np.median(values)))
    assert all(math.isnan(q) for q in quantiles(values, (0.1, 0.9)))
    assert np.isnan(np.quantile(values, (0.1, 0.9))).all()
