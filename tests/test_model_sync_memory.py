"""What a worker following the models table remembers of the records it verified: bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from flagstream.scoring.handle import ModelHandle
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.snapshots import seal
from flagstream.sinks.metrics import PipelineMetrics
from flagstream.streams.model_sync import VERIFIED_KEPT, ModelSync

KEY = b"k" * 32


def test_versions_read_over_a_long_run_are_forgotten_in_turn():
    """The learner publishes a version a second and deletes all but the newest 200 per
    lineage; every one read was kept for ever (~29 KB each, gigabytes a day). Now the
    oldest leave first, and a record still read is never the one that leaves."""
    table: dict[bytes, bytes] = {}
    sync = ModelSync(table, ModelHandle(LinearChampion()), PipelineMetrics(CollectorRegistry()), KEY)
    table[b"champion"] = seal({"not": "a champion"}, KEY)
    for n in range(3 * VERIFIED_KEPT):
        key = f"version:gam:{n:06d}".encode()
        table[key] = seal({"sequence": n}, KEY)
        assert sync.read(key) is None  # (malformed as a version record: refused, remembered)
        if n % (VERIFIED_KEPT - 1) == 0:  # (read less often than the cache turns over)
            sync.read(b"champion")
        table.pop(f"version:gam:{n - 200:06d}".encode(), None)  # the learner's retention
    assert len(sync._verified) == VERIFIED_KEPT
    newest = f"version:gam:{3 * VERIFIED_KEPT - 1:06d}".encode()
    assert b"champion" in sync._verified and newest in sync._verified
    refused = sync.metrics.lifecycle.refused.labels(source="models_topic", reason="malformed")
    before = refused._value.get()
    sync.read(b"champion")
    assert refused._value.get() == before, "a refused record still remembered is not refused again"
