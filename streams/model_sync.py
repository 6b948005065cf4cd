"""Hot-swapping to the newest published model version."""

from __future__ import annotations

import logging

from streams.app import Pipeline
from streams.codec import loads

log = logging.getLogger(__name__)


def sync_model(p: Pipeline) -> bool:
    """Swap to the newest version in the replicated models table, if it is newer.

    Every worker replicates the compacted ``models`` topic (a global table), so all
    scorers see a published version within one batch, without a restart.
    """
    from scoring.linear import LinearChampion

    raw = p.tables["models"].get(b"champion")
    if raw is None or raw is p.tables.get("_models_seen"):
        return False
    p.tables["_models_seen"] = raw
    record = loads(raw)
    if record["sequence"] <= p.handle.sequence:
        return False
    p.handle.model = LinearChampion.from_state(record["state"])
    p.handle.sequence = record["sequence"]
    p.metrics.model_version.set(p.handle.sequence)
    log.info("model now %s", p.handle.version)
    return True


def register_model_sync(p: Pipeline) -> None:
    @p.app.timer(0.5)
    async def model_sync() -> None:
        sync_model(p)

    _ = model_sync
