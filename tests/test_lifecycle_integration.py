"""Model lifecycle on the real broker: promote/rollback, the gate, drift, restarts, hot swaps."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from kafka_helpers import free_port, produce, produce_json, read_json, read_topic
from model_helpers import wait_until

from flagstream.cli import main as cli_main
from flagstream.codec import dumps, loads
from flagstream.scoring.handle import ModelHandle, new_model, parse_version
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.registry import CHAMPION, PARTITION, RegistryView
from flagstream.scoring.snapshots import seal
from flagstream.streams.config import Secret
from flagstream.streams.core import ScoringCore
from flagstream.streams.registry_client import RegistryClient

pytestmark = pytest.mark.integration


def txn(i: int) -> dict:
    """Every fifth transaction is a large-amount fraud; the rest are small and legit."""
    return {
        "transaction_id": f"t-{i:06d}",
        "account_id": f"c-{i % 25}",
        "merchant_id": f"m-{i % 11}",
        "amount": 900.0 if i % 5 == 0 else 15.0 + i % 9,
        "currency": "USD",
        "timestamp": f"2018-04-{1 + (i // 1440) % 28:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
    }


def labels_for(txs: list[dict], flip: bool = False) -> list[dict]:
    """Labels from the sources that may label approved transactions (chargeback, auto)."""
    out = []
    for t in txs:
        fraud = (t["amount"] > 500) != flip
        out.append({"transaction_id": t["transaction_id"], "label": "fraud" if fraud else "legit",
                    "source": "chargeback" if fraud else "auto"})
    return out


def train_offline(start: int, n: int, flip: bool) -> dict:
    """A model trained away from the pipeline (the core's features), with true or flipped labels."""
    core = ScoringCore(ModelHandle(LinearChampion()))
    txs = [txn(i) for i in range(start, start + n)]
    out = core.process([dumps(t) for t in txs])
    model = LinearChampion()
    for _ in range(3):
        for d, f in zip(out.decisions, out.features, strict=True):
            model.learn_one(f, int((d["amount"] > 500) != flip))
    return model.to_state()


def registry(settings, key: bytes | None = None) -> RegistryView:
    async def read() -> RegistryView:
        async with RegistryClient(settings, key) as client:
            return await client.read()

    return asyncio.run(read())


def submit(settings, lineage: str, state: dict) -> None:
    async def go() -> None:
        async with RegistryClient(settings) as client:
            await client.submit(lineage, state, "trained offline", "test")

    asyncio.run(go())


def newest(view: RegistryView, lineage: str) -> dict | None:
    found = [v for v in view.versions() if v["lineage"] == lineage]
    return found[-1] if found else None


class Stream:
    """Produces numbered transactions and reads back their decisions."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.next = 0

    def send(self, n: int) -> list[dict]:
        txs = [txn(i) for i in range(self.next, self.next + n)]
        self.next += n
        produce_json(self.settings, "transactions", txs, "account_id")
        return txs

    def decisions(self) -> dict[str, dict]:
        return {d["transaction_id"]: d for d in read_json(self.settings, "scores", self.next)}

    def probe_until(self, accept: Callable[[str], bool], timeout_s: float = 10.0) -> float:
        """Send small batches until all of one batch's decisions carry an accepted version."""
        started = time.monotonic()
        while True:
            ids = [t["transaction_id"] for t in self.send(5)]
            got = self.decisions()
            if all(accept(got[i]["model_version"]) for i in ids):
                return time.monotonic() - started
            assert time.monotonic() - started < timeout_s, [got[i]["model_version"] for i in ids]


def teach(stream: Stream, worker, n: int, flip: bool = False) -> list[dict]:
    """Score ``n`` transactions, wait until the learner recorded them, then label them."""
    recorded = worker.metric("flagstream_decisions_recorded_total")
    txs = stream.send(n)
    wait_until(lambda: worker.metric("flagstream_decisions_recorded_total") >= recorded + n, 30,
               "decisions recorded by the learner", worker)
    produce_json(stream.settings, "feedback", labels_for(txs, flip), "transaction_id")
    return txs


def cli(settings, monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("FLAGSTREAM_BROKER", settings.broker)
    monkeypatch.setenv("FLAGSTREAM_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("FLAGSTREAM_DATA_DIR", settings.data_dir)  # the learner's key file is there
    capsys.readouterr()
    code = cli_main(["models", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def start_together(worker_factory, *specs: tuple[str, dict]) -> list:
    """Start workers in parallel (each on its own web port); returns them in order."""

    def start(k: int):
        time.sleep(0.3 * k)  # the fixture names log files by count: register one at a time
        role, overrides = specs[k]
        return worker_factory(role, **{"web_port": free_port(), **overrides})

    with ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(start, range(len(specs))))


def lifecycle_env(monkeypatch, challengers: str = "", min_labels: int = 100_000,
                  model: str = "linear") -> None:
    """The gate's and the registry's mechanics, on a linear champion unless ``model`` says."""
    monkeypatch.setenv("FLAGSTREAM_MODEL", model)
    monkeypatch.setenv("FLAGSTREAM_CHALLENGERS", challengers)
    monkeypatch.setenv("FLAGSTREAM_GATE_MIN_LABELS", str(min_labels))
    monkeypatch.setenv("FLAGSTREAM_GATE_COOLDOWN_LABELS", str(min(min_labels, 2_000)))
    monkeypatch.setenv("FLAGSTREAM_GATE_MIN_FRAUDS", "1")
    monkeypatch.setenv("FLAGSTREAM_MODEL_PUBLISH_INTERVAL_S", "0.2")


def test_promote_and_rollback_change_new_decisions_within_seconds(
    settings, worker_factory, monkeypatch, capsys
):
    lifecycle_env(monkeypatch, challengers="lr-fast:learning_rate=0.3")
    # workers and the CLI sign and verify
    monkeypatch.setenv("FLAGSTREAM_MODEL_HMAC_KEY", "registry-test-key")
    settings = settings.with_(model_hmac_key=Secret("registry-test-key"))  # for the test's own reads
    worker = worker_factory()
    stream = Stream(settings)
    teach(stream, worker, 200)
    view = wait_until(lambda: (v := registry(settings)).champion and v.champion["labels"] == 200
                      and newest(v, "lr-fast")["labels"] == 200 and v, 30, "learned versions", worker)
    champion, challenger = view.champion["version"], newest(view, "lr-fast")["version"]
    assert not registry(settings, b"registry-test-key").refused
    forged_key = registry(settings, b"another key")
    assert forged_key.refused and not forged_key.records  # every record is signed

    code, out, _ = cli(settings, monkeypatch, capsys, "list")
    assert code == 0 and champion in out and challenger in out and "shadow" in out, out
    code, out, _ = cli(settings, monkeypatch, capsys, "promote", challenger, "--reason", "faster")
    assert code == 0 and challenger in out
    assert stream.probe_until(lambda v: v == challenger) < 10
    view = registry(settings)
    assert view.status(view.version(champion)) == "shadow"  # demoted, still learning in shadow
    assert view.seat["stack"] == [champion]

    code, out, _ = cli(settings, monkeypatch, capsys, "rollback", "--reason", "precision fell")
    assert code == 0, out
    assert stream.probe_until(lambda v: v == champion) < 10
    view = registry(settings)
    assert view.seat["action"] == "rollback" and view.seat["version"] == champion
    assert view.status(view.version(challenger)) == "retired"
    code, _, err = cli(settings, monkeypatch, capsys, "promote", "nope-000009", "--reason", "x")
    assert code == 2 and "unknown version" in err
    code, out, _ = cli(settings, monkeypatch, capsys, "show", champion)
    assert code == 0 and [h["status"] for h in loads(out)["history"]][-2:] == ["shadow", "champion"]

    # a champion record altered after sealing is refused; decisions keep the good version
    forged = dict(view.champion, sequence=999_999, version="lr-999999")
    envelope = loads(seal(forged))
    envelope["payload"]["state"]["intercept"] = 40.0  # flags everything, if it were loaded
    asyncio.run(produce(settings, "models", [(CHAMPION, dumps(envelope))]))
    wait_until(lambda: worker.metric("flagstream_model_records_refused_total") >= 1, 15,
               "tampered record refused", worker)
    stream.probe_until(lambda v: v == champion, timeout_s=3)


def test_gate_promotes_a_better_challenger_and_refuses_a_label_flipped_one(
    settings, worker_factory, monkeypatch
):
    lifecycle_env(monkeypatch, min_labels=80)
    worker = worker_factory()
    submit(settings, "good", train_offline(100_000, 400, flip=False))
    submit(settings, "flipped", train_offline(100_000, 400, flip=True))
    wait_until(lambda: (v := registry(settings)) and newest(v, "good") and newest(v, "flipped"),
               20, "candidates shadowed", worker)
    stream = Stream(settings)
    teach(stream, worker, 200)
    view = wait_until(lambda: (v := registry(settings)).seat and v, 30, "a promotion", worker)
    assert view.seat["lineage"] == "good" and view.seat["by"] == "gate", view.seat
    flipped = newest(view, "flipped")
    assert flipped["gate"]["verdict"] == "refused" and flipped["status"] == "shadow"
    assert flipped["gate"]["loss"] > flipped["gate"]["champion_loss"]
    assert all(h["version"].split("-")[0] != "flipped" for h in view.seat["history"])
    assert worker.metric("flagstream_gate_refusals_total") >= 1
    assert worker.metric("flagstream_model_promotions_total") == 1
    assert stream.probe_until(lambda v: parse_version(v)[0] == "good") < 10


def test_a_degraded_champion_is_rolled_back_to_the_last_good_version(
    settings, worker_factory, monkeypatch, capsys
):
    lifecycle_env(monkeypatch)
    worker = worker_factory()
    stream = Stream(settings)
    teach(stream, worker, 300)
    good = wait_until(lambda: (v := registry(settings)).champion and v.champion["labels"] == 300
                      and v.champion["version"], 30, "champion learned", worker)
    submit(settings, "flipped", train_offline(100_000, 400, flip=True))
    bad = wait_until(lambda: (v := newest(registry(settings), "flipped")) and v["version"], 20,
                     "candidate shadowed", worker)
    assert cli(settings, monkeypatch, capsys, "promote", bad, "--reason", "trust me")[0] == 0
    stream.probe_until(lambda v: v == bad)
    teach(stream, worker, 300)  # true labels on decisions the bad champion made
    view = wait_until(lambda: (v := registry(settings)).seat["action"] == "rollback" and v, 30,
                      "automatic rollback", worker)
    assert view.seat["by"] == "drift" and view.seat["version"] == good, view.seat
    assert "drift" in view.seat["reason"]
    assert view.status(view.version(bad)) == "retired"
    assert worker.metric("flagstream_drift_alarms_total") >= 1
    assert worker.metric("flagstream_model_rollbacks_total") == 1
    assert stream.probe_until(lambda v: parse_version(v)[0] == "lr") < 10


def test_learner_killed_mid_learning_resumes_with_identical_weights(
    settings, worker_factory, monkeypatch, tmp_path
):
    lifecycle_env(monkeypatch, challengers="lr-fast:learning_rate=0.2", model="binned")
    s1 = settings.with_(partitions=1, model="binned")  # one feedback partition: one learning order to compare
    worker, _ = start_together(worker_factory, ("learner", {"partitions": 1}),
                               ("scorer", {"partitions": 1}))  # the learner is killed, not the scorer
    stream = Stream(s1)
    txs = teach(stream, worker, 300)
    later = stream.send(600)
    wait_until(lambda: worker.metric("flagstream_decisions_recorded_total") >= 900, 30,
               "decisions recorded by the learner", worker)
    # six rounds of 100 new labels, each with 50 copies of labels learned before (repeats)
    rounds = [labels_for(later[100 * k:100 * (k + 1)]) + labels_for(txs[50 * k:50 * (k + 1)])
              for k in range(6)]
    wait_until(lambda: worker.metric("flagstream_feedback_labels_total") >= 300, 30, "round 0")

    def more() -> None:
        for r in rounds:
            produce_json(s1, "feedback", r, "transaction_id")
            time.sleep(0.25)

    feeder = threading.Thread(target=more)
    feeder.start()
    wait_until(lambda: worker.metric("flagstream_feedback_labels_total") >= 400, 30, "learning")
    at_kill = worker.metric("flagstream_feedback_labels_total")
    worker.kill()
    feeder.join()
    snapshots = sorted((tmp_path / "data" / "learner" / "models").glob("learner-*.json"))
    assert len(snapshots) >= 2
    newest_file = snapshots[-1]  # a torn or tampered newest snapshot: refused, an older one used
    newest_file.write_bytes(newest_file.read_bytes()[:-40])
    worker.start()
    total = 300 + len(later)  # effective labels: one per transaction
    view = wait_until(lambda: (v := registry(s1)).champion
                      and v.champion["labels"] >= total and newest(v, "lr-fast")["labels"] >= total
                      and v, 120, "all feedback learned after the restart", worker)
    log = worker.run_log().decode(errors="replace")
    assert "learner restored from" in log and f"refusing snapshot {newest_file}" in log
    assert worker.metric("flagstream_model_records_refused_total") >= 1
    assert at_kill < total

    scored = read_json(s1, "scores", len(txs) + len(later))
    features = {d["transaction_id"]: d["features"] for d in scored}
    assert len(scored) == len(features) == len(txs) + len(later)
    feedback = asyncio.run(read_topic(s1, "feedback", 300 + sum(len(r) for r in rounds)))
    champion, fast = s1.champion_model(), new_model("binned", 0.2)
    assert champion.kind == "binned" and view.champion["version"].startswith("gam-")
    learned: set[str] = set()
    for record in feedback:  # the run that was never interrupted: each first label, in order
        fb = loads(record.value)
        if fb["transaction_id"] in learned:
            continue
        learned.add(fb["transaction_id"])
        for model in (champion, fast):
            model.learn_one(features[fb["transaction_id"]], int(fb["label"] == "fraud"))
    assert view.champion["state"] == champion.to_state()
    assert newest(view, "lr-fast")["state"] == fast.to_state()


def test_two_scorers_hot_swap_without_restart_or_gap(settings, worker_factory, tmp_path,
                                                     monkeypatch):
    lifecycle_env(monkeypatch)
    # data directories of their own, as on separate hosts: the model key is configured
    monkeypatch.setenv("FLAGSTREAM_MODEL_HMAC_KEY", "hot-swap-test-key")
    settings = settings.with_(model_hmac_key=Secret("hot-swap-test-key"))
    learner, *scorers = start_together(
        worker_factory, ("learner", {"threshold": 0.3}),  # the scorers start from 0.5
        *[("scorer", {"data_dir": str(tmp_path / f"scorer{k}")}) for k in range(2)])
    pids = [w.proc.pid for w in scorers]
    stream = Stream(settings)
    sent: list[dict] = []
    for k in range(24):  # a steady stream; labels for its early part arrive while it flows
        sent += stream.send(25)
        if k in (7, 14):  # decisions made at least two batches ago
            produce_json(settings, "feedback", labels_for(sent[-200:-50]), "transaction_id")
        time.sleep(0.25)
    decisions = read_json(settings, "scores", len(sent))
    assert sorted(d["transaction_id"] for d in decisions) == sorted(t["transaction_id"] for t in sent)
    versions = [d["model_version"] for d in sorted(decisions, key=lambda d: d["scored_at_ms"])]
    assert versions[0] == "lr-000000" and len(set(versions)) >= 2

    def healthz(w) -> str:
        with urllib.request.urlopen(w.url + "/healthz", timeout=5) as resp:
            return loads(resp.read())["model_version"]

    def swapped() -> bool:
        champion = registry(settings).champion
        return (champion is not None and champion["labels"] >= 150
                and all(healthz(w) == champion["version"] for w in scorers))

    wait_until(swapped, 20, "both scorers on the learner's newest version", learner)
    for w, pid in zip(scorers, pids, strict=True):
        assert w.proc.poll() is None and w.proc.pid == pid  # no restart
        assert w.metric("flagstream_model_swaps_total") >= 1
        assert w.metric("flagstream_decisions_total") > 0  # both were scoring
    assert sum(w.metric("flagstream_decisions_total") for w in scorers) == len(sent)
    assert learner.metric("flagstream_model_updates_total") >= 1
    assert PARTITION == 0
    # the threshold travels on the models topic: every scorer decides with the learner's
    learned = learner.metric("flagstream_threshold")
    assert 0.0 < learned < 0.5
    tail = stream.send(25)
    decided = {d["transaction_id"]: d for d in read_json(settings, "scores", len(sent) + len(tail))}
    assert {decided[t["transaction_id"]]["threshold"] for t in tail} == {learned}
    assert all(w.metric("flagstream_threshold") == learned for w in scorers)


def test_a_challenger_configured_after_a_restart_joins_the_restored_learner(
    settings, worker_factory, monkeypatch
):
    """A learner resumed from its snapshot keeps its challengers and takes new ones from
    FLAGSTREAM_CHALLENGERS: the way to try another model kind on a running deployment."""
    lifecycle_env(monkeypatch)  # a linear champion, no challengers
    worker = worker_factory()
    stream = Stream(settings)
    teach(stream, worker, 100)
    wait_until(lambda: (v := registry(settings)).champion and v.champion["labels"] == 100, 30,
               "champion learned", worker)
    worker.stop()
    monkeypatch.setenv("FLAGSTREAM_CHALLENGERS", "gam:model=binned")
    worker.start()
    teach(stream, worker, 100)
    view = wait_until(lambda: (v := registry(settings)) and (g := newest(v, "gam")) and g["labels"] == 100
                      and v, 60, "the new challenger learned", worker)
    assert "learner restored from" in worker.run_log().decode(errors="replace")
    assert view.champion["version"].startswith("lr-") and view.champion["labels"] == 200
    assert newest(view, "gam")["state"]["kind"] == "binned"
