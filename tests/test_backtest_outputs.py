"""The backtest's per-scenario recall and its ``--scores-out`` file, on a small simulated stream
with every fraud pattern switched on."""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json

import orjson
import pytest

from flagstream.evaluation.backtest import Backtest, BacktestConfig, BacktestInputError, add_arguments, run
from flagstream.evaluation.scores_out import COLUMNS, ScoresWriter
from flagstream.simulation.patterns import AccountTakeover, BustOut, CardTesting
from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

#: 200 cards for 40 days (~21k transactions), every pattern at a rate that puts each in the test week.
EXTENDED = SimulationConfig(
    customers=200, terminals=400, days=40, radius=25.0, seed=3, scenarios=(1, 2, 3, 4, 5, 6),
    card_testing=CardTesting(rate=5.0), takeover=AccountTakeover(rate=10.0), bust_out=BustOut(rate=20.0),
)  # fmt: skip
WINDOW = {"test_start": "2018-05-04", "test_end": "2018-05-10"}


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bt") / "extended.jsonl.gz"
    write_stream(simulate(EXTENDED), path, progress=False)
    return path


def read_rows(path):
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if ".csv" in path.name:
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        return [{**r, "score": float(r["score"]), "threshold": float(r["threshold"]),
                 "event_time_ms": int(r["event_time_ms"])} for r in rows]
    return [orjson.loads(line) for line in data.splitlines()]


class Recording(Backtest):
    """A backtest that keeps every decision its core made (to compare with the file)."""

    def __init__(self, config):
        super().__init__(config)
        self.made: list[dict] = []
        self.part_sizes: list[int] = []
        process = self.core.process

        def recorded(payloads):
            outcome = process(payloads)
            self.made += [{k: d[k] for k in COLUMNS} for d in outcome.decisions]
            if self.scores_out is not None:
                self.part_sizes.append(self.scores_out.part.stat().st_size)
            return outcome

        self.core.process = recorded


@pytest.mark.parametrize("name", ["scores.jsonl", "scores.csv.gz"])
def test_scores_out_has_one_row_per_decision_as_the_backtest_made_it(stream_path, tmp_path, name):
    out = tmp_path / name
    bt = Recording(BacktestConfig(scores_out=str(out), **WINDOW))
    result = bt.run(stream_path)
    rows = read_rows(out)
    assert rows == bt.made and len(rows) == result.metrics["n_events"]
    assert set(rows[0]) == set(COLUMNS)
    _, _, flagged, _ = bt.decided_arrays()
    assert sum(r["decision"] == "review" for r in rows) == int(flagged.sum()) > 0
    assert {r["model_version"] for r in rows} >= {result.metrics["model_version"]}
    assert not list(tmp_path.glob("*.part"))
    if name == "scores.jsonl":  # written as the batches are scored, not at the end
        assert bt.part_sizes[-1] > 0 and bt.part_sizes[len(bt.part_sizes) // 2] > 0


def test_scores_out_goes_into_a_folder_that_does_not_exist_yet(tmp_path):
    out = tmp_path / "var" / "runs" / "scores.csv"
    row = {"transaction_id": "t-1", "event_time_ms": 1, "score": 0.5, "threshold": 0.5,
           "decision": "approve", "model_version": "v1"}
    with ScoresWriter(out) as writer:
        assert writer.write([row]) == 1
    assert read_rows(out) == [{**row, "event_time_ms": 1}]


def test_a_failed_run_leaves_no_scores_file(stream_path, tmp_path):
    lines = gzip.decompress(stream_path.read_bytes()).splitlines()
    bad = json.loads(lines[5000])
    bad["amount"] = "lots"
    lines[5000] = json.dumps(bad).encode()
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "scores.jsonl"
    with pytest.raises(BacktestInputError):
        Backtest(BacktestConfig(scores_out=str(out), on_error="raise", **WINDOW)).run(source)
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_recall_is_reported_for_every_scenario_in_the_stream(stream_path, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "s.csv"
    argv = [str(stream_path), "--no-report", "--scores-out", str(out), "--test-start",
            WINDOW["test_start"], "--test-end", WINDOW["test_end"]]  # fmt: skip
    assert run(parser.parse_args([*argv, "--json"])) == 0
    metrics = json.loads(capsys.readouterr().out)
    by = metrics["by_scenario"]
    assert sorted(by) == ["1", "2", "3", "4", "5", "6"]
    for code, m in by.items():
        assert m["n"] > 0 and 0.0 <= m["recall"] <= 1.0, code
    assert len(read_rows(out)) == metrics["n_events"]
    assert run(parser.parse_args(argv)) == 0
    table = capsys.readouterr().out
    for name in ("card testing", "account takeover", "merchant bust-out", "compromised merchant"):
        assert name in table
    bad = [str(stream_path), "--no-report", "--scores-out", str(tmp_path / "nowhere" / "s.csv")]
    assert run(parser.parse_args(bad)) == 2


def test_only_the_scenarios_present_are_reported(tmp_path):
    path = tmp_path / "only1.jsonl"
    config = SimulationConfig(customers=100, terminals=200, days=20, radius=25.0, seed=4, scenarios=(1,))
    write_stream(simulate(config), path, progress=False)
    result = Backtest(BacktestConfig(test_start="2018-04-14", test_end="2018-04-20")).run(path)
    assert list(result.metrics["by_scenario"]) == ["1"]
