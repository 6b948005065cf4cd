"""Both champions hold an input at no say until labels have shown it varying (``MIN_SUPPORT``).

The demo's day-7 flood: the merchant windows are 0 on every label of the first week, then
the first label with a merchant count (a reviewed flag, labelled within hours) arrives while
every other label of day 7 is still days away. Scaled by that one label, a merchant count of
1 was 200 standard deviations out and weighted by what one label taught: 116 flags that day,
109 of them false.
"""

from __future__ import annotations

import numpy as np
import pytest

from flagstream.features.layout import N_FEATURES
from flagstream.scoring.binned import N_INPUTS, BinnedLogistic
from flagstream.scoring.linear import MIN_SUPPORT, LinearChampion

FRESH_INPUT = 7  # a feature that only starts to vary (is_ and fraud_rate columns excepted)
MODELS = {"binned": BinnedLogistic, "linear": lambda: LinearChampion(learning_rate=0.05)}


def young_model(kind: str):
    """A model that learned 2,000 labels with the fresh input at 0, then the one that has it."""
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 1.0, size=(2_000, N_FEATURES))
    x[:, FRESH_INPUT] = 0.0
    model = MODELS[kind]()
    model.learn_many(x, (rng.random(2_000) < 0.05).astype(np.int8))
    first = x[:1].copy()
    first[0, FRESH_INPUT] = 1.0
    model.learn_many(first, np.array([1]))
    return model, x


@pytest.mark.parametrize("kind", MODELS)
def test_an_input_one_label_has_shown_has_no_say(kind):
    model, x = young_model(kind)
    traffic = x[:300].copy()
    traffic[:, FRESH_INPUT] = 1.0  # now most transactions have it
    assert not model.contributions(traffic)[:, FRESH_INPUT].any()
    np.testing.assert_allclose(model.score_batch(traffic), model.score_batch(x[:300]))
    one_by_one = [model.predict_one(row) for row in traffic[:20]]
    np.testing.assert_allclose(one_by_one, model.score_batch(traffic[:20]), rtol=1e-7)


@pytest.mark.parametrize("kind", MODELS)
def test_once_labels_show_it_varying_it_is_learned(kind):
    model, x = young_model(kind)
    varied = np.repeat(x[:200], 3, axis=0)
    varied[::2, FRESH_INPUT] = 1.0  # half the labels have it, and they are the frauds
    model.learn_many(varied, (varied[:, FRESH_INPUT] > 0).astype(np.int8))
    traffic = x[:300].copy()
    traffic[:, FRESH_INPUT] = 1.0
    assert model.contributions(traffic)[:, FRESH_INPUT].min() > 0
    assert model.score_batch(traffic).mean() > 2 * model.score_batch(x[:300]).mean()


@pytest.mark.parametrize("kind", MODELS)
def test_a_state_stored_before_support_scores_as_it_did(kind):
    model, x = young_model(kind)
    state = model.to_state()
    assert state["support"]  # counted, and stored
    old = {k: v for k, v in state.items() if k != "support"}
    again = type(model).from_state(old)
    loaded = type(model).from_state(state)
    np.testing.assert_array_equal(loaded.score_batch(x[:100]), model.score_batch(x[:100]))
    # an older state knew no support: every input it had counted, as it did then
    assert float(np.min(list(again.support.values()) if isinstance(again.support, dict)
                        else again.support)) >= MIN_SUPPORT


HOSTILE_SUPPORT = {
    "binned": ([1.0], [-1.0] * N_INPUTS, [float("nan")] * N_INPUTS, "many"),
    "linear": ({"amount": -1.0}, {"amount": float("nan")}, {"no_such_input": 1.0}, [1.0]),
}


@pytest.mark.parametrize("kind", MODELS)
def test_a_hostile_support_is_refused(kind):
    model = MODELS[kind]()
    for bad in HOSTILE_SUPPORT[kind]:
        with pytest.raises(ValueError, match="model state"):
            type(model).from_state({**model.to_state(), "support": bad})
