"""The binned model: its Numba learner against the pure-Python reference, what it can learn
that a slope cannot, its explanations, and its state as untrusted JSON."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.codec import dumps, loads
from flagstream.errors import ConfigurationError
from flagstream.evaluation.detection_metrics import roc_auc
from flagstream.features.layout import N_FEATURES
from flagstream.scoring.binned import (
    _PAIR_AT,
    BIN_EDGES,
    N_BINS,
    N_INPUTS,
    N_PAIR_BINS,
    N_PAIRS,
    PAIR_EDGES,
    PAIRS,
    BinnedLogistic,
)
from flagstream.scoring.binned_kernel import learn_rows, learn_rows_reference
from flagstream.scoring.handle import ModelHandle, model_from_state
from flagstream.scoring.linear import LinearChampion
from flagstream.streams.config import Settings

values = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


def fresh_arrays(prior: float = 0.01) -> list[np.ndarray]:
    """count, means, m2, support, slopes, steps, bias, slope_g2, step_g2, bias_g2 of a new model."""
    m = BinnedLogistic(prior=prior)
    return [a.copy() for a in (m.count, m.means, m.m2, m.support, m.slopes, m.steps, m.bias,
                               m.slope_g2, m.step_g2, m.bias_g2)]


def fresh_pairs() -> list[np.ndarray]:
    m = BinnedLogistic()
    return [m.pair_steps.copy(), m.pair_g2.copy()]


#: Pairs for the comparison: the model's, plus one sharing an input and one of an input with itself.
TEST_PAIRS = np.vstack([_PAIR_AT, [[3, _PAIR_AT[0, 0]], [5, 5]]])


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.tuples(st.lists(values, min_size=N_INPUTS, max_size=N_INPUTS), st.booleans(),
                       st.sampled_from([1.0, 5.0])), min_size=1, max_size=25),
    st.sampled_from([0.01, 0.2, 1.0]),
    st.sampled_from([0.0, 0.001]),
    st.booleans(),
    st.sampled_from([0.0, 3.0, 50.0]),
    st.sampled_from([0.5, 1.0]),
)
def test_numba_learner_matches_the_reference(rows, learning_rate, l2, constant_column, min_support,
                                             support_z):
    inputs = np.array([r[0] for r in rows], dtype=np.float64)
    if constant_column:
        inputs[:, 3] = 7.0  # a column with no variance: z is 0, never NaN
    labels = np.array([float(r[1]) for r in rows])
    weights = np.array([r[2] for r in rows])
    shape = (len(TEST_PAIRS), N_PAIR_BINS, N_PAIR_BINS)
    fast_pairs, slow_pairs = ([np.zeros(shape), np.full(shape, 1e-8)] for _ in range(2))
    fast, slow = fresh_arrays(), fresh_arrays()
    learn_rows(inputs, labels, weights, *fast, BIN_EDGES, learning_rate, l2, min_support,
               support_z, TEST_PAIRS, PAIR_EDGES, *fast_pairs)
    learn_rows_reference(inputs, labels, weights, *slow, BIN_EDGES, learning_rate, l2, min_support,
                         support_z, TEST_PAIRS, PAIR_EDGES, *slow_pairs)
    assert np.count_nonzero(fast_pairs[0]) > 0  # the pairs took part
    for a, b in zip(fast + fast_pairs, slow + slow_pairs, strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def trained(n: int = 3_000, seed: int = 0) -> tuple[BinnedLogistic, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 3.0, size=(n, N_FEATURES))
    y = ((x[:, 2] < 1.5) | (x[:, 2] > 14.0)).astype(np.int8)  # both tails of one input
    model = BinnedLogistic()
    model.learn_many(x, y)
    return model, x, y


def test_scoring_a_batch_matches_the_row_by_row_reference():
    model, x, _ = trained()
    batch = model.score_batch(x[:200])
    assert batch.tolist() == pytest.approx([model.predict_one(r) for r in x[:200]], rel=1e-9)


def test_learning_a_batch_is_learning_its_rows_one_at_a_time():
    _, x, y = trained(300)
    many, one = BinnedLogistic(), BinnedLogistic()
    many.learn_many(x, y)
    for row, label in zip(x, y, strict=True):
        one.learn_one(row, int(label))
    assert many.to_state() == one.to_state()
    assert many.n_learned == 300


def test_it_learns_a_risk_at_both_ends_of_an_input_where_one_slope_cannot():
    model, x, y = trained(6_000)
    linear = LinearChampion(learning_rate=0.05)
    for row, label in zip(x, y, strict=True):
        linear.learn_one(row, int(label))
    _, test_x, test_y = trained(3_000, seed=1)
    binned_auc = roc_auc(test_y, model.score_batch(test_x))
    linear_auc = roc_auc(test_y, linear.score_batch(test_x))
    assert binned_auc > 0.95
    assert linear_auc < 0.75


def test_contributions_add_up_to_the_logit_and_name_the_input_that_mattered():
    model, x, _ = trained()
    contributions = model.contributions(x[:50])
    p = model.score_batch(x[:50])
    logits = np.log(p / (1 - p))
    assert np.abs(model.pair_steps).max() > 0.01  # the pairs have a say in the sum
    np.testing.assert_allclose(contributions.sum(axis=1) + model.baseline(), logits, rtol=1e-7, atol=1e-7)
    risky = np.array([[3.0] * N_FEATURES])
    risky[0, 2] = 30.0  # far in the risky upper tail of input 2
    assert int(np.argmax(model.contributions(risky)[0])) == 2


@pytest.mark.parametrize("rows", ["gamma", "xor"])
def test_contributions_kernel_matches_the_numpy_reference(rows):
    if rows == "gamma":
        model, x, _ = trained()
    else:
        x, y = xor_rows(5_000, seed=3)
        model = BinnedLogistic()
        model.learn_many(x, y)
    x = np.vstack([x[:300], np.zeros((1, N_FEATURES)), np.full((1, N_FEATURES), -5.0),
                   np.full((1, N_FEATURES), 1e9)])  # (at the means' side, negative, huge)
    assert np.abs(model.pair_steps).max() > 0.01  # (the pairs' shares are part of it)
    expected = model.contributions_reference(x)
    np.testing.assert_allclose(model.contributions(x), expected, rtol=1e-9, atol=1e-12)
    assert model.contributions(x[:0]).shape == (0, N_FEATURES)


def test_rows_of_another_width_are_refused_not_read_past():
    model, x, _ = trained(300)
    wide = np.hstack([x[:4], x[:4]])  # (as many values as 8 rows: reshaping would take them)
    for score in (model.score_batch, model.contributions):
        with pytest.raises(ValueError, match="columns"):
            score(wide)
        with pytest.raises(ValueError, match="columns"):
            score(x[:4, :-1])
    assert model.score_batch(x[0]).shape == (1,)  # (one vector is one row)
    assert model.score_batch(np.empty((0, N_FEATURES))).shape == (0,)


def test_state_round_trips_through_json_and_learning_resumes_exactly():
    model, x, y = trained()
    copy = model_from_state(loads(dumps(model.to_state())))
    assert isinstance(copy, BinnedLogistic)
    assert copy.score_batch(x).tolist() == model.score_batch(x).tolist()
    model.learn_many(x[:100], y[:100])
    copy.learn_many(x[:100], y[:100])
    assert copy.to_state() == model.to_state()


def mutate(state: dict, key: str, value) -> dict:
    return {**state, key: value}


GOOD = BinnedLogistic().to_state()
HOSTILE = [
    ("kind", "forest"),
    ("steps", [[0.0] * N_BINS] * (N_INPUTS - 1)),
    ("steps", [[float("nan")] * N_BINS] * N_INPUTS),
    ("means", [1e300] * N_INPUTS),
    ("means", ["a"] * N_INPUTS),
    ("slope_g2", [0.0] * N_INPUTS),
    ("m2", [-1.0] * N_INPUTS),
    ("bin_edges", [0.0]),
    ("inputs", ["amount"]),
    ("params", {**GOOD["params"], "prior": 1.5}),
    ("params", {**GOOD["params"], "seed": True}),
    ("params", {**GOOD["params"], "learning_rate": float("inf")}),
    ("params", {"learning_rate": 0.1}),
    ("n_learned", -3),
    ("n_learned", 10**400),
    ("slopes", [10**400] * N_INPUTS),
    ("bias", [[1.0]]),
    ("extra", 1),
    ("pair_steps", [[[0.0] * N_PAIR_BINS] * N_PAIR_BINS] * (N_PAIRS + 1)),
    ("pair_steps", [[[float("inf")] * N_PAIR_BINS] * N_PAIR_BINS] * N_PAIRS),
    ("pair_steps", [[["x"] * N_PAIR_BINS] * N_PAIR_BINS] * N_PAIRS),
    ("pair_steps", 3.0),
    ("pair_g2", [[[0.0] * N_PAIR_BINS] * N_PAIR_BINS] * N_PAIRS),
    ("pair_g2", [[[-1.0] * N_PAIR_BINS] * N_PAIR_BINS] * N_PAIRS),
    ("pairs", [list(p) for p in PAIRS][::-1]),
    ("pairs", [["amount", "amount"]] * N_PAIRS),
    ("pairs", {"a": 1}),
    ("pair_edges", [0.0]),
    ("pair_edges", None),
]


@pytest.mark.parametrize(("key", "value"), HOSTILE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(HOSTILE)])
def test_a_hostile_state_is_refused_before_anything_scores(key, value):
    with pytest.raises(ValueError, match="model state|not a binned"):
        BinnedLogistic.from_state(mutate(GOOD, key, value))


def test_extreme_but_finite_statistics_still_score_finite_probabilities():
    state = {**GOOD, "count": [1e12], "m2": [1e-300] * N_INPUTS, "means": [-1e12] * N_INPUTS,
             "slopes": ([1e12, -1e12] * N_INPUTS)[:N_INPUTS], "steps": [[1e12] * N_BINS] * N_INPUTS}
    model = BinnedLogistic.from_state(state)
    rows = np.vstack([np.zeros(N_FEATURES), np.full(N_FEATURES, 1e12), np.full(N_FEATURES, -1e12)])
    assert np.all(np.isfinite(model.score_batch(rows)))
    assert np.all(np.isfinite(model.contributions(rows)))


@pytest.mark.parametrize("field", ["bias_g2", "pair_g2", "pairs", "pair_steps"])
def test_a_state_missing_a_field_is_refused(field):
    state = dict(GOOD)
    del state[field]  # (a state without any of the pair fields is an older one: see below)
    with pytest.raises(ValueError, match="expected fields"):
        BinnedLogistic.from_state(state)


def xor_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows where fraud is one of the first pair's inputs high but not both: no input alone
    says anything, so a sum of per-input steps cannot rank them."""
    from flagstream.scoring.linear import INPUT_NAMES

    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 1.0, size=(n, N_FEATURES))
    a, b = (INPUT_NAMES.index(name) for name in PAIRS[0])
    x[:, [a, b]] = rng.choice([-1.0, 1.0], size=(n, 2)) + rng.normal(0.0, 0.1, size=(n, 2))
    y = ((x[:, a] > 0) ^ (x[:, b] > 0)).astype(np.int8)
    return x, y


def test_a_pair_learns_an_interaction_that_no_sum_of_steps_can():
    x, y = xor_rows(20_000, seed=1)
    model = BinnedLogistic()
    model.learn_many(x, y)
    test_x, test_y = xor_rows(4_000, seed=2)
    assert roc_auc(test_y, model.score_batch(test_x)) > 0.9
    unlearned = BinnedLogistic().to_state()["pair_steps"]
    additive = BinnedLogistic.from_state({**model.to_state(), "pair_steps": unlearned})
    assert roc_auc(test_y, additive.score_batch(test_x)) < 0.65  # the same model without its pairs
    # the pair's term, split between its two inputs, is what explains a flag
    from flagstream.scoring.linear import INPUT_NAMES

    a, b = (INPUT_NAMES.index(name) for name in PAIRS[0])
    risky = test_x[(test_y == 1)][:50]
    contributions = model.contributions(risky)
    assert set(np.argsort(-contributions.mean(axis=0))[:2].tolist()) == {a, b}
    p = model.score_batch(risky)
    np.testing.assert_allclose(contributions.sum(axis=1) + model.baseline(), np.log(p / (1 - p)), atol=1e-7)
    assert model.score_batch(test_x[:300]).tolist() == pytest.approx(
        [model.predict_one(r) for r in test_x[:300]], rel=1e-9)


def test_a_state_stored_before_pairs_loads_with_them_unlearned_and_scores_as_before():
    model, x, y = trained()
    old = model.to_state()
    for field in ("pairs", "pair_edges", "pair_steps", "pair_g2"):
        del old[field]
    inputs, _ = model._terms(x)  # each input's term
    # the model as it scored before pairs
    before = 1.0 / (1.0 + np.exp(-np.clip(inputs.sum(axis=1) + model.bias[0], -50, 50)))
    again = BinnedLogistic.from_state(old)
    assert not np.array_equal(again.score_batch(x), model.score_batch(x))  # the pairs had a say
    assert not again.pair_steps.any() and np.all(again.pair_g2 == BinnedLogistic().pair_g2)
    # (summed in another order than these numpy sums: equal to rounding)
    assert again.score_batch(x).tolist() == pytest.approx(before.tolist(), rel=1e-12)
    again.learn_many(x, y)  # and they learn from the next labels on
    assert again.pair_steps.any()
    with pytest.raises(ValueError, match="expected fields"):  # some pair fields but not all
        BinnedLogistic.from_state({**old, "pairs": [list(p) for p in PAIRS]})


def test_settings_choose_the_starting_champion_and_its_lineage():
    default = Settings.from_env({})
    assert isinstance(default.champion_model(), BinnedLogistic)
    assert ModelHandle(default.champion_model(), name=default.champion_lineage()).version == "gam-000000"
    linear = Settings.from_env({"FLAGSTREAM_MODEL": "linear", "FLAGSTREAM_LEARNING_RATE": "0.01"})
    assert isinstance(linear.champion_model(), LinearChampion)
    assert (linear.champion_model().learning_rate, linear.champion_lineage()) == (0.01, "lr")
    slower = Settings.from_env({"FLAGSTREAM_BINNED_LEARNING_RATE": "0.05"})
    assert slower.champion_model().learning_rate == 0.05
    with pytest.raises(ConfigurationError, match="FLAGSTREAM_MODEL"):
        Settings.from_env({"FLAGSTREAM_MODEL": "forest"})


def test_a_state_stored_before_the_distance_input_loads_and_scores_as_before():
    """A champion stored by the version before ``distance_from_usual_area`` keeps every
    learned weight, and the new input starts unlearned: on a feature vector without a
    location (distance 0) it has no say, so the model scores as it did."""
    from flagstream.features.layout import DISTANCE, EARLIER_FEATURE_COUNTS
    from flagstream.scoring.binned import ADDED_INPUTS
    from flagstream.scoring.linear import INPUT_NAMES

    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 1.0, size=(500, N_FEATURES))
    x[:, DISTANCE:] = 0.0
    model = BinnedLogistic()
    model.learn_many(x, (x[:, 4] > 1.5).astype(np.int8))
    state = model.to_state()
    at = [INPUT_NAMES.index(n) for n in ADDED_INPUTS]
    old = {**state, "inputs": [n for n in INPUT_NAMES if n not in ADDED_INPUTS]}
    for name in ("means", "m2", "slopes", "slope_g2", "steps", "step_g2"):
        old[name] = [v for k, v in enumerate(state[name]) if k not in at]
    del old["support"]  # a state from then had no support either
    for name in ("pairs", "pair_edges", "pair_steps", "pair_g2"):
        del old[name]  # nor pairs
    again = BinnedLogistic.from_state(old)
    # what the stored model was: the same, without the added inputs and the pairs
    unlearned = {**state, **{k: v for k, v in BinnedLogistic().to_state().items() if k.startswith("pair")}}
    for name in ("means", "m2", "support", "slopes", "slope_g2", "steps", "step_g2"):
        unlearned[name] = np.array(state[name])
        unlearned[name][at] = np.array(BinnedLogistic().to_state()[name])[at]
        unlearned[name] = unlearned[name].tolist()
    np.testing.assert_array_equal(again.score_batch(x), BinnedLogistic.from_state(unlearned).score_batch(x))
    assert not again.contributions(x)[:, DISTANCE:].any()  # an earlier decision's vector: no say
    assert DISTANCE in EARLIER_FEATURE_COUNTS

    for bad_inputs in (old["inputs"][1:], old["inputs"][::-1], [*old["inputs"], "x"], "amount"):
        with pytest.raises(ValueError, match="other inputs|list of names"):
            BinnedLogistic.from_state({**old, "inputs": bad_inputs})
    with pytest.raises(ValueError, match="slopes must have shape"):
        BinnedLogistic.from_state({**old, "slopes": old["slopes"][1:]})
