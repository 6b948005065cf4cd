"""One settings object: every FLAGSTREAM_* variable, typed, validated, secrets never shown."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from dataclasses import fields

import pytest
from kafka_helpers import ROOT

from flagstream.errors import ConfigurationError
from flagstream.streams.config import Secret, Settings


def test_every_field_is_read_from_its_variable():
    env = {"FLAGSTREAM_PARTITIONS": "8", "FLAGSTREAM_FAUST_CHUNKS": "off",
           "FLAGSTREAM_COMMIT_INTERVAL_S": "0.5", "FLAGSTREAM_GATE_METRIC": "brier",
           "FLAGSTREAM_MODEL_HMAC_KEY": "k3y", "FLAGSTREAM_CACHE": "/tmp/not-a-setting"}
    s = Settings.from_env(env)
    assert (s.partitions, s.faust_chunks, s.commit_interval_s) == (8, False, 0.5)
    assert s.gate().metric == "brier" and s.hmac_key() == b"k3y"


@pytest.mark.parametrize("env, named", [
    ({"FLAGSTREAM_PARTITONS": "8"}, "FLAGSTREAM_PARTITONS"),
    ({"FLAGSTREAM_PARTITIONS": "eight"}, "FLAGSTREAM_PARTITIONS"),
    ({"FLAGSTREAM_FAUST_CHUNKS": "maybe"}, "FLAGSTREAM_FAUST_CHUNKS"),
])
def test_a_wrong_variable_is_an_error_that_names_it(env, named):
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def test_secrets_never_show_in_str_repr_format_logs_or_config(caplog):
    s = Settings.from_env({"FLAGSTREAM_SASL_PASSWORD": "hunter2",
                           "FLAGSTREAM_REVIEW_TOKEN": "tok3n-tok3n-tok3n",
                           "FLAGSTREAM_MODEL_HMAC_KEY": "k3y"})
    secrets = ("hunter2", "tok3n-tok3n-tok3n", "k3y")
    with caplog.at_level(logging.INFO):
        logging.getLogger("probe").info("settings %s %r", s, s.review_token)
        logging.getLogger("probe").info(f"token {s.review_token} {s.sasl_password!s}")
    shown = [str(s), repr(s), f"{s.sasl_password:>10}", f"{s.model_hmac_key}", caplog.text,
             str(s.describe())]
    assert not [t for t in shown if any(x in t for x in secrets)]
    assert s.sasl_password.reveal() == "hunter2" and isinstance(s.sasl_password, Secret)


def test_flagstream_config_prints_every_setting_masked():
    env = {"PATH": "/usr/bin:/bin", "FLAGSTREAM_SASL_PASSWORD": "hunter2", "FLAGSTREAM_PARTITIONS": "6"}
    out = subprocess.run([sys.executable, "-m", "flagstream", "config"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert set(lines) == {f"FLAGSTREAM_{f.name.upper()}" for f in fields(Settings)}
    assert lines["FLAGSTREAM_PARTITIONS"] == "6" and lines["FLAGSTREAM_SASL_PASSWORD"] == "***"
    assert "hunter2" not in out
    bad = subprocess.run([sys.executable, "-m", "flagstream", "config"],
                         env={**env, "FLAGSTREAM_PARTITONS": "3"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "FLAGSTREAM_PARTITONS is not a setting" in bad.stderr


def environment_reads(path) -> list[str]:
    """``os.environ.get("FLAGSTREAM_…")``, ``os.environ["FLAGSTREAM_…"]``, ``os.getenv("FLAGSTREAM_…")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        literal = None
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in {"get", "getenv", "pop", "setdefault"}:
                literal = node.args[0].value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            if isinstance(node.ctx, ast.Load):
                literal = node.slice.value
        if isinstance(literal, str) and literal.startswith("FLAGSTREAM_"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {literal}")
    return found


def test_no_module_reads_a_flagstream_variable_but_the_settings():
    folders = ("flagstream", "features", "scoring", "sinks", "streams", "simulation", "evaluation",
               "perf", "demo")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    reads = [r for p in files if p != ROOT / "streams" / "config.py" for r in environment_reads(p)]
    assert reads == []
