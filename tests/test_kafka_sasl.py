"""A broker that only speaks SASL/SCRAM: the worker and the CLI get in with the right
password, and every command stops at once, saying why, with a wrong one; over TLS,
with a CA made here, a client that does not trust that CA stops the same way.

The broker is ``scripts/kafka.sh sasl`` on ``KAFKA_SASL_PORT`` (default 19094; SASL_SSL
on ``KAFKA_SASL_TLS_PORT``, default +2), formatted afresh with a password and a
certificate made here, and stopped at the end of the module.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka_helpers import ROOT, WorkerProcess, free_port, produce_json, read_json

from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream
from flagstream.streams.config import Secret, Settings
from flagstream.streams.topics import create_topics

pytestmark = pytest.mark.integration

SASL_PORT = int(os.environ.get("KAFKA_SASL_PORT", "19094"))
TLS_PORT = int(os.environ.get("KAFKA_SASL_TLS_PORT", str(SASL_PORT + 2)))
USER = "flagstream-test"
Ran = subprocess.CompletedProcess


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca_and_broker_keystore(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA and a broker certificate for 127.0.0.1 that it signed: (CA, keystore)."""
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "broker.key", "broker.csr",
                                                       "broker.pem"))
    leaf_ext = folder / "leaf.ext"
    leaf_ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n"
                        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=flagstream test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", leaf_ext)
    keystore = folder / "broker-keystore.pem"
    keystore.write_bytes(key.read_bytes() + cert.read_bytes())
    return ca, keystore


def _script(*args: str, password: str, keystore: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAFKA_SASL_PORT": str(SASL_PORT), "KAFKA_SASL_TLS_PORT": str(TLS_PORT),
           "KAFKA_SASL_USER": USER, "KAFKA_SASL_PASSWORD": password, "KAFKA_TLS_KEYSTORE": str(keystore)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "sasl", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    """A SASL-only broker (plain and TLS listeners) whose one client user has a password
    made for this run; yields (password, the CA that signed the broker's certificate)."""
    password = secrets.token_urlsafe(12)
    ca, keystore = make_ca_and_broker_keystore(tmp_path_factory.mktemp("tls"))
    _script("reset", password=password, keystore=keystore)
    started = _script("start", password=password, keystore=keystore)
    if started.returncode != 0:
        pytest.fail(f"could not start the SASL broker:\n{started.stdout}\n{started.stderr}")
    yield password, ca
    _script("stop", password=password, keystore=keystore)


@pytest.fixture
def sasl_password(sasl_broker) -> str:
    return sasl_broker[0]


@pytest.fixture
def sasl_settings(sasl_password, tmp_path) -> Settings:
    return Settings.from_env(
        {}, broker=f"127.0.0.1:{SASL_PORT}", security_protocol="sasl_plaintext",
        sasl_mechanism="scram-sha-512", sasl_username=USER, sasl_password=Secret(sasl_password),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=2, data_dir=str(tmp_path / "data"),
        web_port=free_port(), review_token=Secret("test-review-token-0001"),
    )


def _cli(env: dict[str, str], *argv: str, timeout_s: float = 120) -> tuple[Ran, float]:
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


def _tls(settings: Settings, **changes) -> Settings:
    return settings.with_(broker=f"127.0.0.1:{TLS_PORT}", security_protocol="SASL_SSL", **changes)


def test_sasl_over_tls_with_the_ca_made_here(sasl_broker, sasl_settings, tmp_path):
    _, ca = sasl_broker
    # no learner ran here: the CLI signs with a configured key
    tls = _tls(sasl_settings, ssl_cafile=str(ca), model_hmac_key=Secret("tls-test-model-signing-key"))
    asyncio.run(create_topics(tls))  # the admin client, over TLS
    records = [{"transaction_id": f"tx{i}", "n": i} for i in range(20)]
    produce_json(tls, "transactions", records, "transaction_id")
    assert sorted(r["n"] for r in read_json(tls, "transactions", 20)) == list(range(20))
    models, _ = _cli(WorkerProcess(tls, tmp_path / "unused.log").env(), "models", "list")
    assert models.returncode == 0, models.stderr
    assert "accepted SASL_SSL" in models.stderr


def test_a_broker_certificate_not_signed_by_the_trusted_ca_stops_the_command(sasl_settings, tmp_path):
    other_ca, _ = make_ca_and_broker_keystore(tmp_path)  # a CA that did not sign the broker's
    for tls in (_tls(sasl_settings), _tls(sasl_settings, ssl_cafile=str(other_ca))):
        done, elapsed = _cli(WorkerProcess(tls, tmp_path / "unused.log").env(), "models", "list")
        assert done.returncode == 2, done.stderr[-2000:]
        assert "is not trusted by FLAGSTREAM_SSL_CAFILE" in done.stderr, done.stderr[-2000:]
        assert elapsed < 60, f"took {elapsed:.1f}s"

