"""``flagstream replay`` against the real broker: counts, stripped truth, keys, errors, pacing."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys

import orjson
import pytest
from kafka_helpers import ROOT, read_topic

from flagstream.codec import loads
from flagstream.simulation.replay import ReplayStats, parse_bound, replay_file, replay_records
from flagstream.simulation.simulator import SimulationConfig, load_stream, simulate, write_stream
from flagstream.streams.schema import parse_timestamp_ms
from flagstream.streams.topics import partition_for

pytestmark = pytest.mark.integration

#: Where malformed lines are put (1-based line numbers in the written file).
BAD_LINES = {11: b"{not json", 52: b"[1, 2, 3]"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A small simulated stream: (its records, a gzip copy with two malformed lines)."""
    folder = tmp_path_factory.mktemp("replay")
    sim = simulate(SimulationConfig(customers=50, terminals=100, days=3, radius=20.0))
    plain = folder / "stream.jsonl"
    write_stream(sim, plain, progress=False)
    lines = plain.read_bytes().splitlines()
    for number in sorted(BAD_LINES):
        lines.insert(number - 1, BAD_LINES[number])
    damaged = folder / "damaged.jsonl.gz"
    damaged.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return load_stream(plain), damaged


async def test_replay_lands_every_valid_record_keyed_by_account_without_truth(settings, recorded):
    records, damaged = recorded
    stats = await replay_file(settings, damaged, on_error="skip")

    assert stats.sent == len(records) > 100
    assert stats.malformed == 2
    assert [number for number, _ in stats.malformed_lines] == sorted(BAD_LINES)
    assert "invalid JSON" in stats.malformed_lines[0][1]
    landed = await read_topic(settings, "transactions", len(records))
    assert len(landed) == len(records)
    values = [loads(r.value) for r in landed]
    for r, value in zip(landed, values, strict=True):
        assert "is_fraud" not in value and "fraud_scenario" not in value
        assert r.key == value["account_id"].encode()
        assert r.partition == partition_for(value["account_id"], settings.partitions)
    expected = {rec["transaction_id"]: rec for rec in records}
    assert {v["transaction_id"] for v in values} == set(expected)
    sample = values[0]
    assert sample == {k: v for k, v in expected[sample["transaction_id"]].items() if k not in
                      ("is_fraud", "fraud_scenario")}


def test_cli_stops_at_the_first_malformed_line_with_its_number(settings, recorded):
    _, damaged = recorded
    env = {**os.environ, "FLAGSTREAM_BROKER": settings.broker,
           "FLAGSTREAM_TOPIC_PREFIX": settings.topic_prefix}
    result = subprocess.run(
        [sys.executable, "-m", "flagstream.cli", "replay", str(damaged), "--on-error", "raise",
         "--json", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["sent"] == 10 and summary["malformed"] == 1
    assert summary["error"].startswith("line 11:")
    assert "line 11" in result.stderr
    assert {"sent", "malformed", "seconds", "events_per_s"} <= set(summary)


async def test_limit_and_date_window_select_records_and_leave_input_untouched(settings, recorded):
    records, _ = recorded
    start, end = parse_bound("2018-04-02"), parse_bound("2018-04-02", end=True)
    in_window = [r for r in records if start <= parse_timestamp_ms(r["timestamp"]) < end]
    stats = await replay_records(settings, records, start_ms=start, end_ms=end, limit=25)

    assert stats.sent == 25 and stats.first_event.startswith("2018-04-02")
    assert stats.filtered == records.index(in_window[0])  # day 1 skipped, stopped in day 2
    landed = await read_topic(settings, "transactions", 25)
    assert sorted(loads(r.value)["transaction_id"] for r in landed) == sorted(
        r["transaction_id"] for r in in_window[:25]
    )
    assert all("is_fraud" in r for r in records), "the caller's records must not be mutated"


def _minutely(n: int) -> list[dict]:
    return [
        {"transaction_id": f"p-{i}", "account_id": f"c-{i % 7}", "merchant_id": "m-1",
         "amount": 10.0, "timestamp": f"2018-04-01T10:{i:02d}:00Z", "is_fraud": 0}
        for i in range(n)
    ]


async def test_rate_and_speedup_pace_the_replay(settings):
    records = _minutely(40)
    by_rate = await replay_records(settings, records, rate=80)
    assert by_rate.sent == 40
    assert by_rate.seconds >= 0.8 * (40 - 1) / 80  # the first record goes at once

    # 39 minutes of event time at one hour per second: at least 0.65 s
    by_time = await replay_records(settings, records, speedup=3600)
    assert by_time.sent == 40
    assert by_time.seconds >= 0.8 * 39 * 60 / 3600
    assert len(await read_topic(settings, "transactions", 80)) == 80


async def test_stop_event_ends_a_paced_replay_early(settings):
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    stats = await replay_records(settings, _minutely(60), rate=20, stop_event=stop)
    assert isinstance(stats, ReplayStats)
    assert 0 < stats.sent < 60
    assert len(await read_topic(settings, "transactions", stats.sent)) == stats.sent
