"""``flagstream compare-batch`` (flagstream.evaluation.compare_batch) on a small simulated stream."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.util
import json

import numpy as np
import pytest

from flagstream.cli import main as cli_main
from flagstream.evaluation import detection_metrics as dm
from flagstream.evaluation.backtest import Backtest, BacktestConfig
from flagstream.evaluation.batch_model import train_batch_model
from flagstream.evaluation.compare_batch import (
    Windows,
    add_arguments,
    batch_fit,
    collect,
    compare,
    format_table,
    run,
    top_k,
)
from flagstream.features.layout import DAY_MS
from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

pytest.importorskip("sklearn")  # the `batch` extra; `make install` installs it with `test`

#: 200 cards for 40 days (~16k transactions, 2018-04-01..05-10), as in test_backtest.py.
SMALL = SimulationConfig(customers=200, terminals=400, days=40, radius=25.0, seed=3)
TEST = {"test_start": "2018-05-04", "test_end": "2018-05-10"}
#: trained on 04-08..04-26 (its last week stops the boosting); 04-27..05-03: label delay
WINDOWS = Windows("2018-04-08", "2018-04-26", **TEST)


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cmp") / "small.jsonl.gz"
    write_stream(simulate(SMALL), path, progress=False)
    return path


@pytest.fixture(scope="module")
def collected(stream_path):
    return collect(stream_path, BacktestConfig(**TEST))


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_runs_end_to_end(stream_path, tmp_path, capsys):
    hostile = tmp_path / "hostile.jsonl.gz"  # the stream, then two bad lines (a second gzip member)
    hostile.write_bytes(stream_path.read_bytes() + gzip.compress(b'not json\n{"amount": 1}\n'))
    argv = [str(hostile), "--json", "--train-start", WINDOWS.train_start, "--test-start",
            TEST["test_start"], "--test-end", TEST["test_end"]]  # fmt: skip
    assert run(parse(argv)) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["backtest"]["malformed_lines"] == 2  # reported, skipped
    assert captured.err.count("compare-batch: line ") == 2 and "not json" not in captured.out
    assert out["windows"]["train"] == ["2018-04-08", "2018-04-26"]  # --train-end's default: 8 days before
    for model in ("online", "batch"):
        for key in ("auc", "average_precision", "card_precision_at_100", "recall"):
            assert 0.0 <= out[model][key] <= 1.0, (model, key)
        assert out[model]["cost"]["us_per_event_batched"] > 0
        assert set(out[model]["by_scenario"]) == {"1", "2", "3"}
    assert out["batch"]["auc"] > 0.7  # the batch model learned something from the features
    fit = out["batch"]["fit"]
    assert fit["n_train"] == fit["n_fit"] + fit["n_valid"] > 5_000 and fit["n_iter"] >= 1
    assert fit["train_seconds"] > 0 and fit["params"]["class_weight"] is None
    assert out["alerts"] > 0 and out["ap_gap"] == pytest.approx(
        out["batch"]["average_precision"] - out["online"]["average_precision"])
    text = format_table(out, "small")
    assert "Average precision" in text and "scenario 2" in text and "AP gap" in text


def test_the_command_is_wired_and_says_when_scikit_learn_is_missing(stream_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else find_spec(name, *a))  # fmt: skip
    assert cli_main(["compare-batch", str(stream_path)]) == 2
    assert "pip install 'flagstream[batch]'" in capsys.readouterr().err


def test_unreadable_files_and_empty_windows_end_with_status_2(stream_path, tmp_path, capsys):
    assert run(parse([str(tmp_path / "missing.jsonl")])) == 2
    assert "cannot read" in capsys.readouterr().err
    assert run(parse([str(stream_path), "--test-start", "2019-01-01", "--test-end", "2019-01-07"])) == 2
    assert "no scored event in the test window" in capsys.readouterr().err


def test_a_training_window_reaching_the_test_week_is_refused(stream_path, capsys):
    argv = [str(stream_path), "--train-end", "2018-05-04", "--test-start", "2018-05-04"]
    assert run(parse(argv)) == 2
    assert "must end before the test window" in capsys.readouterr().err
    with pytest.raises(ValueError, match="longer than its last 7 days"):
        Windows("2018-04-20", "2018-04-26", **TEST)


def _poisoned(data, rows):
    """``data`` with the labels flipped and the features scrambled on ``rows``."""
    rng = np.random.default_rng(1)
    features = data.features.copy()
    features[rows] = rng.permutation(features[rows]) * 3.0 + 1.0
    labels = data.is_fraud.copy()
    labels[rows] = 1 - labels[rows]
    return dataclasses.replace(data, features=features, is_fraud=labels)


def test_the_batch_model_learns_from_the_training_window_only(collected):
    data, (train_lo, train_hi) = collected, WINDOWS.train_ms
    test = (data.ts_ms >= WINDOWS.test_ms[0]) & (data.ts_ms < WINDOWS.test_ms[1])
    outside = (data.ts_ms < train_lo) | (data.ts_ms >= train_hi)  # before, the delay week, the test week
    assert test.sum() > 2_000 and (outside & ~test & (data.ts_ms < train_lo)).any()
    clean = batch_fit(data, WINDOWS).predict(data.features[test])
    poisoned = _poisoned(data, outside)
    # same scores for the (clean) test rows, whatever the rows outside the window say
    assert np.array_equal(batch_fit(poisoned, WINDOWS).predict(data.features[test]), clean)
    # the check has teeth: a window reaching into the test week learns from the poison
    reach = (train_lo, WINDOWS.test_ms[1])
    leaked = [
        train_batch_model(d.features, d.is_fraud, d.ts_ms, reach, 7 * DAY_MS).predict(data.features[test])
        for d in (data, poisoned)
    ]
    assert not np.allclose(leaked[0], leaked[1])
    assert batch_fit(data, WINDOWS).n_train == int((~outside).sum())


def test_the_metrics_are_the_detection_metrics_on_the_same_arrays(collected):
    data = collected
    out = compare(data, WINDOWS, protocol="all")
    start, end = WINDOWS.test_ms
    test = (data.ts_ms >= start) & (data.ts_ms < end)
    y, days, cards = data.is_fraud[test], data.ts_ms[test] // DAY_MS, data.cards[test]
    batch = batch_fit(data, WINDOWS).predict(data.features[test])
    k = int(data.flagged[test].sum())
    assert out["alerts"] == k
    from sklearn.metrics import average_precision_score, roc_auc_score

    for name, s in (("online", data.scores[test]), ("batch", batch)):
        figures = out[name]
        assert figures["auc"] == dm.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert figures["average_precision"] == dm.average_precision(y, s)
        assert figures["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert figures["card_precision_at_100"] == dm.card_precision_at_k(days, cards, s, y, 100)[0]
        flags = np.zeros(len(s), dtype=bool)
        flags[np.argsort(-s, kind="stable")[:k]] = True  # the same number of alerts
        assert figures["recall"] == flags[y == 1].mean()
        for code, row in figures["by_scenario"].items():
            in_scenario = data.scenario[test] == int(code)
            assert row["n"] == in_scenario.sum() and row["recall"] == flags[in_scenario].mean()
    reference = compare(data, WINDOWS)  # the default protocol leaves known cards out of the ranking
    assert reference["online"]["n_test_events"] < out["online"]["n_test_events"]


def test_the_online_scores_are_the_backtests_own(stream_path, collected):
    """Prequential: each score is the one the online model made live, before its label."""
    plain = Backtest(BacktestConfig(**TEST)).run(stream_path).metrics
    out = compare(collected, WINDOWS)
    for key in ("auc", "average_precision", "card_precision_at_100", "n_test_events"):
        assert out["online"][key] == plain[key], key
    assert out["online"]["live"]["recall"] == plain["recall"]
    assert np.isfinite(collected.features).all() and len(collected.features) == plain["n_events"]


def test_top_k_flags_exactly_k_of_the_rows():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.7])
    rows = np.array([True, False, True, True, True])
    assert top_k(scores, rows, 2).tolist() == [True, False, False, False, True]
    assert top_k(scores, rows, 0).sum() == 0 and top_k(scores, rows, 10).sum() == 4
