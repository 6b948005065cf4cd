"""The offline backtest (flagstream.evaluation.backtest) on small simulated streams, end to end."""

from __future__ import annotations

import argparse
import gzip
import json
import math

import orjson
import pytest

from flagstream.evaluation.backtest import (
    GROUND_TRUTH,
    JSON_KEYS,
    Backtest,
    BacktestConfig,
    add_arguments,
    backtest,
    run,
)
from flagstream.features.layout import DAY_MS, HOUR_MS
from flagstream.scoring.handle import DEFAULT_KIND, LINEAGES
from flagstream.simulation.simulator import MalformedLineError, SimulationConfig, simulate, write_stream

#: 200 customers for 40 days (~16k transactions); the radius keeps ~78 reachable terminals.
SMALL = SimulationConfig(customers=200, terminals=400, days=40, radius=25.0, seed=3)
#: The last 7 simulated days.
WINDOW = {"test_start": "2018-05-04", "test_end": "2018-05-10"}
RANKING = ("auc", "average_precision", "card_precision_at_100", "recall", "false_discovery_rate")


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bt") / "small.jsonl.gz"
    write_stream(simulate(SMALL), path, progress=False)
    return path


@pytest.fixture(scope="module")
def records(stream_path):
    with gzip.open(stream_path, "rb") as fh:
        return [orjson.loads(line) for line in fh]


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_end_to_end_json_and_report(stream_path, tmp_path, capsys):
    args = parse(
        [
            str(stream_path),
            "--json",
            "--report",
            str(tmp_path / "rep"),
            "--test-start",
            WINDOW["test_start"],
            "--test-end",
            WINDOW["test_end"],
        ]
    )
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(JSON_KEYS) <= set(out)
    for key in RANKING:
        assert 0.0 <= out[key] <= 1.0, key
    assert out["n_events"] > 10_000 and out["n_fraud"] > 0 and out["malformed_lines"] == 0
    assert out["events_per_s"] > 0 and out["flags_per_day"] >= 0
    assert out["auc"] > 0.6  # it learns something
    assert (tmp_path / "rep" / "backtest.png").stat().st_size > 5_000
    saved = json.loads((tmp_path / "rep" / "backtest.json").read_text())
    assert saved["auc"] == out["auc"] and len(saved["daily"]) == SMALL.days


def test_table_output(stream_path, capsys):
    assert (
        run(
            parse([str(stream_path), "--no-report", "--test-start", "2018-05-04", "--test-end", "2018-05-10"])
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "AUC ROC" in text and "Card precision@100" in text


def test_labels_arrive_only_after_their_delay(records):
    config = BacktestConfig(
        review_delay_hours=6, chargeback_delay_days=3, review_capacity_per_day=5, threshold=0.2, **WINDOW
    )
    bt = Backtest(config)
    truth = {r["transaction_id"]: r["is_fraud"] for r in records}
    learn = bt.learner.learn
    seen: dict[str, str] = {}
    reviewed_per_day: dict[int, int] = {}

    def checked_learn(values):
        for raw in values:
            feedback = orjson.loads(raw)
            tx = feedback["transaction_id"]
            decision = bt.decisions[tx]  # what the learner will look up
            delay = 6 * HOUR_MS if feedback["source"] == "review" else 3 * DAY_MS
            assert decision["event_time_ms"] + delay <= bt.now_ms, "label revealed early"
            assert feedback["label"] == ("fraud" if truth[tx] else "legit")
            if feedback["source"] == "review":
                assert decision["decision"] == "review"
                day = decision["event_time_ms"] // DAY_MS
                reviewed_per_day[day] = reviewed_per_day.get(day, 0) + 1
            else:
                assert feedback["source"] == ("chargeback" if truth[tx] else "auto")
            assert tx not in seen, "a label delivered twice"
            seen[tx] = feedback["source"]
        return learn(values)

    bt.learner.learn = checked_learn
    result = bt.run(records)
    assert seen and max(reviewed_per_day.values()) <= 5
    assert {"review", "chargeback", "auto"} <= set(seen.values())
    assert result.metrics["labels_delivered"] == len(seen) == result.metrics["labels_learned"]
    # every label not yet delivered is still pending, and nothing more
    assert len(bt.decisions) == result.metrics["n_events"] - len(seen)


def test_ground_truth_never_reaches_the_core(records):
    bt = Backtest(BacktestConfig(**WINDOW))
    process = bt.core.process
    sent = 0

    def checked_process(values, offsets=None):
        nonlocal sent
        for raw in values:
            record = orjson.loads(raw)
            assert not set(GROUND_TRUTH) & set(record)
            assert b"is_fraud" not in raw and b"fraud_scenario" not in raw
        sent += len(values)
        return process(values, offsets)

    bt.core.process = checked_process
    result = bt.run(records)
    assert sent == result.metrics["n_events"] > 0
    assert all("is_fraud" in r for r in records)  # the caller's records are left alone


def test_out_of_order_input_is_scored_in_event_time_order(records):
    shuffled = records[::-1]
    bt = Backtest(BacktestConfig(batch_size=500, **WINDOW))
    process, last = bt.core.process, [""]

    def checked_process(values, offsets=None):
        stamps = [orjson.loads(v)["timestamp"] for v in values]
        assert stamps == sorted(stamps) and stamps[0] >= last[0]
        last[0] = stamps[-1]
        return process(values, offsets)

    bt.core.process = checked_process
    assert bt.run(shuffled).metrics["n_events"] == len(records) - sum(
        r["timestamp"] >= "2018-05-11" for r in records
    )


def test_malformed_lines_are_reported_and_do_not_change_metrics(records, tmp_path, capsys):
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    lines = [orjson.dumps(r) for r in records]
    bad = {
        5: b"{not json",
        50: b"[1, 2, 3]",
        500: orjson.dumps({k: v for k, v in records[7].items() if k != "is_fraud"}),
    }
    for position in sorted(bad):
        lines.insert(position - 1, bad[position])  # 1-based line numbers in the new file
    # a record the core rejects (no amount), last in time so no batch boundary moves
    no_amount = {k: v for k, v in records[-1].items() if k != "amount"} | {"transaction_id": "t-x"}
    lines.append(orjson.dumps(no_amount))
    bad[len(lines)] = lines[-1]
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_bytes(b"\n".join(lines) + b"\n")

    reference = backtest(clean, BacktestConfig(**WINDOW))
    result = backtest(dirty, BacktestConfig(**WINDOW))
    assert [n for n, _ in result.malformed] == sorted(bad)
    assert "rejected (missing_field)" in dict(result.malformed)[len(lines)]
    assert result.metrics["malformed_lines"] == 4 and result.metrics["rejected_by_core"] == 1
    for key in (*RANKING, "flags_per_day", "n_events", "n_fraud", "labels_learned"):
        assert result.metrics[key] == reference.metrics[key], key

    assert run(parse([str(dirty), "--no-report", "--json", *argv_window()])) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["malformed_lines"] == 4
    assert "line 5:" in captured.err and f"line {len(lines)}:" in captured.err

    assert run(parse([str(dirty), "--no-report", "--on-error", "raise", *argv_window()])) == 1
    assert "line 5:" in capsys.readouterr().err
    with pytest.raises(MalformedLineError) as info:
        backtest(dirty, BacktestConfig(on_error="raise", **WINDOW))
    assert info.value.line_number == 5


def test_rejected_record_mid_stream_is_reported_by_its_line(records):
    broken = [*records[:99], {**records[99], "amount": -5.0}, *records[100:]]
    result = backtest(broken, BacktestConfig(**WINDOW))
    assert result.malformed == [(100, result.malformed[0][1])]
    assert "invalid_amount" in result.malformed[0][1]
    with pytest.raises(ValueError, match="line 100: rejected"):
        backtest(broken, BacktestConfig(on_error="raise", **WINDOW))


def argv_window():
    return ["--test-start", WINDOW["test_start"], "--test-end", WINDOW["test_end"]]


def test_auto_legit_subsample_learns_fewer_labels(records):
    full = backtest(records, BacktestConfig(**WINDOW)).metrics
    sub = backtest(records, BacktestConfig(auto_legit_fraction=0.2, **WINDOW)).metrics
    assert sub["labels_by_source"]["auto"] < 0.3 * full["labels_by_source"]["auto"]
    assert sub["labels_learned"] == sum(sub["labels_by_source"].values())
    assert sub["n_events"] == full["n_events"]


def test_bad_options_exit_2(stream_path, tmp_path):
    assert (
        run(
            parse([str(stream_path), "--test-start", "2018-05-10", "--test-end", "2018-05-01", "--no-report"])
        )
        == 2
    )
    assert run(parse([str(tmp_path / "missing.jsonl"), "--no-report"])) == 2
    assert run(parse([str(stream_path), "--batch-size", "0", "--no-report"])) == 2


def test_empty_test_window_gives_nan_not_a_crash(records):
    m = backtest(records, BacktestConfig(test_start="2019-01-01", test_end="2019-01-07")).metrics
    assert math.isnan(m["auc"]) and m["n_test_events"] == 0


def test_challengers_are_reported_side_by_side_without_touching_the_champion(records):
    alone = backtest(records, BacktestConfig(policy="fixed:0.5", **WINDOW)).metrics
    both = backtest(
        records, BacktestConfig(policy="fixed:0.5", challengers="fast:learning_rate=0.05;same:",
                                **WINDOW)
    ).metrics
    assert set(both["challengers"]) == {"fast", "same"}
    for key in RANKING:
        assert both[key] == alone[key], "shadow models must not change the champion's decisions"
    # a challenger with the champion's own hyperparameters learns the same labels: the same
    # ranking, up to ties (shadow scores are recorded to 6 decimals, the champion's are not)
    assert both["challengers"]["same"]["auc"] == pytest.approx(both["auc"], abs=2e-4)
    assert both["challengers"]["same"]["average_precision"] == pytest.approx(
        both["average_precision"], abs=2e-3)
    assert 0.0 <= both["challengers"]["fast"]["average_precision"] <= 1.0


def test_the_live_policy_changes_champions_through_the_gate_as_the_worker_does(records, monkeypatch):
    """A champion that cannot learn (a vanishing rate) against a challenger that can: the
    backtest's live policy runs the worker's gate, so the challenger takes the seat with
    its evidence, and the decisions after it are the new champion's."""
    for name, value in (("GATE_MIN_LABELS", "100"), ("GATE_MIN_FRAUDS", "5"),
                        ("GATE_COOLDOWN_LABELS", "200")):
        monkeypatch.setenv(f"FLAGSTREAM_{name}", value)
    run = Backtest(BacktestConfig(learning_rate=1e-9, challengers="able:learning_rate=0.01",
                                  **WINDOW))
    m = run.run(records).metrics
    assert m["promotions"] >= 1
    first = m["champion_changes"][0]
    assert first["action"] == "promote" and first["by"] == "gate"
    assert first["version"].startswith("able-") and "frauds" in first["reason"]
    assert m["model_version"].split("-")[0] in ("able", LINEAGES[DEFAULT_KIND])
    seat = run.registry[b"seat"]  # the registry records, as the worker writes them on `models`
    assert seat["history"][0]["version"] == first["version"]
    fixed = backtest(records, BacktestConfig(policy="fixed:0.5", learning_rate=1e-9,
                                             challengers="able:learning_rate=0.01", **WINDOW))
    assert fixed.metrics["promotions"] == 0, "a fixed policy is the plain benchmark: no gate"
