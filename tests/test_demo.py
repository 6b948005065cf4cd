"""``flagstream demo --duration S --json``: the whole product, headless, on the real broker.

The run's JSON object states what the live worker decided beside a backtest of the same
events with the same policy; this test runs a short demo on a small stream and checks
that object against the run's own ``scores`` topic and the policy's bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kafka_helpers import free_port

from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

pytestmark = pytest.mark.integration

FIGURES = {"events", "recall", "false_discovery_rate", "flags_per_day", "threshold_min",
           "threshold_max", "target_met", "automated_share", "automated_share_of_flags",
           "declined", "reviews_per_day", "reviews_busiest_day"}


def test_the_headless_demo_prints_live_and_backtest_figures_for_the_same_events(kafka_broker, tmp_path):
    stream = tmp_path / "stream.jsonl.gz"
    write_stream(simulate(SimulationConfig(customers=150, terminals=300, days=12, seed=5)), stream,
                 progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGSTREAM_")}
    env |= {"FLAGSTREAM_BROKER": kafka_broker, "FLAGSTREAM_DATA_DIR": str(tmp_path / "data"),
            "FLAGSTREAM_TOPIC_PREFIX": f"demo-test-{free_port()}."}
    run = subprocess.run(
        [sys.executable, "-m", "flagstream.cli", "demo", "--stream", str(stream), "--json",
         "--duration", "45", "--speedup", "43200", "--review-capacity", "40",
         "--port", str(free_port()), "--refresh", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])  # stdout is the JSON object alone
    assert {"events", "flagged", "review_capacity_per_day", "target_false_discovery_rate",
            "promotions", "rollbacks", "model_version", "live", "live_second_half",
            "backtest"} <= set(out)
    assert out["review_capacity_per_day"] == 40 and out["target_false_discovery_rate"] == 0.15
    assert out["events"] > 1_000 and out["model_version"] > 0
    for part in (out["live"], out["live_second_half"], out["backtest"]["all"],
                 out["backtest"]["second_half"]):
        assert FIGURES <= set(part)
        assert 0.02 <= part["threshold_min"] <= part["threshold_max"] <= 1.0
    live, backtest = out["live"], out["backtest"]["all"]
    # the backtest replays exactly the events the live run decided
    assert backtest["events"] == live["events"] and backtest["frauds"] == live["frauds"]
    assert out["live_second_half"]["events"] < live["events"]
    assert {"promotions", "rollbacks"} <= set(out["backtest"])
