"""Settings: one typed object read from ``FLAGSTREAM_*`` environment variables.

Secrets are wrapped in :class:`Secret` so they never show up in ``repr`` or logs.

>>> s = Settings.from_env({"FLAGSTREAM_BROKER": "127.0.0.1:9999", "FLAGSTREAM_SASL_PASSWORD": "pw"})
>>> s.broker
'127.0.0.1:9999'
>>> s.sasl_password
Secret('***')
>>> s.topic("scores")
'scores'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class Secret(str):
    """A string whose ``repr`` is masked; ``str(secret)`` or ``secret.reveal()`` gives the value."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class Settings:
    """Everything a worker, a tool or a test needs to know, with safe defaults."""

    #: Kafka bootstrap servers, ``host:port[,host:port]``.
    broker: str = "127.0.0.1:19092"
    #: Faust application id (consumer group and internal topic prefix).
    app_id: str = "flagstream"
    #: Prefix put in front of every topic name (lets tests share one broker).
    topic_prefix: str = ""
    #: Partitions of each topic created on start.
    partitions: int = 4
    #: Where Faust keeps its RocksDB tables.
    data_dir: str = "var/flagstream"
    #: Web server (metrics, review page); bound to localhost unless configured.
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Token for the review page and its API.
    review_token: Secret = field(default_factory=lambda: Secret(""))
    #: Largest accepted transaction record, bytes.
    max_record_bytes: int = 16_384
    #: Deepest accepted JSON nesting.
    max_nesting: int = 8
    #: Hot path batch size and the longest wait for a batch to fill, seconds.
    batch_size: int = 2_000
    batch_within: float = 0.01
    #: How long the group waits for a silent worker before moving its partitions, seconds.
    session_timeout_s: float = 10.0
    #: Decision threshold used until the operating point has feedback to follow.
    threshold: float = 0.5
    #: The operating point: the fraud recall to hold (the threshold follows it), or,
    #: when review_capacity_per_day > 0, the number of flags reviewers can work a day.
    target_recall: float = 0.8
    review_capacity_per_day: float = 0.0
    #: How long feature vectors are kept for joining feedback, seconds (event time).
    feature_retention_s: float = 35 * 86_400
    #: The champion model's learning rate.
    learning_rate: float = 0.005
    #: Kafka security, passed through to every client.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``FLAGSTREAM_<FIELD>`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"FLAGSTREAM_{f.name.upper()}")
            if raw is None:
                continue
            default = getattr(cls(), f.name)
            if isinstance(default, Secret):
                values[f.name] = Secret(raw)
            elif isinstance(default, bool):
                values[f.name] = raw.lower() in {"1", "true", "yes"}
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def topic(self, name: str) -> str:
        """The full name of one of the project's topics."""
        return f"{self.topic_prefix}{name}"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (SASL/SSL passed through)."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.reveal()
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
            )
        return kwargs
