"""Fixtures: a real Kafka broker (started by scripts/kafka.sh), per-test topics, workers."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from kafka_helpers import ROOT, WorkerProcess, free_port

from flagstream.streams.config import Secret, Settings

BROKER_PORT = int(os.environ.get("KAFKA_PORT", "19092"))


@pytest.fixture(scope="session")
def kafka_broker() -> str:
    """A running broker on loopback. Started here if needed; a failure fails the test."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "kafka.sh"), "start"],
        env={**os.environ, "KAFKA_PORT": str(BROKER_PORT)},
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"could not start Kafka:\n{result.stdout}\n{result.stderr}")
    return f"127.0.0.1:{BROKER_PORT}"


@pytest.fixture
def settings(kafka_broker, tmp_path) -> Settings:
    """Settings with a fresh topic prefix, data dir and web port for one test."""
    return Settings(
        broker=kafka_broker,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=4,
        data_dir=str(tmp_path / "data"),
        web_port=free_port(),
        review_token=Secret("test-review-token-0001"),
        threshold=0.5,
    )


@pytest.fixture
def worker_factory(settings, tmp_path, request):
    """Start worker processes; their logs are printed when the test fails."""
    workers: list[WorkerProcess] = []

    def start(role: str = "all", **overrides) -> WorkerProcess:
        s = settings.with_(**overrides) if overrides else settings
        w = WorkerProcess(s, tmp_path / f"worker-{len(workers)}.log", role)
        workers.append(w)
        return w.start()

    yield start
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for w in workers:
        w.stop()
        if failed:
            print(f"\n----- {w.log_path} -----\n{w.log_tail(120)}")


def pytest_collection_modifyitems(config, items):
    """A test that needs the broker (``kafka_broker``, through ``settings`` or any fixture) must
    be marked ``integration``: ``make test-unit`` deselects those and must never start Kafka."""
    unmarked = [item.nodeid for item in items if "kafka_broker" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("tests that use the broker without the integration mark: "
                                + ", ".join(unmarked))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
