"""``flagstream ceiling`` (flagstream.evaluation.ceiling): which frauds any model could see, the
oracle's figures, and the model's AUC shortfall split by kind of fraud."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.cli import main as cli_main
from flagstream.evaluation.backtest import Backtest, BacktestConfig
from flagstream.evaluation.ceiling import (
    HOUR_MS,
    analyse,
    auc_shortfall,
    ceiling,
    read_labelled,
    read_scores,
    seen_frauds,
)
from flagstream.evaluation.detection_metrics import DAY_MS, roc_auc
from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

SMALL = SimulationConfig(customers=200, terminals=400, days=40, radius=25.0, seed=3)
WINDOW = {"test_start": "2018-05-04", "test_end": "2018-05-10"}


def seen_reference(
    ts,
    merchant,
    fraud,
    scenario,
    merchant_scenarios=(2,),
    review=24 * HOUR_MS,
    chargeback=7 * DAY_MS,
    memory=28 * DAY_MS,
):
    """The definition, fraud by fraud in time order (ties in row order), against every
    earlier fraud at the same merchant."""
    seen = [False] * len(ts)
    label_at: dict[int, int] = {}
    frauds = sorted((int(ts[i]), i) for i in range(len(ts)) if fraud[i])
    for t, i in frauds:
        if scenario[i] not in merchant_scenarios:
            seen[i] = True
        else:
            seen[i] = any(
                merchant[j] == merchant[i] and label_at[j] <= t and ts[j] >= t - memory for j in label_at
            )
        label_at[i] = t + (review if seen[i] else chargeback)
    return seen


rows = st.lists(
    st.tuples(st.integers(0, 60 * 24), st.integers(0, 3), st.booleans(), st.sampled_from([0, 1, 2, 3])),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(rows, st.integers(0, 48), st.integers(0, 10), st.integers(1, 40))
def test_seen_frauds_follow_the_definition(data, review_h, chargeback_d, memory_d):
    ts = np.array([hour * HOUR_MS for hour, *_ in data], dtype=np.int64)
    merchant = np.array([m for _, m, _, _ in data], dtype=np.int64)
    fraud = np.array([f for *_, f, _ in data], dtype=bool)
    scenario = np.array([s for *_, s in data], dtype=np.int64)
    delays = dict(review=review_h * HOUR_MS, chargeback=chargeback_d * DAY_MS, memory=memory_d * DAY_MS)
    got = seen_frauds(
        ts, merchant, fraud, scenario, (2,), delays["review"], delays["chargeback"], delays["memory"]
    )
    assert got.tolist() == seen_reference(ts, merchant, fraud, scenario, (2,), **delays)
    assert not got[~fraud].any()  # only frauds are ever seen


def test_a_compromised_merchant_is_seen_a_week_after_its_first_fraud_then_a_day_after_each_flag():
    day = DAY_MS
    ts = np.array([0, 3 * day, 7 * day, 7 * day + 1, 9 * day, 40 * day])
    seen = seen_frauds(ts, np.zeros(6), np.ones(6), np.full(6, 2))
    # 0 and 3 d: nothing known; 7 d: the first fraud's chargeback arrived; 9 d: so did the
    # flagged 7 d fraud's review; 40 d: every earlier fraud is more than 28 days old
    assert seen.tolist() == [False, False, True, True, True, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=80), st.integers(0, 3))
def test_the_auc_shortfall_parts_add_up_to_one_minus_the_auc(data, n_kinds):
    y = np.array([f for f, _ in data])
    s = np.array([v / 5 for _, v in data])  # few distinct values: many ties
    if y.all() or not y.any():
        return
    kind = np.arange(y.size) % (n_kinds + 1)
    parts = auc_shortfall(y, s, {str(k): kind == k for k in range(n_kinds + 1)})
    assert sum(parts.values()) == pytest.approx(1 - roc_auc(y, s), abs=1e-12)


def test_the_oracle_ranks_seen_frauds_first_and_unseen_ones_at_random():
    rng = np.random.default_rng(1)
    n = 20_000
    y = rng.random(n) < 0.02
    days, cards = rng.integers(0, 7, n), rng.integers(0, 3_000, n)
    every = ceiling(days, cards, y, y, draws=3)
    assert every.auc == 1.0 and every.average_precision == (1.0, 1.0, 1.0)
    none = ceiling(days, cards, y, np.zeros(n, bool), draws=3)
    assert none.auc == 0.5 and none.average_precision[0] == pytest.approx(y.mean(), abs=0.01)
    half = y & (rng.random(n) < 0.5)
    part = ceiling(days, cards, y, half, draws=3)
    assert part.auc == pytest.approx((half.sum() + (y.sum() - half.sum()) / 2) / y.sum())
    assert none.average_precision[0] < part.average_precision[0] < 1.0


@pytest.fixture(scope="module")
def stream_and_scores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ceiling")
    stream, scores = tmp / "small.jsonl.gz", tmp / "scores.csv.gz"
    write_stream(simulate(SMALL), stream, progress=False)
    result = Backtest(BacktestConfig(scores_out=str(scores), **WINDOW)).run(stream)
    return stream, scores, result


def test_the_model_beside_its_ceiling_is_the_backtest_s_own_figures(stream_and_scores, capsys):
    stream, scores, result = stream_and_scores
    out = analyse(read_labelled(stream), BacktestConfig(**WINDOW), scores=read_scores(scores))
    model = out["model"]
    # the same transactions, protocol and metrics as the backtest that wrote the scores
    assert model["unscored"] == 0 and out["frauds"] == result.metrics["n_test_fraud"]
    for key in ("auc", "average_precision", "card_precision_at_100"):
        assert model[key] == pytest.approx(result.metrics[key], abs=1e-12)
    assert sum(model["auc_shortfall"].values()) == pytest.approx(1 - model["auc"], abs=1e-12)
    assert out["unseen"] == sum(v["unseen"] for v in out["by_scenario"].values()) > 0
    assert out["by_scenario"]["2"]["unseen"] == out["unseen"]  # only the merchant scenario hides
    c = out["ceiling"]
    assert c["auc"] == pytest.approx((out["seen"] + out["unseen"] / 2) / out["frauds"])
    assert c["average_precision"][1] <= c["average_precision"][0] <= c["average_precision"][2] <= 1.0

    assert (
        cli_main(
            [
                "ceiling",
                str(stream),
                "--scores",
                str(scores),
                "--json",
                "--test-start",
                WINDOW["test_start"],
                "--test-end",
                WINDOW["test_end"],
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["ceiling"] == c and printed["model"]["auc"] == model["auc"]
    assert (
        cli_main(
            ["ceiling", str(stream), "--test-start", WINDOW["test_start"], "--test-end", WINDOW["test_end"]]
        )
        == 0
    )
    assert "ceiling: AUC" in capsys.readouterr().out


def test_a_week_without_fraud_or_a_bad_window_is_said_not_measured(stream_and_scores, capsys):
    stream, _, _ = stream_and_scores
    assert cli_main(["ceiling", str(stream), "--test-start", "2019-01-01", "--test-end", "2019-01-07"]) == 1
    assert "no fraud in the test window" in capsys.readouterr().err
    assert cli_main(["ceiling", str(stream), "--test-start", "2018-05-10", "--test-end", "2018-05-04"]) == 2
    assert "test_end is before test_start" in capsys.readouterr().err


def test_hostile_lines_are_skipped_and_counted(tmp_path):
    lines = [
        b'{"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1", "amount": 1,'
        b' "timestamp": "2018-04-01T00:00:00Z", "is_fraud": 1, "fraud_scenario": 2}',
        b"not json",
        b'{"transaction_id": "t-2", "is_fraud": 7}',
        b"[1, 2]",
        b'{"transaction_id": "t-3", "account_id": "c-1", "merchant_id": "m-1", "amount": 1,'
        b' "timestamp": "yesterday", "is_fraud": 0}',
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    read = read_labelled(path)
    assert read.ids == ["t-1"] and read.skipped == 4
    scores = tmp_path / "scores.jsonl"
    scores.write_bytes(
        b'{"transaction_id": "t-1", "score": 0.5}\n{"transaction_id": "t-2", "score": "x"}\n'
        b'{"transaction_id": "t-3"}\nnot json\n[1]\n{"transaction_id": "t-4", "score": 1e999}\n'
        b'{"score": 0.9}\n{"transaction_id": 5, "score": 0.9}\n'
    )
    assert read_scores(scores) == {"t-1": 0.5}
