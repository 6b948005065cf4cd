"""Kafka security settings: refused when they contradict, and the same on every client.

The worker's Faust app is checked through Faust's own conversion to aiokafka options
(what its producer and consumer are really given), so a configuration that Faust
would quietly turn into PLAINTEXT fails here.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka_helpers import ROOT

from flagstream.errors import ConfigurationError
from flagstream.perf.bench.naive_faust import build_app as build_naive_app
from flagstream.streams.agents import build_app
from flagstream.streams.config import Settings

PARTS = ["flagstream", "features", "scoring", "sinks", "streams", "simulation", "evaluation",
         "perf", "demo"]
#: Constructors of a Kafka connection; each must get the project's security options.
AIOKAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient",
                    "create_conn"}
OTHER_KAFKA_LIBRARIES = {"kafka", "confluent_kafka", "pykafka"}

SASL = {"FLAGSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FLAGSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "FLAGSTREAM_SASL_USERNAME": "alice", "FLAGSTREAM_SASL_PASSWORD": "pw"}


@pytest.mark.parametrize("env, named", [
    # the finding: SASL_SSL without a mechanism gave the Faust worker PLAINTEXT
    ({"FLAGSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "FLAGSTREAM_SASL_USERNAME": "alice",
      "FLAGSTREAM_SASL_PASSWORD": "pw"}, "FLAGSTREAM_SASL_MECHANISM"),
    ({**SASL, "FLAGSTREAM_SASL_USERNAME": ""}, "FLAGSTREAM_SASL_USERNAME"),
    ({**SASL, "FLAGSTREAM_SASL_PASSWORD": ""}, "FLAGSTREAM_SASL_PASSWORD"),
    ({"FLAGSTREAM_SASL_MECHANISM": "PLAIN"}, "FLAGSTREAM_SASL_MECHANISM"),
    ({"FLAGSTREAM_SECURITY_PROTOCOL": "ssl", "FLAGSTREAM_SASL_MECHANISM": "SCRAM-SHA-256"},
     "FLAGSTREAM_SASL_MECHANISM"),
    ({"FLAGSTREAM_SECURITY_PROTOCOL": "TLS"}, "FLAGSTREAM_SECURITY_PROTOCOL"),
    ({**SASL, "FLAGSTREAM_SASL_MECHANISM": "GSSAPI"}, "FLAGSTREAM_SASL_MECHANISM"),
    ({"FLAGSTREAM_SSL_CAFILE": __file__}, "FLAGSTREAM_SSL_CAFILE"),
    ({"FLAGSTREAM_SECURITY_PROTOCOL": "SSL", "FLAGSTREAM_SSL_CAFILE": "/nonexistent/ca.pem"},
     "FLAGSTREAM_SSL_CAFILE"),
    ({"FLAGSTREAM_SECURITY_PROTOCOL": "SSL", "FLAGSTREAM_SSL_KEYFILE": __file__}, "FLAGSTREAM_SSL_KEYFILE"),
    # PLAIN over SASL_PLAINTEXT puts the password on the wire: refused unless accepted
    ({**SASL, "FLAGSTREAM_SECURITY_PROTOCOL": "sasl_plaintext", "FLAGSTREAM_SASL_MECHANISM": "plain"},
     "FLAGSTREAM_SASL_PLAIN_CLEARTEXT"),
])
def test_a_contradiction_is_refused_at_start_naming_the_variable(env, named):
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def test_plain_in_the_clear_runs_only_when_accepted_and_then_warns(caplog):
    env = {**SASL, "FLAGSTREAM_SASL_MECHANISM": "PLAIN", "FLAGSTREAM_SASL_PLAIN_CLEARTEXT": "1"}
    with caplog.at_level(logging.WARNING):
        s = Settings.from_env(env)
    assert s.kafka_security()["sasl_mechanism"] == "PLAIN"
    assert "in the clear" in caplog.text and "pw" not in caplog.text


def _faust_options(app) -> dict:
    """What Faust's producer and consumer are given (its own conversion of the app's conf)."""
    return dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))


@pytest.mark.parametrize("protocol, mechanism, expected", [
    # the finding: lowercase sasl_ssl with PLAIN connected with SASL_PLAINTEXT (password in clear)
    ("sasl_ssl", "plain", "SASL_SSL"),
    ("SASL_SSL", "SCRAM-SHA-256", "SASL_SSL"),
    ("Sasl_Plaintext", "scram-sha-512", "SASL_PLAINTEXT"),
    ("ssl", "", "SSL"),
    (" plaintext ", "", "PLAINTEXT"),
])
def test_worker_bench_and_clients_connect_with_the_configured_protocol(tmp_path, protocol, mechanism,
                                                                       expected):
    env = {"FLAGSTREAM_SECURITY_PROTOCOL": protocol, "FLAGSTREAM_SASL_MECHANISM": mechanism,
           "FLAGSTREAM_DATA_DIR": str(tmp_path)}
    if mechanism:
        env.update({"FLAGSTREAM_SASL_USERNAME": "alice", "FLAGSTREAM_SASL_PASSWORD": "pw"})
    s = Settings.from_env(env)
    client = s.kafka_security()
    assert client["security_protocol"] == expected
    assert ("ssl_context" in client) == (expected in {"SSL", "SASL_SSL"})
    worker = _faust_options(build_app(s, "scorer").app)
    bench = _faust_options(build_naive_app(s, None))  # the bench's plain Faust contender
    for options in (worker, bench):
        assert options["security_protocol"] == expected
        if mechanism:
            assert options["sasl_mechanism"] == mechanism.upper()
            assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("alice", "pw")
        if expected in {"SSL", "SASL_SSL"}:
            assert options["ssl_context"] is not None


def _product_files() -> list[Path]:
    files = [p for part in PARTS for p in (ROOT / part).rglob("*.py")]
    return files + [ROOT / "tests" / "kafka_helpers.py"]


def _callee(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _spreads(node: ast.Call, method: str) -> bool:
    """Whether the call has ``**<something>.<method>()`` among its arguments."""
    return any(k.arg is None and isinstance(k.value, ast.Call) and _callee(k.value) == method
               for k in node.keywords)


def test_every_kafka_client_the_project_builds_gets_the_security_options():
    clients: list[str] = []
    missing: list[str] = []
    for path in _product_files():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                other = [n for n in names if n.split(".")[0] in OTHER_KAFKA_LIBRARIES]
                missing += [f"{where}:{node.lineno} imports {n}" for n in other]
            if not isinstance(node, ast.Call):
                continue
            name = _callee(node)
            if name in AIOKAFKA_CLIENTS:
                clients.append(f"{where}:{name}")
                if not _spreads(node, "kafka_security"):
                    missing.append(f"{where}:{node.lineno} {name} without **settings.kafka_security()")
            elif name == "App" and "faust" in ast.unparse(node.func):
                clients.append(f"{where}:faust.App")
                credentials = {k.arg: k.value for k in node.keywords}.get("broker_credentials")
                if not (isinstance(credentials, ast.Call) and _callee(credentials) == "faust_credentials"):
                    missing.append(f"{where}:{node.lineno} faust.App without "
                                   "broker_credentials=faust_credentials(...)")
            elif name == "Settings" and path.name != "config.py" and path.parent.name != "tests":
                # a Settings built field by field drops the operator's FLAGSTREAM_SECURITY_* settings
                missing.append(f"{where}:{node.lineno} Settings(...) instead of Settings.from_env(...)")
    assert not missing
    # the walk found the clients it is about (it cannot pass by finding nothing)
    found = {c.split(":")[0] for c in clients}
    assert {"streams/app.py", "streams/topics.py", "simulation/replay.py", "simulation/reviewers.py",
            "streams/registry_client.py", "streams/review_restore.py", "perf/bench/naive_faust.py",
            "perf/bench/workload.py", "streams/kafka_access.py"} <= found, found
