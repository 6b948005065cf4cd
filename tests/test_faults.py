"""The fault suite on the real broker: poison records, SIGKILLs, a broker outage, a rebalance.

After each fault every valid transaction has a decision on ``scores`` and every invalid
record a dead letter; repeats only for the same transaction id (same decision). The
accounting is printed (``pytest -s`` shows it). ``make faults`` runs the long variants
(``FAULTS_LONG=1``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest
from failing_step_worker import FAULT as STEP_FAULT
from fault_helpers import (
    MixedStream,
    account,
    joined,
    produce_in_background,
    produce_slowly,
    valid_records,
    wait_until_accounted,
)
from kafka_helpers import ROOT, WorkerProcess, committed_offsets, free_port

from flagstream.codec import dumps

LONG = os.environ.get("FAULTS_LONG") == "1"
VALID = 150_000 if LONG else 50_000
HOSTILE = 1_000 if LONG else 200
RATE = 5_000  # records a second: a 50,000 stream lasts ~10 s, so faults land mid-stream


def check(acc, stream: MixedStream, fault: str) -> None:
    print("\n" + acc.line(fault))
    assert acc.lost == [], f"{len(acc.lost)} valid transactions never decided, e.g. {acc.lost[:5]}"
    assert acc.dead_lettered == stream.hostile
    assert acc.conflicting_repeats == [], f"repeats differ from the first: {acc.conflict_examples}"
    assert acc.valid_dead_lettered == []


@pytest.mark.integration
def test_poison_between_valid_records_is_dead_lettered_and_the_partition_moves_on(
        settings, worker_factory):
    """Records nested 1,000 deep and records whose full dead letter would pass 1 MB, between
    valid ones on one partition: every valid one is decided, the committed offset passes
    them all, and no agent ever crashed or restarted."""
    valid = valid_records(300, accounts=1)  # one account: one partition
    account_id = valid[0][0]
    nested = b'{"transaction_id": "p-0", "extra": ' + b'{"a": ' * 1_000 + b"1" + b"}" * 1_001
    huge = dumps({"transaction_id": "p-1", "account_id": account_id, "blob": "x" * 700_000})
    records = []
    for i, (_, value) in enumerate(valid):
        records.append((account_id.encode(), value))
        if i % 50 == 25:
            records += [(account_id.encode(), nested), (account_id.encode(), huge)]
    stream = MixedStream(records, {f"v-{i}" for i in range(len(valid))}, hostile=len(records) - len(valid))
    worker = worker_factory(role="scorer")
    asyncio.run(produce_slowly(settings, records, 2_000))
    acc = wait_until_accounted(settings, stream, 120)
    check(acc, stream, "poison between valid records")
    assert acc.dead_letter_reasons == {"too_deep": 6, "too_large": 6}
    group = f"{settings.topic_prefix}{settings.app_id}-scorer"
    deadline = time.monotonic() + 60
    while sum(asyncio.run(committed_offsets(settings, group)).values()) < len(records):
        assert time.monotonic() < deadline, "the committed offset never passed the poison records"
        time.sleep(0.5)
    log = worker.run_log()
    assert b"Restarting" not in log and b"crashed" not in log.lower(), worker.log_tail(60)


@pytest.mark.integration
def test_sigkills_during_a_mixed_stream_lose_nothing(settings, worker_factory):
    """A worker SIGKILLed three times while a mixed stream arrives, once while recovering."""
    stream = MixedStream.build(VALID, HOSTILE)
    worker = worker_factory(role="scorer")
    producer = produce_in_background(settings, stream)
    for kill in range(3):
        worker.wait_for_log(b"generation id")  # consuming again
        time.sleep(1.5)
        worker.kill()
        worker.proc = None
        if kill == 1:  # killed again while recovering, before it has its partitions
            w = WorkerProcess(worker.settings, worker.log_path, "scorer").launch()
            w.wait_for_log(b"Starting...", 60)
            w.kill()
        worker.start(timeout_s=120)
    joined(producer)
    check(wait_until_accounted(settings, stream, 300), stream, "3 SIGKILLs, one while recovering")


@pytest.mark.integration
def test_the_broker_stopped_for_30_seconds_mid_stream(settings, worker_factory, kafka_broker):
    stream = MixedStream.build(VALID // 2, HOSTILE // 2, seed=5)
    worker_factory(role="scorer")
    half = len(stream.records) // 2
    asyncio.run(produce_slowly(settings, stream.records[:half], RATE))
    env = {**os.environ, "KAFKA_PORT": kafka_broker.rsplit(":", 1)[1]}
    script = str(ROOT / "scripts" / "kafka.sh")
    subprocess.run(["bash", script, "stop"], env=env, check=True, capture_output=True, timeout=120)
    try:
        time.sleep(30)
    finally:
        subprocess.run(["bash", script, "start"], env=env, check=True, capture_output=True,
                       timeout=300)
    asyncio.run(produce_slowly(settings, stream.records[half:], RATE))
    check(wait_until_accounted(settings, stream, 300), stream, "broker stopped 30 s")


@pytest.mark.integration
def test_two_scorers_one_killed_its_partitions_move_and_come_back(settings, worker_factory, tmp_path):
    stream = MixedStream.build(VALID, HOSTILE, seed=9)
    first = worker_factory(role="scorer")
    second = worker_factory(role="scorer", data_dir=str(tmp_path / "second"), web_port=free_port())
    producer = produce_in_background(settings, stream)
    time.sleep(3)
    second.kill()  # its partitions move to the first after the session timeout
    first.wait_for_log(b"generation id 3")
    second.start(timeout_s=120)  # and back when it returns
    first.wait_for_log(b"generation id 4")
    joined(producer)
    acc = wait_until_accounted(settings, stream, 300)
    check(acc, stream, "two scorers, one SIGKILLed and back")
    assert account(settings, stream).decided == len(stream.valid_ids)


@pytest.mark.integration
def test_a_step_whose_send_fails_stops_the_worker_and_nothing_is_lost(settings, tmp_path):
    """The scorer's fifth step fails as a refused send would, while records for the same 20
    accounts keep coming. The worker stops (going on in-process would move those accounts'
    rows past the failed records, and a replay would pass over them: lost); restarted, it
    reads from the last commit and every record is decided."""
    records = [(a.encode(), v) for a, v in valid_records(2_000, accounts=20)]
    stream = MixedStream(records, {f"v-{i}" for i in range(len(records))}, hostile=0)
    failing = WorkerProcess(settings, tmp_path / "failing.log", "scorer",
                            program=(str(ROOT / "tests" / "failing_step_worker.py"),))
    restarted = WorkerProcess(settings, tmp_path / "restarted.log", "scorer")
    try:
        failing.start(timeout_s=120)
        producer = produce_in_background(settings, stream, rate=200)  # ~10 s, in many steps
        failing.wait_for_log(STEP_FAULT.encode(), 60)
        assert failing.proc is not None
        status = failing.proc.wait(60)  # (stops by itself)
        assert status != 0, failing.log_tail(40)
        failing.proc = None
        joined(producer)
        restarted.start(timeout_s=120)
        check(wait_until_accounted(settings, stream, 120), stream, "a step failed, the worker restarted")
    finally:
        failing.stop()
        restarted.stop()
