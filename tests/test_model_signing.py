"""Signed models by default: forged, unsigned and malformed registry records and snapshots refused.

Each test builds a worker's pipeline as ``flagstream worker`` does (no setting for the
key: the default), puts hostile records where the replicated ``models`` table would
hold them, and checks the model in use, the scores, the log line and the counter.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
from kafka_helpers import produce, produce_json, read_json
from model_helpers import (
    decided,
    in_process,
    labelled_metric,
    publish_champion,
    serving_version,
    train_offline,
    wait_until,
)

from flagstream.cli import main as cli_main
from flagstream.codec import dumps, loads
from flagstream.errors import ConfigurationError
from flagstream.features.layout import N_FEATURES
from flagstream.scoring.handle import DEFAULT_KIND, LINEAGES
from flagstream.scoring.linear import INPUT_NAMES, LinearChampion
from flagstream.scoring.model_key import KEY_FILE, MIN_KEY_BYTES, create_key_file, read_key_file
from flagstream.scoring.registry import (
    CHAMPION,
    LEARNER,
    OPERATING_POINT,
    SEAT,
    seat_change,
    version_record,
)
from flagstream.scoring.snapshots import seal
from flagstream.streams.app import create_pipeline
from flagstream.streams.config import Secret, Settings
from flagstream.streams.learner_runtime import LearnerRuntime
from flagstream.streams.registry_client import RegistryClient

GOOD = version_record("lr-000003", 3, LinearChampion().to_state(), "champion", "learned", "learner")
#: The auditor's forged champion: every score ~1e-22, nothing is ever flagged.
FORGED_STATE = {**LinearChampion().to_state(), "intercept": -50.0,
                "weights": dict.fromkeys(INPUT_NAMES, 0.0)}
FORGED = version_record("lr-000900", 900, FORGED_STATE, "champion", "forged", "learner")
PROBE = np.stack([np.zeros(N_FEATURES), np.full(N_FEATURES, 3.0)])


def refused(p, reason: str | None = None) -> float:
    """How many model records the pipeline's counter says it refused (for one reason, or all)."""
    total = 0.0
    for metric in p.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "flagstream_model_records_refused_total" and (
                    reason is None or sample.labels.get("reason") == reason):
                total += sample.value
    return total


class ReplicatedTable(dict):
    """A models table whose writes arrive as a replicated one's do: as changelog batches."""

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.apply_changelog_batch([SimpleNamespace(message=SimpleNamespace(key=key, value=value))])

    def apply_changelog_batch(self, events) -> None:
        for event in events:
            dict.__setitem__(self, event.message.key, event.message.value)


def pipeline(tmp_path, role: str = "all", **settings):
    """A worker's pipeline with a dict as its replicated models table."""
    p = create_pipeline(Settings(data_dir=str(tmp_path / "data"), **settings), role)
    table = ReplicatedTable()
    p.models.table = table
    p.tables["models"] = table
    if not p.learns:  # (as create_pipeline does with the real table)
        p.models.follow_replication()
    return p, table


def learner_key(tmp_path) -> bytes:
    key = read_key_file(tmp_path / "data" / KEY_FILE)
    assert key is not None, "the learner made no key"
    return key


# --- the key ------------------------------------------------------------------------------
def test_the_learner_makes_an_owner_only_key_at_first_start_and_keeps_it(tmp_path):
    p, _ = pipeline(tmp_path, "learner")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = learner_key(tmp_path)
    assert len(key) >= MIN_KEY_BYTES and p.models.key == key
    again, _ = pipeline(tmp_path, "learner")  # a restart reads the same key
    assert again.models.key == key
    assert not list(path.parent.glob(".*.tmp"))


def test_a_key_file_others_can_read_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "data" / KEY_FILE
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match=r"readable or writable by group/others \(mode 0644\)"):
        pipeline(tmp_path, "scorer")
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigurationError, match="holds 5 bytes"):
        pipeline(tmp_path, "learner")


def test_a_configured_key_wins_over_the_file(tmp_path):
    create_key_file(tmp_path / "data" / KEY_FILE)
    p, _ = pipeline(tmp_path, "scorer", model_hmac_key=Secret("configured-key"))
    assert p.models.key == b"configured-key"


# --- forged and malformed records on the models topic -------------------------------------
def test_a_forged_champion_is_refused_and_scores_do_not_change(tmp_path, caplog):
    p, table = pipeline(tmp_path)
    table[CHAMPION] = seal(GOOD, p.models.key)
    assert p.models.sync() and p.handle.version == "lr-000003"
    before = p.handle.model.score_batch(PROBE)
    table[CHAMPION] = seal(FORGED)  # a valid SHA-256 anyone can compute, no signature
    with caplog.at_level(logging.ERROR):
        for _ in range(5):  # the sync runs on every step
            assert p.models.sync() is False
    assert p.handle.version == "lr-000003"
    np.testing.assert_array_equal(p.handle.model.score_batch(PROBE), before)
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(lines) == 1 and "unsigned" in lines[0], lines  # one line per refused version
    assert refused(p, "unsigned") == 1
    table[CHAMPION] = seal(FORGED, b"a key the attacker made up")
    assert p.models.sync() is False and refused(p, "bad_signature") == 1
    assert p.handle.version == "lr-000003"


def test_a_scorer_in_another_process_verifies_with_the_learners_key(tmp_path):
    scorer, table = pipeline(tmp_path, "scorer")  # started first: no key yet
    table[CHAMPION] = seal(GOOD, b"whatever")
    assert scorer.models.sync() is False and scorer.handle.version == f"{LINEAGES[DEFAULT_KIND]}-000000"
    learner, _ = pipeline(tmp_path, "learner")  # the learner's first start makes the key
    table[CHAMPION] = seal(GOOD, learner.models.key)
    assert scorer.models.sync() and scorer.handle.version == "lr-000003"
    table[CHAMPION] = seal(FORGED)
    assert scorer.models.sync() is False and scorer.handle.version == "lr-000003"
    assert refused(scorer, "unsigned") == 1


def _state(**changes):
    return {**LinearChampion().to_state(), **changes}


MALFORMED = {
    "intercept_text": {**GOOD, "state": _state(intercept="x")},
    "intercept_nan": {**GOOD, "state": _state(intercept=float("nan"))},
    "unknown_state_field": {**GOOD, "state": _state(backdoor=1)},
    "unknown_record_field": {**GOOD, "note": "x"},
    "weights_not_an_object": {**GOOD, "state": _state(weights=[1.0, 2.0])},
    "sequence_not_its_version": {**GOOD, "sequence": 99},
    "history_not_a_list": {**GOOD, "history": "x"},
    "status_unknown": {**GOOD, "status": "king"},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_field_is_checked_before_a_signed_record_is_adopted(tmp_path, name):
    p, table = pipeline(tmp_path)
    key = p.models.key
    newer = MALFORMED[name]
    if newer["sequence"] == GOOD["sequence"]:  # newer than the one in use, or it is not followed
        newer = {**newer, "version": "lr-000004", "sequence": 4}
    table[CHAMPION] = seal(GOOD, key)
    p.models.sync()
    table[CHAMPION] = seal(newer, key)
    for _ in range(3):
        assert p.models.sync() is False
    assert p.handle.version == "lr-000003" and refused(p, "malformed") == 1
    assert np.all(np.isfinite(p.handle.model.score_batch(PROBE)))


def test_a_seat_with_missing_fields_never_raises_in_the_learners_sync(tmp_path):
    p, table = pipeline(tmp_path)
    runtime = LearnerRuntime(p, lambda *_: None)
    key = p.models.key
    table[CHAMPION] = seal(GOOD, key)
    writes = seat_change(lambda k: None, GOOD, "promote", "r", "cli:ann")
    good_seat = dict(writes[-2][1])
    for forged, reason in (({"kind": "seat", "epoch": 7, "action": "promote"}, "unsigned"),
                           ({k: v for k, v in good_seat.items() if k != "id"}, "malformed")):
        table[SEAT] = seal(forged, None if reason == "unsigned" else key)
        for _ in range(3):  # the learner's sync runs on every step
            assert runtime.sync() == []
            assert p.models.sync() in (True, False)
        assert refused(p, reason) == 1
    deep = b'{"format":"flagstream-sealed/1","sha256":"0","payload":{"a":' + b"[" * 400 + b"]" * 400 + b"}}"
    table[SEAT] = deep  # too deep to re-encode for the checksum
    assert runtime.sync() == [] and refused(p, "unreadable") == 1
    table[SEAT] = seal(good_seat, key)
    runtime.sync()
    assert runtime.learner.handle.epoch == good_seat["epoch"]


# --- learner snapshots ----------------------------------------------------------------------
def test_a_forged_learner_snapshot_with_a_higher_sequence_is_refused_on_restart(tmp_path):
    p, table = pipeline(tmp_path, "learner")
    runtime = LearnerRuntime(p, lambda *_: None)
    runtime.learner.offsets = {0: 41, 1: 17}
    good = {"kind": "learner", "snapshot_seq": 5, "saved_at_ms": 1, **runtime.learner.to_state()}
    runtime.store.save(good, 5)
    forged = {**good, "snapshot_seq": 10**6, "offsets": {"0": 10**12, "1": 10**12}}
    table[LEARNER] = seal(forged)  # on the topic: unsigned
    table[b"version:zz-999999"] = seal({**FORGED, "version": "zz-999999", "sequence": 999_999})
    table[b"version:\xff"] = b"junk"
    runtime.store.directory.joinpath("learner-000999999999.json").write_bytes(seal(forged))
    restarted = LearnerRuntime(p, lambda *_: None)
    assert restarted.restore()
    assert restarted.learner.offsets == {0: 41, 1: 17} and restarted.snapshot_seq == 5
    assert restarted.learner.next_sequence < 1_000  # forged version keys do not count
    assert refused(p, "unsigned") == 3  # the file, the snapshot and the version on the topic


def test_a_signed_snapshot_that_cannot_be_restored_falls_back_to_the_last_good_one(tmp_path):
    p, _ = pipeline(tmp_path, "learner")
    runtime = LearnerRuntime(p, lambda *_: None)
    runtime.learner.offsets = {0: 41}
    good = {"kind": "learner", "snapshot_seq": 5, "saved_at_ms": 1, **runtime.learner.to_state()}
    runtime.store.save(good, 5)
    bad = loads(dumps(good))
    bad["snapshot_seq"], bad["offsets"] = 6, {"0": 99}
    bad["champion"]["state"]["intercept"] = "x"
    runtime.store.save(bad, 6)
    restarted = LearnerRuntime(p, lambda *_: None)
    assert restarted.restore() and restarted.learner.offsets == {0: 41}
    assert refused(p, "malformed") == 1


# --- the opt-out, and the CLI -------------------------------------------------------------------
def test_running_unsigned_needs_the_opt_in_and_says_so_at_every_start(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        p, table = pipeline(tmp_path, allow_unsigned_models=True)
    assert any(r.levelno == logging.ERROR and "UNSIGNED MODELS" in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / "data" / KEY_FILE).exists()
    table[CHAMPION] = seal(GOOD)
    assert p.models.sync() and p.handle.version == "lr-000003"
    with pytest.raises(ConfigurationError, match="choose one"):
        Settings.from_env({"FLAGSTREAM_ALLOW_UNSIGNED_MODELS": "1",
                           "FLAGSTREAM_MODEL_HMAC_KEY": "k"})


def test_the_cli_signs_with_the_workers_key_and_will_not_run_without_one(
    tmp_path, monkeypatch, capsys
):
    settings = Settings(data_dir=str(tmp_path / "data"))
    monkeypatch.delenv("FLAGSTREAM_MODEL_HMAC_KEY", raising=False)
    monkeypatch.setenv("FLAGSTREAM_DATA_DIR", settings.data_dir)
    assert cli_main(["models", "rollback", "--reason", "r"]) == 2
    assert "no model signing key: set FLAGSTREAM_MODEL_HMAC_KEY" in capsys.readouterr().err
    pipeline(tmp_path, "learner")
    assert RegistryClient(settings).key == learner_key(tmp_path)


# --- on the real broker ------------------------------------------------------------------------
def transaction(i: int) -> dict:
    return {"transaction_id": f"s-{i:05d}", "account_id": f"c-{i % 20}", "merchant_id": f"m-{i % 7}",
            "amount": 900.0 if i % 5 == 0 else 15.0 + i % 9, "currency": "USD",
            "timestamp": f"2018-04-02T{(i // 60) % 24:02d}:{i % 60:02d}:00Z"}


@pytest.mark.integration
def test_a_forged_champion_produced_to_a_running_worker_changes_no_decision(
    settings, worker_factory, monkeypatch
):
    monkeypatch.delenv("FLAGSTREAM_MODEL_HMAC_KEY", raising=False)  # the default: no key set
    monkeypatch.delenv("FLAGSTREAM_ALLOW_UNSIGNED_MODELS", raising=False)
    history = [{**transaction(50_000 + i), "account_id": f"x-{i % 30}"} for i in range(600)]
    good = train_offline(history, lambda d: d["amount"] > 500)
    worker = worker_factory()  # the learner makes the key in the data directory
    version = publish_champion(settings, good)  # signed with it, as the learner signs
    wait_until(lambda: serving_version(worker) == version, 30, "the signed champion in use", worker)

    forged = version_record("lr-000900", 900, FORGED_STATE, "champion", "forged", "attacker")
    forged_seat = {"kind": "seat", "epoch": 99, "action": "promote"}  # fields missing
    asyncio.run(produce(settings, "models", [(CHAMPION, seal(forged)), (SEAT, seal(forged_seat))]))
    wait_until(lambda: labelled_metric(worker, "flagstream_model_records_refused_total").get(
        frozenset({("source", "models_topic"), ("reason", "unsigned")}), 0) >= 2, 15,
        "both forged records refused", worker)

    txs = [transaction(i) for i in range(100)]
    produce_json(settings, "transactions", txs, "account_id")
    got = {d["transaction_id"]: d for d in read_json(settings, "scores", len(txs))}
    want = in_process([txs], [good], [settings.threshold])  # the good model, uninterrupted
    assert {t: decided(d) for t, d in got.items()} == {t: decided(d) for t, d in want.items()}
    assert {d["model_version"] for d in got.values()} == {version}
    assert {t for t, d in got.items() if d["decision"] == "review"} == {
        t["transaction_id"] for t in txs if t["amount"] > 500}  # still flagged
    assert serving_version(worker) == version
    assert worker.run_log().count(b"refusing models[champion]") == 1, "one line per refused version"


# --- the operating point's record -----------------------------------------------------------
def test_a_scorer_decides_with_the_threshold_the_learner_signed_and_no_other(tmp_path):
    learner, _ = pipeline(tmp_path, "learner")
    key = learner_key(tmp_path)
    scorer, table = pipeline(tmp_path, "scorer")
    record = learner.core.policy.published(1, 0) | {"threshold": 0.3}
    table[OPERATING_POINT] = seal(record, key)
    scorer.models.sync()
    assert scorer.core.policy.threshold == 0.3
    table[OPERATING_POINT] = seal(record | {"threshold": 0.005}, b"someone else's key" * 2)
    scorer.models.sync()
    assert scorer.core.policy.threshold == 0.3 and refused(scorer, "bad_signature") == 1
    table[OPERATING_POINT] = seal(record | {"threshold": "low"}, key)
    scorer.models.sync()
    assert scorer.core.policy.threshold == 0.3 and refused(scorer, "malformed") == 1
    learner.core.policy.follow(0.7)  # the learner owns its operating point: it never follows
    table.update({OPERATING_POINT: seal(record, key)})
    learner.models.table = table
    learner.models.sync()
    assert learner.core.policy.threshold == 0.7


def test_a_scorer_reads_the_models_table_only_after_replication_changed_it(tmp_path):
    learner, _ = pipeline(tmp_path, "learner")
    scorer, table = pipeline(tmp_path, "scorer")
    table[CHAMPION] = seal(GOOD, learner.models.key)
    lookups = []
    table.get = lambda key, default=None: lookups.append(key) or dict.get(table, key, default)
    assert scorer.models.sync() and scorer.handle.version == "lr-000003"
    assert lookups, "the first sync reads the table"
    lookups.clear()
    for _ in range(5):  # the sync runs before every step: nothing replicated, nothing read
        assert scorer.models.sync() is False
    assert lookups == []
    newer = version_record("lr-000004", 4, LinearChampion().to_state(), "champion", "learned", "learner")
    table[CHAMPION] = seal(newer, learner.models.key)  # arrives as a changelog batch
    assert scorer.models.sync() and scorer.handle.version == "lr-000004" and lookups
    # the learner's own process writes its table directly: it reads on every sync
    learner.models.table = {CHAMPION: seal(GOOD, learner.models.key)}
    assert learner.models.sync() and learner.handle.version == "lr-000003"


@pytest.mark.parametrize("since_ms, resumed", [(1_522_540_800_000, 1_522_540_800_000.0), (None, math.inf),
                                               (0, -math.inf), ("absent", -math.inf)])
def test_the_drift_warm_up_resumes_from_when_the_state_began(tmp_path, since_ms, resumed):
    """The learner's snapshot carries when its stream's state began, so a restarted learner
    keeps stating the drift of features already warm (a snapshot from before it was kept:
    state of unknown age, warm; none seen yet: from the first decision)."""
    p, _ = pipeline(tmp_path, "learner")
    runtime = LearnerRuntime(p, lambda *_: None)
    good = {"kind": "learner", "snapshot_seq": 5, "saved_at_ms": 1, **runtime.learner.to_state()}
    if since_ms != "absent":
        good["since_ms"] = since_ms
    runtime.store.save(good, 5)
    restarted = LearnerRuntime(p, lambda *_: None)
    assert restarted.restore() and restarted.health.drift.since_ms == resumed
    assert restarted.health.since_state() == (0 if since_ms == "absent" else since_ms)


@pytest.mark.parametrize("since_ms", ["x", -5, 1.5, True])
def test_a_snapshot_with_a_bad_start_of_state_is_refused(tmp_path, since_ms):
    p, _ = pipeline(tmp_path, "learner")
    runtime = LearnerRuntime(p, lambda *_: None)
    bad = {"kind": "learner", "snapshot_seq": 5, "saved_at_ms": 1, **runtime.learner.to_state(),
           "since_ms": since_ms}
    with pytest.raises(ValueError, match="since_ms"):
        runtime.check_snapshot(bad)
