"""A worker killed with SIGKILL restarts with the state a replay gives and loses nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka_helpers import produce_json, read_json

from flagstream.codec import dumps
from flagstream.features.layout import FEATURE_NAMES
from flagstream.streams.core import ScoringCore

pytestmark = pytest.mark.integration

COUNT_1D = FEATURE_NAMES.index("account_count_1d")
COUNT_30D = FEATURE_NAMES.index("account_count_30d")


def stream(n: int, accounts: int = 40) -> list[dict]:
    return [
        {
            "transaction_id": f"k-{i:06d}",
            "account_id": f"c-{i % accounts}",
            "merchant_id": f"m-{i % 13}",
            "amount": 10.0 + (i * 7) % 90,
            "timestamp": 1_522_540_800_000 + i * 20_000,
        }
        for i in range(n)
    ]


def test_sigkill_mid_stream_then_restart_keeps_state_and_loses_nothing(settings, worker_factory):
    records = stream(6_000)
    worker = worker_factory()
    produce_json(settings, "transactions", records[:3_000], "account_id")
    deadline = time.monotonic() + 60
    while worker.metric("flagstream_events_in_total") < 1_000:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.05)
    worker.kill()  # mid-stream: some batches sent, some rows written, offsets not committed
    produce_json(settings, "transactions", records[3_000:], "account_id")
    worker_factory()  # same data dir and group: recovers tables, resumes from committed offsets

    decisions = read_json(settings, "scores", len(records), timeout_s=180, distinct_keys=True)
    by_id: dict[str, dict] = {}
    for d in decisions:
        by_id[d["transaction_id"]] = d  # a crash may repeat a decision; the last one stands
    assert set(by_id) == {r["transaction_id"] for r in records}, "no transaction may be lost"

    # the per-account state seen at scoring time equals an uninterrupted replay
    replay = ScoringCore()
    expected = replay.process([dumps(r) for r in records])
    want = {d["transaction_id"]: d["features"] for d in expected.decisions}
    for tx, decision in by_id.items():
        got = np.asarray(decision["features"])
        assert got[COUNT_1D] == want[tx][COUNT_1D], tx
        assert got[COUNT_30D] == want[tx][COUNT_30D], tx
    repeated = len(decisions) - len(by_id)
    print(f"decisions repeated after the crash: {repeated}")
