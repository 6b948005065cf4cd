"""The Faust application of one worker role: its topics, tables, model and scoring core.

:func:`create_pipeline` builds them; :func:`flagstream.streams.agents.build_app` then
attaches the runtime pieces the role runs (scorer, learner, model sync, pages).

Roles: ``scorer`` (transactions → decisions), ``learner`` (feedback → model versions,
merchant state), or ``all`` in one process. A scorer reads merchant state from a
replicated global table that only the learner writes, so every lookup on the hot
path is local (see ARCHITECTURE.md, principle 6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
from faust.types import TopicT

from flagstream.features.arena import Arena
from flagstream.features.layout import (
    EARLIER_ACCOUNT_WIDTHS,
    EARLIER_MERCHANT_WIDTHS,
    new_account_row,
    new_merchant_row,
)
from flagstream.features.merchants import MerchantState
from flagstream.scoring.handle import ModelHandle
from flagstream.scoring.model_key import ModelKey
from flagstream.sinks.metrics import PipelineMetrics
from flagstream.streams import topics as names
from flagstream.streams.compat.in_loop_consumer import use_in_loop_consumer
from flagstream.streams.compat.internals import (
    fetch_max_wait,
    idempotent_producers,
    no_builtin_web_views,
    read_row,
    shared_table,
)
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.kafka_security import faust_credentials
from flagstream.streams.model_sync import ModelSync
from flagstream.streams.topics import durability, partition_for

log = logging.getLogger(__name__)

ROLES = ("all", "scorer", "learner")


#: Roles whose process runs the learner (and owns the operating point).
LEARNING_ROLES = frozenset({"all", "learner"})


@dataclass
class Pipeline:
    """Everything one worker process owns, wired together.

    The runtime pieces (``scorer``, ``learner``, ``review``, ``api``) are None until
    :func:`flagstream.streams.agents.build_app` attaches those the role runs; each
    has ``register()`` (its agents and timers on ``app``) and ``stop()``.
    """

    settings: Settings
    role: str
    app: faust.App
    metrics: PipelineMetrics
    handle: ModelHandle
    core: ScoringCore
    models: ModelSync
    topics: dict[str, TopicT] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    scorer: Runtime | None = None
    learner: Runtime | None = None
    review: Runtime | None = None
    api: Runtime | None = None

    @property
    def scores(self) -> bool:
        return self.role in {"all", "scorer"}

    @property
    def learns(self) -> bool:
        return self.role in LEARNING_ROLES

    def runtimes(self) -> list[Runtime]:
        """The runtime pieces attached, in the order they were started."""
        return [r for r in (self.scorer, self.learner, self.review, self.api) if r is not None]

    async def stop(self) -> None:
        """Stop every runtime piece, last started first (called when the app shuts down)."""
        for runtime in reversed(self.runtimes()):
            await runtime.stop()


class Runtime(Protocol):
    """A piece of a running worker: registers its agents on the app, releases them on stop."""

    def register(self) -> None: ...

    async def stop(self) -> None: ...


def create_pipeline(settings: Settings, role: str = "all") -> Pipeline:
    """Create the Faust app for ``role`` with its topics, tables, model and scoring core."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    base_id = f"{settings.topic_prefix}{settings.app_id}"
    app_id = base_id if role == "all" else f"{base_id}-{role}"
    (settings.data_path / role).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{b}" for b in settings.broker.split(",")],
        store="rocksdb://",
        datadir=str(settings.data_path / role),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        web_enabled=True,
        # Faust's own views read tables (account rows, decisions) and show the cluster
        # to anyone who reaches the port: all off (and see no_builtin_web_views).
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        broker_credentials=faust_credentials(settings),
        producer_linger_ms=5,
        producer_max_batch_size=1_048_576,
        consumer_max_fetch_size=8 * 1_048_576,
        # A topic the broker did not list yet when the group formed (a loaded broker lags
        # behind its own topic creation) is assigned at the next refresh: 10 s, not 5 min.
        consumer_metadata_max_age_ms=10_000,
        broker_max_poll_records=5_000,
        stream_buffer_maxsize=20_000,
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        logging_config=None,
    )
    no_builtin_web_views(app)
    fetch_max_wait(app, settings.fetch_max_wait_ms)
    use_in_loop_consumer(app, settings.consumer_in_loop)
    if settings.producer_idempotence:
        idempotent_producers()
    metrics = PipelineMetrics()
    handle = ModelHandle(settings.champion_model(), name=settings.champion_lineage())
    topic_map = {
        key: app.topic(settings.topic(name), partitions=parts, internal=False,
                       key_serializer="raw", value_serializer="raw")
        for key, name, parts in [
            ("transactions", names.TRANSACTIONS, settings.partitions),
            ("transactions_dlq", names.TRANSACTIONS_DLQ, settings.partitions),
            ("scores", names.SCORES, settings.partitions),
            ("review", names.REVIEW, settings.partitions),
            ("feedback", names.FEEDBACK, settings.partitions),
            ("feedback_dlq", names.FEEDBACK_DLQ, settings.partitions),
            ("models", names.MODELS, settings.partitions),
            ("merchant_activity", names.MERCHANT_ACTIVITY, settings.partitions),
            ("merchant_state", names.MERCHANT_STATE, settings.partitions),
        ]
    }
    shared = {
        "partitions": settings.partitions,
        "synchronize_all_active_partitions": True,
        "key_type": bytes,
        "value_type": bytes,
    }
    merchant_table = shared_table(app, "merchants", topic_map["merchant_state"], shared)
    models_table = shared_table(app, "models", topic_map["models"], shared)
    tables: dict[str, Any] = {"merchants": merchant_table, "models": models_table}
    if role in {"all", "scorer"}:
        tables["accounts"] = app.Table("accounts", partitions=settings.partitions,
                                       key_type=bytes, value_type=bytes,
                                       extra_topic_configs=durability(settings))
    if role in {"all", "learner"}:
        tables["decisions"] = app.Table("decisions", partitions=settings.partitions,
                                        key_type=bytes, value_type=bytes,
                                        extra_topic_configs=durability(settings))
        # each transaction's effective label (flagstream.scoring.label_ledger), keyed like decisions
        tables["labels"] = app.Table("labels", partitions=settings.partitions,
                                     key_type=bytes, value_type=bytes,
                                     extra_topic_configs=durability(settings))

    accounts_table = tables.get("accounts")
    n = settings.partitions

    def load_account(key: str) -> bytes | None:
        """An account's stored row, from the partition the account lives on."""
        return read_row(accounts_table, partition_for(key, n), key.encode())

    accounts = Arena(
        new_account_row,
        loader=load_account if accounts_table is not None else None,
        prefix_widths=EARLIER_ACCOUNT_WIDTHS,
    )
    merchants = MerchantState(
        Arena(new_merchant_row, loader=lambda key: merchant_table.get(key.encode()),
              prefix_widths=EARLIER_MERCHANT_WIDTHS)
    )
    policy = settings.operating_point()
    core = ScoringCore(
        handle, policy, accounts, merchants,
        settings.max_record_bytes, settings.max_nesting, settings.max_event_lead_s * 1000,
    )
    learns = role in LEARNING_ROLES  # the learner owns the operating point; scorers follow it
    models = ModelSync(models_table, handle, metrics, model_key(settings, role),
                       threshold_follower=None if learns else policy)
    if not learns:  # only the learner writes the models table: here it changes by replication
        models.follow_replication()
    return Pipeline(settings, role, app, metrics, handle, core, models, topic_map, tables)


def model_key(settings: Settings, role: str) -> ModelKey:
    """The key model records are signed and verified with; said in the log at every start.

    A learner makes the key file on its first start; a bad key file stops the worker
    here, with the reason, rather than on the first record.
    """
    key = settings.model_key(create=role in {"all", "learner"})
    if key.unsigned:
        log.error("UNSIGNED MODELS: FLAGSTREAM_ALLOW_UNSIGNED_MODELS is on, so model records and "
                  "learner snapshots are neither signed nor verified; anyone who can write to the "
                  "models topic can replace the model")
    elif key.pending:
        log.warning("no model signing key yet (%s): model records are not followed until the "
                    "learner creates it; on another host set FLAGSTREAM_MODEL_HMAC_KEY", key.source)
    else:
        log.info("model records are signed and verified (key: %s)", key.source)
    return key

