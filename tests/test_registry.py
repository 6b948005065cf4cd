"""The registry's records and rules, and its client against the real broker."""

from __future__ import annotations

import asyncio

import pytest
from kafka_helpers import produce

from flagstream.codec import dumps, loads
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.registry import (
    CHAMPION,
    SEAT,
    RegistryError,
    RegistryView,
    choose_champion,
    prune,
    seat_change,
    version_key,
    version_record,
)
from flagstream.scoring.snapshots import seal
from flagstream.streams.config import Secret
from flagstream.streams.models_cli import format_rows
from flagstream.streams.registry_client import RegistryClient
from flagstream.streams.topics import create_topics

STATE = LinearChampion().to_state()


def record(version: str, sequence: int, status: str = "shadow") -> dict:
    return version_record(version, sequence, STATE, status, "test", "test")


def registry_with(*records: dict) -> dict[bytes, dict]:
    out = {version_key(r["version"]): r for r in records}
    champions = [r for r in records if r["status"] == "champion"]
    if champions:
        out[CHAMPION] = champions[-1]
    return out


def apply(records: dict, writes) -> dict:
    records.update(writes)
    return records


def test_promote_then_rollback_moves_the_seat_and_the_statuses():
    records = registry_with(record("lr-000001", 1, "champion"), record("fast-000002", 2))
    apply(records, seat_change(records.get, records[version_key("fast-000002")], "promote",
                               "better", "cli:ann"))
    seat = records[SEAT]
    assert (seat["epoch"], seat["version"], seat["stack"], seat["from"]) == (
        1, "fast-000002", ["lr-000001"], "lr-000001")
    assert records[version_key("lr-000001")]["status"] == "shadow"
    assert records[CHAMPION]["seat"] == seat["id"]

    target = records[version_key(seat["stack"][-1])]
    apply(records, seat_change(records.get, target, "rollback", "worse", "cli:bob"))
    seat = records[SEAT]
    assert (seat["epoch"], seat["version"], seat["stack"], seat["action"]) == (
        2, "lr-000001", [], "rollback")
    assert records[version_key("fast-000002")]["status"] == "retired"
    history = records[version_key("lr-000001")]["history"]
    assert [h["status"] for h in history] == ["champion", "shadow", "champion"]
    assert [h["by"] for h in seat["history"]] == ["cli:ann", "cli:bob"]


def test_a_stale_champion_record_never_overrides_the_seat():
    records = registry_with(record("lr-000001", 1, "champion"), record("fast-000002", 2))
    apply(records, seat_change(records.get, records[version_key("fast-000002")], "promote",
                               "x", "cli"))
    seat = records[SEAT]
    newer = {**record("fast-000007", 7, "champion"), "epoch": 1, "seat": seat["id"]}
    assert choose_champion(seat, newer)["version"] == "fast-000007"  # learned under this seat
    stale = {**record("lr-000009", 9, "champion"), "epoch": 0, "seat": ""}  # written meanwhile
    chosen = choose_champion(seat, stale)
    assert chosen["version"] == "fast-000002" and chosen["state"] == STATE
    assert choose_champion(None, stale)["version"] == "lr-000009"  # before any seat change
    assert choose_champion(None, None) is None


def test_view_refuses_tampered_records_and_reports_statuses():
    records = registry_with(record("lr-000001", 1, "champion"), record("fast-000002", 2),
                            record("fast-000003", 3))
    raw = {k: seal(v) for k, v in records.items()}
    envelope = loads(raw[version_key("fast-000003")])
    envelope["payload"]["state"]["intercept"] = 9.0
    raw[version_key("fast-000003")] = dumps(envelope)
    view = RegistryView(raw)
    assert list(view.refused) == [version_key("fast-000003")]
    assert "checksum mismatch" in view.refused[version_key("fast-000003")]
    assert [(r["version"], r["status"]) for r in view.rows()] == [
        ("lr-000001", "champion"), ("fast-000002", "shadow")]
    assert view.max_sequence() == 2
    with pytest.raises(RegistryError, match="unknown version 'nope-1'"):
        view.version("nope-1")
    assert format_rows(view.rows()).splitlines()[1].split()[:2] == ["lr-000001", "champion"]


def test_prune_keeps_the_newest_per_lineage_and_protected_ones():
    versions = [record(f"a-{i:06d}", i) for i in range(1, 8)] + [record("b-000009", 9)]
    dropped = prune(versions, 3, protect=["a-000002"])
    assert dropped == [version_key(f"a-{i:06d}") for i in (4, 3, 1)]


@pytest.mark.integration
def test_client_writes_and_reads_the_registry_on_the_broker(settings):
    settings = settings.with_(model_hmac_key=Secret("registry-key"))  # no learner has made one

    async def scenario() -> None:
        await create_topics(settings)
        async with RegistryClient(settings) as client:
            with pytest.raises(RegistryError, match="nothing to roll back to"):
                await client.rollback(None, "why", "cli")
            await client.write([(version_key("lr-000001"), record("lr-000001", 1, "champion")),
                                (CHAMPION, record("lr-000001", 1, "champion")),
                                (version_key("x-000002"), record("x-000002", 2))])
            await client.submit("cand", STATE, "offline", "cli")
            with pytest.raises(RegistryError, match="already exists"):
                await client.submit("x", STATE, "offline", "cli")
            with pytest.raises(ValueError, match="unknown model kind"):
                await client.submit("bad", {"kind": "pickle"}, "offline", "cli")
            seat = await client.promote("x-000002", "better", "cli")
            assert seat["version"] == "x-000002" and seat["stack"] == ["lr-000001"]
            with pytest.raises(RegistryError, match="already the champion"):
                await client.promote("x-000002", "again", "cli")
            seat = await client.rollback(None, "worse", "cli")
            assert seat["version"] == "lr-000001" and seat["epoch"] == 2
            await client.write([(version_key("x-000002"), None)])  # a tombstone
            view = await client.read()
            assert view.champion["version"] == "lr-000001"
            assert [c["lineage"] for c in view.candidates()] == ["cand"]
            assert version_key("x-000002") not in view.records
            assert [r["status"] for r in view.rows()] == ["champion", "candidate"]

        await produce(settings, "models", [(b"version:evil-000009", dumps(record("evil-9", 9)))])
        async with RegistryClient(settings) as client:
            view = await client.read()
            assert "not a sealed record" in view.refused[b"version:evil-000009"]

    asyncio.run(scenario())
