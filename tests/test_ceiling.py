"""``flagstream ceiling`` (flagstream.evaluation.ceiling): which frauds the labels reveal in time,
how long each merchant has gone unconfirmed, the oracle's figures, and the model's AUC
shortfall split by kind of fraud."""

from __future__ import annotations

import gzip
import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.cli import main as cli_main
from flagstream.evaluation.backtest import Backtest, BacktestConfig
from flagstream.evaluation.ceiling import (
    HOUR_MS,
    ScoresMismatch,
    analyse,
    auc_shortfall,
    days_unconfirmed,
    model_scores,
    oracle_figures,
    read_labelled,
    seen_frauds,
)
from flagstream.evaluation.detection_metrics import DAY_MS, roc_auc
from flagstream.evaluation.scores_out import read_scores
from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

SMALL = SimulationConfig(customers=200, terminals=400, days=40, radius=25.0, seed=3)
WINDOW = {"test_start": "2018-05-04", "test_end": "2018-05-10"}


def seen_reference(ts, merchant, fraud, scenario, review, chargeback, memory, merchant_scenarios=(2,)):
    """The definition, fraud by fraud in time order: seen when a fraud strictly earlier at the
    same merchant, within ``memory``, had its label by now."""
    seen = [False] * len(ts)
    label_at: dict[int, int] = {}
    for t, i in sorted((int(ts[i]), i) for i in range(len(ts)) if fraud[i]):
        seen[i] = scenario[i] not in merchant_scenarios or any(
            merchant[j] == merchant[i] and label_at[j] <= t and t - memory <= ts[j] < t for j in label_at
        )
        label_at[i] = t + (review if seen[i] else chargeback)
    return seen


def unconfirmed_reference(ts, merchant, fraud, chargeback, memory):
    """For each transaction, whole days back to the merchant's latest genuine transaction whose
    label had arrived, capped at ``memory`` days."""
    cap = memory // DAY_MS
    out = []
    for i in range(len(ts)):
        known = [ts[j] for j in range(len(ts))
                 if merchant[j] == merchant[i] and not fraud[j] and ts[j] + chargeback <= ts[i]]  # fmt: skip
        out.append(min(ts[i] // DAY_MS - max(known) // DAY_MS, cap) if known else cap)
    return out


rows = st.lists(
    st.tuples(st.integers(0, 60 * 24), st.integers(0, 3), st.booleans(), st.sampled_from([0, 1, 2, 3])),
    max_size=60,
)


def columns(data):
    ts = np.array([hour * HOUR_MS for hour, *_ in data], dtype=np.int64)
    merchant = np.array([m for _, m, _, _ in data], dtype=np.int64)
    fraud = np.array([f for *_, f, _ in data], dtype=bool)
    scenario = np.array([s for *_, s in data], dtype=np.int64)
    return ts, merchant, fraud, scenario


@settings(max_examples=300, deadline=None)
@given(rows, st.integers(0, 48), st.integers(0, 10), st.integers(1, 40))
def test_seen_frauds_follow_the_definition(data, review_h, chargeback_d, memory_d):
    ts, merchant, fraud, scenario = columns(data)
    delays = (review_h * HOUR_MS, chargeback_d * DAY_MS, memory_d * DAY_MS)
    got = seen_frauds(ts, merchant, fraud, scenario, (2,), *delays)
    assert got.tolist() == seen_reference(ts, merchant, fraud, scenario, *delays)
    assert not got[~fraud].any()  # only frauds are ever seen


@settings(max_examples=200, deadline=None)
@given(rows, st.integers(0, 10), st.integers(1, 40))
def test_days_unconfirmed_follow_the_definition(data, chargeback_d, memory_d):
    ts, merchant, fraud, _ = columns(data)
    got = days_unconfirmed(ts, merchant, fraud, chargeback_d * DAY_MS, memory_d * DAY_MS)
    assert got.tolist() == unconfirmed_reference(
        ts, merchant, fraud, chargeback_d * DAY_MS, memory_d * DAY_MS
    )


def test_a_compromised_merchant_is_seen_a_week_after_its_first_fraud_then_a_day_after_each_flag():
    day = DAY_MS
    ts = np.array([0, 3 * day, 7 * day, 7 * day + 1, 9 * day, 40 * day])
    seen = seen_frauds(ts, np.zeros(6), np.ones(6), np.full(6, 2))
    # 0 and 3 d: nothing known; 7 d: the first fraud's chargeback arrived; 9 d: so did the
    # flagged 7 d fraud's review; 40 d: every earlier fraud is more than 28 days old
    assert seen.tolist() == [False, False, True, True, True, False]
    # with reviews at once, frauds at one instant still do not reveal each other
    same = seen_frauds(
        np.array([0, 0, 0, day]), np.zeros(4), np.ones(4), np.array([1, 2, 2, 2]), review_delay_ms=0
    )
    assert same.tolist() == [True, False, False, True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=80), st.integers(0, 3))
def test_each_kind_loses_its_own_frauds_pairs_and_the_parts_add_up(data, n_kinds):
    y = np.array([f for f, _ in data])
    s = np.array([v / 5 for _, v in data])  # few distinct values: many ties
    if y.all() or not y.any():
        return
    kind = np.arange(y.size) % (n_kinds + 1)
    parts = auc_shortfall(y, s, {str(k): kind == k for k in range(n_kinds + 1)})
    genuine = s[~y]
    for k in range(n_kinds + 1):  # pair by pair: a genuine above a fraud loses 1, a tie 1/2
        lost = sum(float((genuine > f).sum() + (genuine == f).sum() / 2) for f in s[y & (kind == k)])
        assert parts[str(k)] == pytest.approx(lost / genuine.size / y.sum(), abs=1e-12)
    assert sum(parts.values()) == pytest.approx(1 - roc_auc(y, s), abs=1e-12)


def test_the_oracle_ranks_seen_frauds_first_and_the_rest_by_days_unconfirmed():
    rng = np.random.default_rng(1)
    n = 20_000
    y = rng.random(n) < 0.02
    days, cards = rng.integers(0, 7, n), rng.integers(0, 3_000, n)
    every = oracle_figures(days, cards, y, y, draws=3)
    assert every.auc == every.average_precision == (1.0, 1.0, 1.0)
    none = oracle_figures(days, cards, y, np.zeros(n, bool), draws=40)
    assert none.auc[0] == pytest.approx(0.5, abs=0.01) and none.average_precision[0] == pytest.approx(
        y.mean(), abs=0.01
    )
    half = y & (rng.random(n) < 0.5)
    part = oracle_figures(days, cards, y, half, draws=40)
    assert part.auc[0] == pytest.approx((half.sum() + (y.sum() - half.sum()) / 2) / y.sum(), abs=0.01)
    assert none.average_precision[0] < part.average_precision[0] < 1.0
    # unconfirmed days that tell frauds from genuine ones lift the unseen frauds
    told = oracle_figures(days, cards, y, half, unconfirmed=np.where(y, 5, rng.integers(0, 6, n)), draws=10)
    assert told.auc[0] > part.auc[0] + 0.05


@pytest.fixture(scope="module")
def stream_and_scores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ceiling")
    stream, scores = tmp / "small.jsonl.gz", tmp / "scores.csv.gz"
    write_stream(simulate(SMALL), stream, progress=False)
    # a record the scoring core refuses is neither scored nor ranked
    refused = {
        "transaction_id": "t-refused",
        "account_id": "c-1",
        "merchant_id": "m-1",
        "amount": -5,
        "timestamp": "2018-05-05T10:00:00Z",
        "is_fraud": 1,
        "fraud_scenario": 2,
    }
    stream.write_bytes(stream.read_bytes() + gzip.compress(orjson.dumps(refused) + b"\n"))
    result = Backtest(BacktestConfig(scores_out=str(scores), **WINDOW)).run(stream)
    return stream, scores, result


def test_the_model_beside_the_oracle_is_the_backtest_s_own_figures(stream_and_scores, capsys):
    stream, scores, result = stream_and_scores
    read = read_labelled(stream)
    assert "t-refused" not in read.ids and read.skipped == 1
    out = analyse(read, BacktestConfig(**WINDOW), scores=read_scores(scores))
    model = out["model"]
    # the same transactions, protocol and metrics as the backtest that wrote the scores
    assert model["unscored"] == 0 and out["frauds"] == result.metrics["n_test_fraud"]
    for key in ("auc", "average_precision", "card_precision_at_100"):
        assert model[key] == pytest.approx(result.metrics[key], rel=1e-12)
    assert sum(model["auc_shortfall"].values()) == pytest.approx(1 - model["auc"], abs=1e-12)
    assert out["unseen"] == sum(v["unseen"] for v in out["by_scenario"].values()) > 0
    assert out["by_scenario"]["2"]["unseen"] == out["unseen"]  # only the merchant scenario hides
    assert model["auc_shortfall"]["2 unseen"] == pytest.approx(
        (1 - model["unseen_auc"]) * out["unseen"] / out["frauds"], abs=1e-12
    )
    assert 0.0 <= out["unseen_auc_by_days_unconfirmed"] <= 1.0
    oracle = out["oracle"]
    for key in ("auc", "average_precision", "card_precision_at_100"):
        low, high = oracle[key][1], oracle[key][2]
        assert low - 1e-12 <= oracle[key][0] <= high + 1e-12 and high <= 1.0

    argv = ["ceiling", str(stream), "--test-start", WINDOW["test_start"], "--test-end", WINDOW["test_end"]]
    assert cli_main([*argv, "--scores", str(scores), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["oracle"] == oracle and printed["model"]["auc"] == model["auc"]
    assert cli_main(argv) == 0
    assert "oracle: AUC" in capsys.readouterr().out
    # every fraud granted as seen: the oracle ranks perfectly
    assert cli_main([*argv, "--merchant-scenarios", "", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["oracle"]["auc"] == [1.0, 1.0, 1.0]


def test_scores_of_another_stream_are_refused(stream_and_scores, tmp_path, capsys):
    stream, scores, _ = stream_and_scores
    read = read_labelled(stream)
    shifted = {tx: (score, at + 1000) for tx, (score, at) in read_scores(scores).items()}
    with pytest.raises(ScoresMismatch, match="another stream"):
        model_scores(read, shifted)
    with pytest.raises(ScoresMismatch, match="no transaction"):
        model_scores(read, {"t-elsewhere": (0.5, 0)})
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join(orjson.dumps({"transaction_id": tx, "event_time_ms": at, "score": s}) + b"\n"
                               for tx, (s, at) in shifted.items()))  # fmt: skip
    assert cli_main(["ceiling", str(stream), "--scores", str(other)]) == 2
    assert "another stream" in capsys.readouterr().err


def test_a_week_without_fraud_bad_options_and_unreadable_files_are_said(stream_and_scores, tmp_path, capsys):
    stream, _, _ = stream_and_scores
    assert cli_main(["ceiling", str(stream), "--test-start", "2019-01-01", "--test-end", "2019-01-07"]) == 1
    assert "no fraud in the test window" in capsys.readouterr().err
    assert cli_main(["ceiling", str(stream), "--test-start", "2018-05-10", "--test-end", "2018-05-04"]) == 2
    assert "test_end is before test_start" in capsys.readouterr().err
    truncated = tmp_path / "scores.csv.gz"
    truncated.write_bytes(gzip.compress(b"transaction_id,event_time_ms,score\n" * 50)[:40])
    broken = tmp_path / "scores.csv"
    broken.write_bytes(b"transaction_id,score\n\xff\xfe,0.5\n")
    for bad in (truncated, broken, tmp_path / "missing.csv"):
        assert cli_main(["ceiling", str(stream), "--scores", str(bad)]) == 2
        assert capsys.readouterr().err.startswith("flagstream ceiling: ")


def test_hostile_lines_are_skipped_and_counted(tmp_path):
    good = {"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1", "amount": 1,
            "timestamp": "2018-04-01T00:00:00Z", "is_fraud": 1, "fraud_scenario": 2.0}  # fmt: skip
    lines = [
        orjson.dumps(good),
        b"not json",
        b'{"transaction_id": "t-2", "is_fraud": 7}',
        b"[1, 2]",
        orjson.dumps({**good, "transaction_id": "t-3", "timestamp": "yesterday", "is_fraud": 0}),
        orjson.dumps({**good, "transaction_id": "t-4", "is_fraud": True}),
        orjson.dumps({**good, "transaction_id": "t-5", "fraud_scenario": 2.5}),
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    read = read_labelled(path)
    assert read.ids == ["t-1"] and read.scenarios.tolist() == [2] and read.skipped == 6
    scores = tmp_path / "scores.jsonl"
    scores.write_bytes(
        b'{"transaction_id": "t-1", "score": 0.5, "event_time_ms": 7}\n'
        b'{"transaction_id": "t-2", "score": "x"}\n'
        b'{"transaction_id": "t-3", "event_time_ms": 1}\nnot json\n[1]\n'
        b'{"transaction_id": "t-4", "score": 1e999, "event_time_ms": 1}\n'
        b'{"score": 0.9, "event_time_ms": 1}\n'
        b'{"transaction_id": 5, "score": 0.9, "event_time_ms": 1}\n{"transaction_id": "t-6", "score": 0.9}\n'
    )
    assert read_scores(scores) == {"t-1": (0.5, 7)}
