"""The reasons a decision carries: the batch form (one sort of the whole matrix, what the
scoring core calls) gives what the per-row rule gives, ties, zeros and float32 included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.features.layout import FEATURE_NAMES, N_FEATURES
from flagstream.scoring.reasons import describe, explain, explain_rows

#: contributions drawn from a few values, so that rows hold ties and zeros
PUSHES = st.sampled_from([-1.5, -0.25, 0.0, 0.0, 0.1, 0.25, 0.25, 1.0, 2.5, 1e-9])
VALUES = st.sampled_from([0.0, 1.0, 0.5, 4.0, 29.99, 30.0, 3_599.0, 86_400.0 * 31, -2.0, 1234.5678])


@st.composite
def batches(draw):
    n = draw(st.integers(0, 6))
    pushes = np.array(draw(st.lists(st.lists(PUSHES, min_size=N_FEATURES, max_size=N_FEATURES),
                                    min_size=n, max_size=n)), dtype=np.float64).reshape(n, N_FEATURES)
    values = np.array(draw(st.lists(st.lists(VALUES, min_size=N_FEATURES, max_size=N_FEATURES),
                                    min_size=n, max_size=n)), dtype=np.float64).reshape(n, N_FEATURES)
    rows_type, pushes_type = draw(st.sampled_from([np.float32, np.float64])), draw(
        st.sampled_from([np.float32, np.float64]))
    return values.astype(rows_type), pushes.astype(pushes_type), draw(st.integers(1, 5))


@settings(max_examples=300, deadline=None)
@given(batches())
def test_a_batch_is_explained_as_each_row_alone(batch):
    rows, pushes, top = batch
    alone = [explain(row, push, top) for row, push in zip(rows, pushes, strict=True)]
    assert explain_rows(rows, pushes, top) == alone


def test_only_positive_pushes_are_reasons_largest_first():
    rows = np.ones((1, N_FEATURES))
    pushes = np.zeros((1, N_FEATURES))
    pushes[0, FEATURE_NAMES.index("amount")] = 0.5
    pushes[0, FEATURE_NAMES.index("card_count_1h")] = 2.0
    pushes[0, FEATURE_NAMES.index("is_night")] = -3.0
    (reasons,) = explain_rows(rows, pushes)
    assert [r["feature"] for r in reasons] == ["card_count_1h", "amount"]
    assert reasons[0] == {"feature": "card_count_1h", "value": 1.0, "contribution": 2.0,
                          "text": "1 transactions on this card in 1 hour"}


def test_every_feature_has_words_of_its_own():
    for name in FEATURE_NAMES:
        for value in (0.0, 1.0, 45.0, 3_600.0 * 50):
            assert not describe(name, value).startswith(f"{name} ="), name
    assert describe("something_else", 2.5) == "something_else = 2.5"
