"""SIGTERM stops a worker within its deadline, whatever it is doing (real broker, real workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from crash_loop_worker import FAULT
from fault_helpers import MixedStream, joined, produce_in_background, valid_records, wait_until_accounted
from kafka_helpers import ROOT, WorkerProcess, free_port

DEADLINE_S = 8.0
#: Time allowed on top of the deadline for the process to be reaped on a loaded machine.
SLACK_S = 4.0


def terminate(worker: WorkerProcess) -> float:
    """SIGTERM; seconds until the process was gone."""
    assert worker.proc is not None and worker.proc.poll() is None, "the worker is not running"
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(DEADLINE_S + 60)
    return time.monotonic() - started


@pytest.mark.integration
def test_a_healthy_worker_stops_on_sigterm(worker_factory):
    worker = worker_factory(role="all", shutdown_deadline_s=DEADLINE_S)
    took = terminate(worker)
    assert took < DEADLINE_S and worker.proc.returncode == 0, worker.log_tail(30)


@pytest.mark.integration
def test_a_worker_stops_within_the_deadline_mid_rebalance(worker_factory, settings, tmp_path):
    first = worker_factory(role="scorer", shutdown_deadline_s=DEADLINE_S)
    second = WorkerProcess(settings.with_(data_dir=str(tmp_path / "second"), web_port=free_port(),
                                          shutdown_deadline_s=DEADLINE_S),
                           tmp_path / "second.log", "scorer")
    joining = threading.Thread(target=second.start, kwargs={"timeout_s": 120})
    joining.start()
    try:
        first.wait_for_log(b"because it is rebalancing")  # the group is rebalancing now
        took = terminate(first)
        assert took < DEADLINE_S + SLACK_S, first.log_tail(40)
    finally:
        joining.join()
        second.stop()


@pytest.mark.integration
def test_a_worker_stops_within_the_deadline_when_the_broker_is_gone(worker_factory, kafka_broker):
    worker = worker_factory(role="all", shutdown_deadline_s=DEADLINE_S)
    port = kafka_broker.rsplit(":", 1)[1]
    env = {**os.environ, "KAFKA_PORT": port}
    script = str(ROOT / "scripts" / "kafka.sh")
    subprocess.run(["bash", script, "stop"], env=env, check=True, capture_output=True, timeout=120)
    try:
        time.sleep(3)  # the worker notices: its connections fail and it retries
        took = terminate(worker)
        print(f"stopped in {took:.1f}s, status {worker.proc.returncode}")
        assert took < DEADLINE_S + SLACK_S, worker.log_tail(40)
    finally:
        subprocess.run(["bash", script, "start"], env=env, check=True, capture_output=True,
                       timeout=300)


@pytest.mark.integration
def test_a_worker_in_a_crash_loop_stops_within_the_deadline_and_loses_nothing(settings, tmp_path):
    """The scorer agent fails on every step and Faust keeps restarting it; SIGTERM still ends
    the process within the deadline, and a healthy worker afterwards decides every record."""
    records = [(a.encode(), v) for a, v in valid_records(1_000, accounts=50)]
    stream = MixedStream(records, {f"v-{i}" for i in range(len(records))}, hostile=0)
    s = settings.with_(shutdown_deadline_s=DEADLINE_S)
    crashing = WorkerProcess(s, tmp_path / "crashing.log", "scorer",
                             program=(str(ROOT / "tests" / "crash_loop_worker.py"),))
    healthy = WorkerProcess(s, tmp_path / "healthy.log", "scorer")
    producer = produce_in_background(s, stream, rate=100)  # ~10 s: the loop keeps being fed
    try:
        crashing.start(timeout_s=120)
        deadline = time.monotonic() + 60
        while crashing.run_log().count(FAULT.encode()) < 3:  # failed, restarted, failed again...
            assert time.monotonic() < deadline, crashing.log_tail(60)
            time.sleep(0.2)
        took = terminate(crashing)
        print(f"crash loop: {crashing.run_log().count(FAULT.encode())} failures, "
              f"stopped in {took:.1f}s, status {crashing.proc.returncode}")
        assert took < DEADLINE_S + SLACK_S, crashing.log_tail(60)
        joined(producer)
        healthy.start(timeout_s=120)
        acc = wait_until_accounted(s, stream, 120)
        print(acc.line("after a crash loop"))
        assert acc.lost == [], f"{len(acc.lost)} never decided after the crash loop"
    finally:
        crashing.stop()
        healthy.stop()
