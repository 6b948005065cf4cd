"""A broker that only speaks SASL/SCRAM: the worker and the CLI get in with the right
password, and every command stops at once, saying why, with a wrong one.

The broker is ``scripts/kafka.sh sasl`` on ``KAFKA_SASL_PORT`` (default 19094), formatted
afresh with a password made here, and stopped at the end of the module.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid

import pytest
from kafka_helpers import ROOT, WorkerProcess, free_port, read_json

from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream
from flagstream.streams.config import Secret, Settings

pytestmark = pytest.mark.integration

SASL_PORT = int(os.environ.get("KAFKA_SASL_PORT", "19094"))
USER = "flagstream-test"


def _script(*args: str, password: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAFKA_SASL_PORT": str(SASL_PORT), "KAFKA_SASL_USER": USER,
           "KAFKA_SASL_PASSWORD": password}
    return subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "sasl", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sasl_password():
    """A SASL-only broker whose one client user has a password made for this run."""
    password = secrets.token_urlsafe(12)
    _script("reset", password=password)
    started = _script("start", password=password)
    if started.returncode != 0:
        pytest.fail(f"could not start the SASL broker:\n{started.stdout}\n{started.stderr}")
    yield password
    _script("stop", password=password)


@pytest.fixture
def sasl_settings(sasl_password, tmp_path) -> Settings:
    return Settings.from_env(
        {}, broker=f"127.0.0.1:{SASL_PORT}", security_protocol="sasl_plaintext",
        sasl_mechanism="scram-sha-512", sasl_username=USER, sasl_password=Secret(sasl_password),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=2, data_dir=str(tmp_path / "data"),
        web_port=free_port(), review_token=Secret("test-token"),
    )


def _cli(env: dict[str, str], *argv: str, timeout_s: float = 120) -> tuple[subprocess.CompletedProcess,
                                                                           float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flagstream.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    return done, time.monotonic() - t0


def test_worker_replay_and_models_cli_work_over_sasl_scram(sasl_settings, tmp_path):
    stream = tmp_path / "stream.jsonl"
    write_stream(simulate(SimulationConfig(customers=20, terminals=40, days=1, radius=20.0)), stream,
                 progress=False)
    n = sum(1 for line in stream.read_bytes().splitlines() if line.strip())
    worker = WorkerProcess(sasl_settings, tmp_path / "worker.log")
    try:
        worker.start(timeout_s=240)
        replay, _ = _cli(worker.env(), "replay", str(stream), "--no-progress")
        assert replay.returncode == 0, replay.stderr
        decisions = read_json(sasl_settings, "scores", n, timeout_s=180)
        assert len(decisions) == n and {d["decision"] for d in decisions} <= {"approve", "review"}
        models, _ = _cli(worker.env(), "models", "list")
        assert models.returncode == 0, models.stderr
        assert b"accepted SASL_PLAINTEXT" in worker.run_log()
    finally:
        worker.stop()


@pytest.mark.parametrize("argv", [["worker"], ["models", "list"], ["replay", "/dev/null"]])
def test_a_wrong_password_stops_every_command_at_once_naming_it(sasl_settings, argv):
    wrong = sasl_settings.with_(sasl_password=Secret("not-" + sasl_settings.sasl_password.reveal()))
    env = WorkerProcess(wrong, ROOT / "unused.log").env()
    done, elapsed = _cli(env, *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refused the login of FLAGSTREAM_SASL_USERNAME='flagstream-test' with FLAGSTREAM_SASL_PASSWORD" \
        in done.stderr, done.stderr[-2000:]
    assert wrong.sasl_password.reveal() not in done.stderr + done.stdout
    assert elapsed < 60, f"took {elapsed:.1f}s"
