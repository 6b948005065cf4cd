"""docker-compose.yml stays equivalent to the local set-up the tests use."""

from __future__ import annotations

import re
from dataclasses import fields

import yaml
from kafka_helpers import ROOT

from flagstream.streams.config import Secret, Settings


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_the_same_kafka_release_as_the_local_script():
    script = (ROOT / "scripts" / "kafka.sh").read_text()
    local = re.search(r"KAFKA_VERSION=\$\{KAFKA_VERSION:-([0-9.]+)\}", script).group(1)
    image = compose()["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{local}"


def test_compose_worker_settings_are_real_settings_and_ports_stay_on_localhost():
    services = compose()["services"]
    known = {f"FLAGSTREAM_{f.name.upper()}" for f in fields(Settings)}
    assert set(services["worker"]["environment"]) <= known
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    assert {"kafka", "worker", "prometheus", "grafana"} <= set(services)


def test_the_image_copies_every_folder_the_package_is_built_from():
    import tomllib

    package_dirs = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                       ["package-dir"].values())
    copied = {m.group(1) for m in re.finditer(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), re.M)}
    assert package_dirs <= copied, f"Dockerfile misses {sorted(package_dirs - copied)}"


def test_compose_supplies_no_secret_of_its_own():
    """A default token in a compose file is a token everyone who read the file knows.

    A secret may only be passed through from the operator's environment, with no default.
    """
    secrets = {f"FLAGSTREAM_{f.name.upper()}" for f in fields(Settings)
               if isinstance(getattr(Settings(), f.name), Secret)}
    for name, service in compose()["services"].items():
        environment = service.get("environment") or {}
        for variable in secrets & set(environment):
            value = str(environment[variable])
            assert value in {f"${{{variable}}}", f"${{{variable}:-}}", f"${{{variable}-}}"}, (
                f"{name} gives {variable} a value of its own: {value!r}")
