"""Settings: one typed object for every ``FLAGSTREAM_*`` environment variable.

Every setting a worker, a tool or a test reads is a field here, documented where it
is defined; nothing else in flagstream reads ``FLAGSTREAM_*`` variables. Secrets are
:class:`Secret` values: ``str()``, ``repr()``, f-strings, logs and ``flagstream
config`` show ``***``; only :meth:`Secret.reveal` gives the value.

>>> s = Settings.from_env({"FLAGSTREAM_BROKER": "127.0.0.1:9999", "FLAGSTREAM_SASL_PASSWORD": "pw"})
>>> s.broker, s.sasl_password, f"{s.sasl_password}", s.sasl_password.reveal()
('127.0.0.1:9999', Secret('***'), '***', 'pw')
>>> s.topic("scores")
'scores'
>>> Settings.from_env({"FLAGSTREAM_PARTITONS": "8"})
Traceback (most recent call last):
...
flagstream.errors.ConfigurationError: FLAGSTREAM_PARTITONS is not a setting (see `flagstream config`)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flagstream.errors import ConfigurationError
from flagstream.scoring.challengers import DEFAULT_CHALLENGERS
from flagstream.scoring.gate import GateConfig
from flagstream.scoring.handle import DEFAULT_KIND, LINEAGES, new_model
from flagstream.scoring.model_key import KEY_FILE, ModelKey
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.scoring.record_checks import MAX_WAITING
from flagstream.streams import kafka_security

PREFIX = "FLAGSTREAM_"
#: Variables with the prefix that are not settings (read by ``scripts/kafka.sh``).
NOT_SETTINGS = frozenset({"FLAGSTREAM_CACHE"})
#: The shortest review token accepted from configuration.
MIN_TOKEN_LENGTH = 16


class Secret:
    """A value that never shows itself: ``str``, ``repr`` and ``format`` give ``***``.

    >>> token = Secret("s3cret")
    >>> str(token), repr(token), f"{token}", "%s" % token, token.reveal(), bool(Secret(""))
    ('***', "Secret('***')", '***', '***', 's3cret', False)
    """

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = str(value)

    def reveal(self) -> str:
        """The value itself (pass it to the client that needs it, nowhere else)."""
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret('***')"

    def __format__(self, spec: str) -> str:
        return format("***", spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything a worker, a tool or a test needs to know, with safe defaults."""

    # --- Kafka ---------------------------------------------------------------------------
    #: Kafka bootstrap servers, ``host:port[,host:port]``.
    broker: str = "127.0.0.1:19092"
    #: Faust application id (consumer group and internal topic prefix).
    app_id: str = "flagstream"
    #: Prefix put in front of every topic name (lets tests share one broker).
    topic_prefix: str = ""
    #: Partitions of each topic created on start.
    partitions: int = 4
    #: How long the group waits for a silent worker before moving its partitions, seconds.
    session_timeout_s: float = 10.0
    #: How often the worker commits the offsets of processed events, seconds.
    commit_interval_s: float = 2.8
    #: Copies of every topic (1 on one broker, 3 on a real cluster) and how many of them
    #: must have a write before it counts (``min.insync.replicas``).
    replication_factor: int = 1
    min_insync_replicas: int = 1
    #: Producers wait for every in-sync replica (``acks=all``); idempotent ones also never
    #: duplicate or reorder a record when they retry.
    producer_idempotence: bool = True
    #: Kafka security, applied to every client: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``
    #: or ``SASL_SSL``; SASL mechanism ``PLAIN`` or ``SCRAM-SHA-256``/``-512``. Any case;
    #: contradictions are refused at start (:mod:`flagstream.streams.kafka_security`).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=Secret)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: Accept SASL ``PLAIN`` over ``SASL_PLAINTEXT`` (the password crosses the network in
    #: the clear; logged at WARNING). Off: that combination is a configuration error.
    sasl_plain_cleartext: bool = False

    # --- the worker ------------------------------------------------------------------------
    #: Where Faust keeps its RocksDB tables and the learner its snapshots.
    data_dir: str = "var/flagstream"
    #: Web server (metrics, review page); bound to localhost unless configured.
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: A reviewer token given by configuration: it is the reviewer ``admin``'s (scripts, a
    #: first sign-in); give every person their own (``flagstream review-tokens add NAME``).
    #: At least 16 characters. Unset while no reviewer has a token, the worker makes one
    #: for ``admin`` at its first start and prints it once on the console (never logged).
    review_token: Secret = field(default_factory=Secret)
    #: A review session ends this long after sign-in however busy it is (idle: after 8 h).
    review_session_lifetime_s: float = 12 * 3_600
    #: Mark the review page's cookies ``Secure`` although the worker speaks plain HTTP: set
    #: it behind a proxy that terminates TLS (browsers then send them over HTTPS only).
    web_secure_cookies: bool = False
    # --- the scoring API (``flagstream api``, :mod:`flagstream.streams.api_service`) -------
    #: Serve the API on every scoring worker's web server (``FLAGSTREAM_WEB_PORT``) instead
    #: of (or beside) ``flagstream api``: calls are decided by the worker holding the account,
    #: without reading answers back (:mod:`flagstream.streams.api_worker`).
    worker_api: bool = False
    #: There, API steps start at least this far apart (ms): calls that arrive meanwhile are
    #: staged together (fewer, larger steps under load; an idle worker stages a call at once).
    api_step_gap_ms: float = 4.0
    #: Where the API listens; bound to localhost unless configured.
    api_host: str = "127.0.0.1"
    api_port: int = 6070
    #: The key every API call sends as ``Authorization: Bearer <key>`` (at least 16
    #: characters). Unset, ``flagstream api`` refuses to start.
    api_key: Secret = field(default_factory=Secret)
    #: How long a call waits for its decision before the fallback answers, milliseconds.
    api_deadline_ms: int = 250
    #: The fallback decision (``review`` or ``approve``): returned with ``"fallback": true``
    #: and recorded on ``scores`` when no decision arrives before the deadline.
    api_fallback: str = "review"
    #: Largest request body, bytes (413 beyond), and most transactions in one batch call.
    api_max_body_bytes: int = 1_048_576
    api_max_batch: int = 500
    #: Decisions remembered for retries (each transaction id's first record on ``scores``).
    api_answers: int = 100_000
    #: At start the API reads ``scores`` from this far back, so that retries of recent
    #: transactions get their first answer after a restart, seconds.
    api_lookback_s: float = 300.0
    #: Largest accepted transaction record, bytes.
    max_record_bytes: int = 16_384
    #: Deepest accepted JSON nesting.
    max_nesting: int = 8
    #: A transaction stamped further than this after the worker's clock is refused
    #: (``timestamp_in_future``), seconds (at most an hour): producers' clocks differ a
    #: little from it.
    max_event_lead_s: float = 300.0
    #: Hot path batch size and the longest wait for a batch to fill, seconds.
    batch_size: int = 2_000
    batch_within: float = 0.01
    #: A stop signal (SIGTERM, SIGINT) ends the worker within this many seconds, whatever
    #: it is doing; what was not durable by then is replayed after a restart.
    shutdown_deadline_s: float = 30.0
    #: Longest time the broker may hold one of the worker's fetch requests while none of
    #: its partitions has new records, ms (Faust fixes 1,500). A request can hold only
    #: idle partitions while the busy ones wait for it to return: the stream path's
    #: 1.5–2 s latency tail (see :func:`flagstream.streams.compat.internals.fetch_max_wait`).
    #: The scoring API reads its answers with the same wait.
    fetch_max_wait_ms: int = 20
    #: Hand the scorer whole fetched chunks (:mod:`flagstream.streams.compat.faust_consumer`);
    #: off, it takes events one by one through Faust's own ``noack_take``.
    faust_chunks: bool = True
    #: Run Faust's Kafka consumer on the worker's event loop instead of a thread of its
    #: own (:mod:`flagstream.streams.compat.in_loop_consumer`); off, Faust's thread.
    consumer_in_loop: bool = True

    # --- decisions -------------------------------------------------------------------------
    #: Decision threshold used until the operating point has feedback to follow.
    threshold: float = 0.5
    #: The operating point's target: at most this share of flags legitimate (false-discovery
    #: rate), catching as much fraud as possible; 0 to follow target_recall instead.
    target_false_discovery_rate: float = 0.15
    #: With target_false_discovery_rate 0: the share of fraud to catch, with fewest flags.
    target_recall: float = 0.8
    #: Flags people can review per day of event time: a hard limit (0: no limit).
    review_capacity_per_day: float = 1_000.0
    #: The threshold never goes below the floor nor above the ceiling (only the review
    #: capacity can push it above the ceiling).
    threshold_floor: float = 0.02
    threshold_ceiling: float = 0.98
    #: Recall counts transactions at least this old (event seconds): chargebacks take time.
    label_maturity_s: float = 7 * 86_400.0
    #: Decline flags automatically (nobody reviews them) where the operating point can show
    #: at most this share of them legitimate (upper bound); 0: every flag goes to a person.
    auto_decline_false_discovery_rate: float = 0.0
    #: Population stability index (of the score or of any feature, last day against the
    #: fortnight before) above which the model-health view and flagstream_drift_alert alarm.
    drift_psi_alert: float = 0.2

    # --- learning and the model lifecycle ----------------------------------------------------
    #: How long feature vectors are kept for joining feedback, seconds (event time).
    feature_retention_s: float = 35 * 86_400
    #: Labels learned per clock hour from one (source, reviewer), and from one source
    #: (review, chargeback, auto); past either, a label goes to feedback.dlq as rate_limited.
    feedback_labels_per_reviewer_hour: int = 10_000
    feedback_labels_per_source_hour: int = 50_000
    #: Labels that came before their decision was recorded wait at most this long (seconds,
    #: while the learner runs) and at most this many at once (0: none wait, they are
    #: unknown_transaction at once); then feedback.dlq as decision_never_arrived or
    #: feedback_wait_full. 300 s covers a learner restart and a burst of lag on scores;
    #: 10,000 is 30 s of labels at the demo's full rate, ~50 KB in each learner snapshot.
    feedback_wait_s: float = 300.0
    feedback_wait_max: int = 10_000
    #: The model a worker starts with when no version is published yet: ``binned`` (a
    #: logistic regression over binned inputs, non-linear) or ``linear``.
    model: str = DEFAULT_KIND
    #: The linear model's learning rate (SGD step).
    learning_rate: float = 0.005
    #: The binned model's learning rate (AdaGrad's base step).
    binned_learning_rate: float = 0.2
    #: Shadow challengers: ``name:param=value,...;name:...`` (empty: none).
    challengers: str = DEFAULT_CHALLENGERS
    #: The gate: labels a challenger needs, the relative margin it must win by, the loss.
    gate_min_labels: int = GateConfig.min_labels
    gate_margin: float = GateConfig.margin
    #: Fraud labels a challenger needs, and labels since the last change before another.
    gate_min_frauds: int = GateConfig.min_frauds
    gate_cooldown_labels: int = GateConfig.cooldown_labels
    gate_metric: str = GateConfig.metric
    #: ADWIN's confidence parameter for the champion's error stream (rollback on drift).
    drift_delta: float = GateConfig.drift_delta
    #: Seconds between two publications of the models the learner trains.
    model_publish_interval_s: float = 1.0
    #: Version records kept per lineage on the ``models`` topic.
    model_keep_versions: int = 200
    #: HMAC key that signs model records and snapshots (empty: the key file the learner
    #: generates in ``data_dir``; set it on every host when roles do not share a disk).
    model_hmac_key: Secret = field(default_factory=Secret)
    #: Run with unsigned model records and snapshots (SHA-256 checksums only): anyone who
    #: can write to the ``models`` topic can then replace the model. Logged at every start.
    allow_unsigned_models: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``FLAGSTREAM_<FIELD>`` variables; keyword overrides win.

        An unknown ``FLAGSTREAM_*`` variable or a value of the wrong type is an error
        that names the variable.
        """
        env = os.environ if environ is None else environ
        known = {f"{PREFIX}{f.name.upper()}": f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.startswith(PREFIX) or name in NOT_SETTINGS:
                continue
            f = known.get(name)
            if f is None:
                raise ConfigurationError(f"{name} is not a setting (see `flagstream config`)")
            values[f.name] = _parse(name, raw, getattr(cls(), f.name))
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ConfigurationError("FLAGSTREAM_PARTITIONS must be at least 1")
        if self.replication_factor < 1:
            raise ConfigurationError("FLAGSTREAM_REPLICATION_FACTOR must be at least 1")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ConfigurationError(
                "FLAGSTREAM_MIN_INSYNC_REPLICAS must be between 1 and FLAGSTREAM_REPLICATION_FACTOR"
            )
        if self.shutdown_deadline_s <= 0:
            raise ConfigurationError("FLAGSTREAM_SHUTDOWN_DEADLINE_S must be positive")
        if not 0 <= self.max_event_lead_s <= 3_600:  # (the learner allows decisions 2 h ahead)
            raise ConfigurationError("FLAGSTREAM_MAX_EVENT_LEAD_S must be in 0..3600")
        if self.allow_unsigned_models and self.model_hmac_key:
            raise ConfigurationError("FLAGSTREAM_ALLOW_UNSIGNED_MODELS and FLAGSTREAM_MODEL_HMAC_KEY "
                                     "are both set: choose one")
        object.__setattr__(self, "security_protocol", kafka_security.normalise(self.security_protocol))
        object.__setattr__(self, "sasl_mechanism", kafka_security.normalise(self.sasl_mechanism))
        kafka_security.check(self)
        if self.review_token and len(self.review_token.reveal()) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(f"FLAGSTREAM_REVIEW_TOKEN must be at least {MIN_TOKEN_LENGTH} "
                                     "characters (or unset: reviewers get their own tokens)")
        if self.api_key and len(self.api_key.reveal()) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(f"FLAGSTREAM_API_KEY must be at least {MIN_TOKEN_LENGTH} characters")
        if not 0 <= self.api_step_gap_ms <= 1_000:
            raise ConfigurationError("FLAGSTREAM_API_STEP_GAP_MS must be in 0..1000")
        if self.worker_api and not self.api_key:
            raise ConfigurationError("FLAGSTREAM_WORKER_API needs FLAGSTREAM_API_KEY")
        if self.api_fallback not in ("review", "approve"):
            raise ConfigurationError("FLAGSTREAM_API_FALLBACK must be review or approve")
        if self.api_deadline_ms <= 0 or self.api_max_batch < 1 or self.api_answers < 1:
            raise ConfigurationError("FLAGSTREAM_API_DEADLINE_MS, FLAGSTREAM_API_MAX_BATCH and "
                                     "FLAGSTREAM_API_ANSWERS must be positive")
        if not 0 <= self.fetch_max_wait_ms <= 1_500:
            raise ConfigurationError("FLAGSTREAM_FETCH_MAX_WAIT_MS must be in 0..1500")
        if self.review_session_lifetime_s <= 0:
            raise ConfigurationError("FLAGSTREAM_REVIEW_SESSION_LIFETIME_S must be positive")
        self._check_operating_point()
        if self.model not in LINEAGES:
            raise ConfigurationError(f"FLAGSTREAM_MODEL must be one of {sorted(LINEAGES)}")
        if self.feedback_wait_s <= 0 or not 0 <= self.feedback_wait_max <= MAX_WAITING:
            raise ConfigurationError("FLAGSTREAM_FEEDBACK_WAIT_S must be positive and "
                                     f"FLAGSTREAM_FEEDBACK_WAIT_MAX in 0..{MAX_WAITING}")

    def champion_model(self) -> Any:
        """The starting champion these settings name (``model`` and its learning rate)."""
        rate = self.binned_learning_rate if self.model == "binned" else self.learning_rate
        return new_model(self.model, rate)

    def champion_lineage(self) -> str:
        """The starting champion's lineage (``lr``, ``gam``)."""
        return LINEAGES[self.model]

    def _check_operating_point(self) -> None:
        if not 0.0 <= self.target_false_discovery_rate < 1.0:
            raise ConfigurationError("FLAGSTREAM_TARGET_FALSE_DISCOVERY_RATE must be in [0, 1)")
        if not self.target_false_discovery_rate and not 0.0 < self.target_recall < 1.0:
            raise ConfigurationError(
                "FLAGSTREAM_TARGET_RECALL must be in (0, 1) when FLAGSTREAM_TARGET_FALSE_DISCOVERY_RATE is 0")
        if self.review_capacity_per_day < 0:
            raise ConfigurationError("FLAGSTREAM_REVIEW_CAPACITY_PER_DAY must be positive (0: no limit)")
        if not 0.0 < self.threshold_floor < self.threshold_ceiling < 1.0:
            raise ConfigurationError(
                "need 0 < FLAGSTREAM_THRESHOLD_FLOOR < FLAGSTREAM_THRESHOLD_CEILING < 1")
        if not self.drift_psi_alert > 0:
            raise ConfigurationError("FLAGSTREAM_DRIFT_PSI_ALERT must be positive")
        if not 0.0 <= self.auto_decline_false_discovery_rate < 1.0:
            raise ConfigurationError(
                "FLAGSTREAM_AUTO_DECLINE_FALSE_DISCOVERY_RATE must be in [0, 1) (0: off)")

    def operating_point(self) -> OperatingPoint:
        """The decision policy's operating point, as the worker and the backtest both run it.

        >>> op = Settings(threshold=0.5).operating_point()
        >>> op.threshold, op.target_fdr, op.capacity_per_day
        (0.5, 0.15, 1000.0)
        """
        fdr = self.target_false_discovery_rate or None
        return OperatingPoint(
            target_fdr=fdr, target_recall=None if fdr else self.target_recall,
            capacity_per_day=self.review_capacity_per_day or None,
            floor=self.threshold_floor, ceiling=self.threshold_ceiling,
            initial_threshold=self.threshold, maturity_s=self.label_maturity_s,
            decline_fdr=self.auto_decline_false_discovery_rate or None,
        )

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def topic(self, name: str) -> str:
        """The full name of one of the project's topics."""
        return f"{self.topic_prefix}{name}"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def gate(self) -> GateConfig:
        """The gate and drift settings as the scoring side takes them."""
        return GateConfig(min_labels=self.gate_min_labels, min_frauds=self.gate_min_frauds,
                          cooldown_labels=self.gate_cooldown_labels, margin=self.gate_margin,
                          metric=self.gate_metric, drift_delta=self.drift_delta)

    def hmac_key(self) -> bytes | None:
        """The model-signing key as bytes, or None when none is configured."""
        return self.model_hmac_key.reveal().encode() or None

    def model_key(self, create: bool = False) -> ModelKey:
        """The model-signing key: configured, else the data directory's key file (made by the
        learner, ``create=True``), else nothing when unsigned models are allowed."""
        return ModelKey(self.hmac_key(), self.data_path / KEY_FILE, create, self.allow_unsigned_models)

    def describe(self) -> list[tuple[str, str]]:
        """Every setting as ``(FLAGSTREAM_NAME, shown value)``; secrets show ``***`` or ``(unset)``.

        >>> dict(Settings(sasl_password=Secret("pw")).describe())["FLAGSTREAM_SASL_PASSWORD"]
        '***'
        """
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                shown = "***" if value else "(unset)"
            elif isinstance(value, bool):
                shown = "1" if value else "0"
            else:
                shown = str(value)
            out.append((f"{PREFIX}{f.name.upper()}", shown))
        return out

    def producer_options(self) -> dict[str, Any]:
        """Durability keyword arguments for aiokafka producers.

        >>> Settings().producer_options()
        {'acks': 'all', 'enable_idempotence': True}
        """
        return {"acks": "all", "enable_idempotence": self.producer_idempotence}

    def kafka_security(self) -> dict[str, Any]:
        """Security keyword arguments for every aiokafka client (:func:`kafka_security.client_options`)."""
        return kafka_security.client_options(self)


def _parse(name: str, raw: str, default: Any) -> Any:
    """One variable's text as the type of its field's default."""
    try:
        if isinstance(default, Secret):
            return Secret(raw)
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                raise ValueError(raw)
            return lowered in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not a valid {type(default).__name__}"
        ) from None
    return raw
