"""Sealed JSON records and atomic snapshot files: what is accepted, what is refused and why."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from flagstream.codec import dumps, loads
from flagstream.features.layout import N_FEATURES
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.snapshots import (
    IntegrityError,
    SnapshotStore,
    atomic_write,
    seal,
    unseal,
)
from flagstream.streams.config import Settings

STATE = LinearChampion(learning_rate=0.1).to_state()


def test_round_trip_keeps_the_model_state_exactly():
    model = LinearChampion()
    rng = np.random.default_rng(0)
    for x in rng.random((50, N_FEATURES)) * 100:
        model.learn_one(x, int(x[0] > 50))
    payload = {"state": model.to_state(), "offsets": {0: 5, 12: 7}, "arr": np.arange(3)}
    back = unseal(seal(payload, b"k"), b"k")
    assert back["state"] == loads(dumps(model.to_state()))
    assert back["offsets"] == {"0": 5, "12": 7}  # JSON keys are strings, before and after
    assert LinearChampion.from_state(back["state"]).to_state() == back["state"]


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda b: b.replace(b'"learning_rate":0.1', b'"learning_rate":0.2'), "checksum mismatch"),
        (lambda b: b[:-10], "not valid JSON"),
        (lambda b: b"", "not valid JSON"),
        (lambda b: pickle.dumps({"state": STATE}), "not valid JSON"),
        (lambda b: dumps({"state": STATE}), "not a sealed record"),
        (lambda b: dumps({**loads(b), "payload": [1]}), "payload is not a JSON object"),
    ],
)
def test_corrupt_or_foreign_records_are_refused_with_a_reason(mutate, why):
    with pytest.raises(IntegrityError, match=why):
        unseal(mutate(seal({"state": STATE})))


def test_a_recomputed_checksum_does_not_pass_the_hmac():
    sealed = loads(seal({"state": STATE}, b"right key"))
    forged = seal({"state": {**STATE, "intercept": 40.0}})  # attacker's checksum, no key
    envelope = {**loads(forged), "hmac": sealed["hmac"]}
    with pytest.raises(IntegrityError, match="HMAC mismatch"):
        unseal(dumps(envelope), b"right key")
    with pytest.raises(IntegrityError, match="unsigned"):
        unseal(forged, b"right key")
    assert unseal(seal({"a": 1}, b"k"), None) == {"a": 1}  # checksum still checked without a key


def test_hmac_key_comes_from_the_settings():
    assert Settings.from_env({"FLAGSTREAM_MODEL_HMAC_KEY": "topsecret"}).hmac_key() == b"topsecret"
    assert Settings.from_env({"FLAGSTREAM_MODEL_HMAC_KEY": ""}).hmac_key() is None
    assert "topsecret" not in repr(Settings.from_env({"FLAGSTREAM_MODEL_HMAC_KEY": "topsecret"}))


def test_store_keeps_the_newest_and_falls_back_past_bad_files(tmp_path):
    store = SnapshotStore(tmp_path / "snaps", key=b"k", keep=3)
    for n in range(1, 6):
        store.save({"n": n}, sequence=n)
    assert [p.name for p in store.paths()] == [
        "learner-000000000005.json", "learner-000000000004.json", "learner-000000000003.json"
    ]
    assert not list((tmp_path / "snaps").glob("*.tmp"))
    five, four = store.paths()[:2]
    five.write_bytes(five.read_bytes()[:-30])  # torn write
    four.write_bytes(four.read_bytes().replace(b'"n":4', b'"n":9'))  # altered
    payload, path = store.load()
    assert payload == {"n": 3} and path.name == "learner-000000000003.json"
    assert [p.name for p, _ in store.refused] == [five.name, four.name]
    assert "checksum mismatch" in store.refused[1][1]
    other_key = SnapshotStore(tmp_path / "snaps", key=b"other")
    assert other_key.load() is None and len(other_key.refused) == 3
    assert SnapshotStore(tmp_path / "empty").load() is None


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    atomic_write(path, b"old")

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
