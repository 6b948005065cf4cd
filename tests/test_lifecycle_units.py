"""The learner's lifecycle without a broker: idempotent replay, seats, versions, gate, drift."""

from __future__ import annotations

import numpy as np
import pytest

from flagstream.codec import dumps, loads
from flagstream.features.layout import N_FEATURES
from flagstream.scoring.challengers import Challenger, ShadowSet, challengers_from_spec, parse_spec
from flagstream.scoring.gate import Gate, GateConfig, compare_on, rollback_candidates
from flagstream.scoring.handle import ModelHandle, new_model, parse_version
from flagstream.scoring.learner import Learner
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.registry import CHAMPION, seat_change, version_key

RNG = np.random.default_rng(7)
FEATURES = RNG.random((60, N_FEATURES)) * 50
DECISIONS = {
    f"t-{i}": {"features": FEATURES[i].tolist(), "merchant_id": "m-1", "event_time_ms": 0,
               "scored_at_ms": 0, "score": 0.01, "model_version": "lr-000000"}
    for i in range(60)
}


def feedback(i: int) -> bytes:
    label = "fraud" if FEATURES[i % 60, 0] > 35 else "legit"
    return dumps({"transaction_id": f"t-{i % 60}", "label": label})


def make_learner(kind: str = "linear") -> Learner:
    shadow = ShadowSet(challengers_from_spec("fast:learning_rate=0.3", new_model(kind)))
    return Learner(ModelHandle(new_model(kind)), DECISIONS.get, clock_ms=lambda: 0,
                   shadow=shadow, gate=Gate(GateConfig(min_labels=10)), publish_each_batch=False)


def states(learner: Learner) -> tuple[dict, dict]:
    return learner.handle.model.to_state(), learner.shadow.get("fast").model.to_state()


@pytest.mark.parametrize("kind", ["linear", "binned"])
def test_restored_learner_replaying_feedback_ends_with_the_uninterrupted_weights(kind):
    stream = {p: [(off, feedback(off * 3 + p)) for off in range(40)] for p in (0, 1)}
    straight = make_learner(kind)
    for lo in range(0, 40, 7):
        for p in (0, 1):
            chunk = stream[p][lo:lo + 7]
            straight.learn([v for _, v in chunk], [o for o, _ in chunk], p)

    first = make_learner(kind)
    for lo in range(0, 21, 7):  # partition 0 up to offset 20, partition 1 up to 13
        for p in (0, 1):
            if p == 1 and lo > 7:
                continue
            chunk = stream[p][lo:lo + 7]
            first.learn([v for _, v in chunk], [o for o, _ in chunk], p)
    snapshot = loads(dumps(first.to_state()))
    resumed = make_learner(kind)
    resumed.restore(snapshot)
    replayed = 0
    for lo in range(0, 40, 7):  # Faust redelivers from an older committed offset
        for p in (0, 1):
            chunk = stream[p][lo:lo + 7]
            replayed += resumed.learn([v for _, v in chunk], [o for o, _ in chunk], p).replayed
    assert replayed == 21 + 14
    assert states(resumed) == states(straight)
    assert resumed.handle.model.kind == resumed.shadow.get("fast").model.kind == kind
    assert resumed.offsets == straight.offsets == {0: 39, 1: 39}


def test_versions_are_unique_and_monotonic_across_lineages():
    learner = make_learner()
    learner.learn([feedback(i) for i in range(20)])
    first = learner.publication()
    keys = [k for k, _ in first]
    assert keys == [version_key("lr-000001"), CHAMPION, version_key("fast-000002")]
    assert learner.handle.version == "lr-000001" and not learner.dirty
    assert learner.publication() == []  # nothing learned since
    learner.learn([feedback(i) for i in range(20, 30)])
    again = [r["version"] for _, r in learner.publication()]
    assert again == ["lr-000003", "lr-000003", "fast-000004"]
    assert first[0][1]["parent"] is None and learner.publication() == []
    assert [t[0] for t in learner.timeline] == ["lr-000001", "lr-000003"]


def test_promotion_demotes_to_shadow_and_rollback_retires():
    learner = make_learner()
    learner.learn([feedback(i) for i in range(30)])
    records = dict(learner.publication())
    fast = records[version_key("fast-000002")]
    writes = dict(seat_change(records.get, fast, "promote", "better", "gate"))
    assert learner.adopt_seat(writes[b"seat"])
    assert learner.handle.version == "fast-000002" and learner.shadow.names() == ["lr"]
    assert learner.shadow.get("lr").origin == "demoted"
    assert learner.gate.pairs == {} and learner.gate.seat_n == 0
    assert not learner.adopt_seat(writes[b"seat"])  # applied once
    records.update(writes)
    back = dict(seat_change(records.get, records[version_key("lr-000001")], "rollback", "drift",
                            "drift"))
    assert learner.adopt_seat(back[b"seat"])
    assert learner.handle.version == "lr-000001" and learner.shadow.names() == []
    assert learner.allocate() == 3  # ids are never reused after a rollback


def test_candidates_join_the_shadow_set_once():
    learner = make_learner()
    candidate = {"id": "c1", "lineage": "cand", "state": LinearChampion().to_state(),
                 "reason": "offline", "by": "cli:ann", "submitted_at_ms": 5}
    record = learner.adopt_candidate(candidate)
    assert parse_version(record["version"])[0] == "cand"
    assert [h["status"] for h in record["history"]] == ["candidate", "shadow"]
    assert learner.adopt_candidate({**candidate, "id": "c2"}) is None  # name taken
    assert learner.adopted == ["c1", "c2"]


def test_shadow_cutoff_scores_only_the_suspicious_rows():
    heavy = Challenger("heavy", LinearChampion(prior=0.9), cutoff=0.5)
    shadow = ShadowSet([heavy])
    decisions = [{"score": s, "features": [1.0] * N_FEATURES} for s in (0.1, 0.7)]
    shadow.annotate(decisions)
    assert decisions[0]["shadow"]["heavy"] == 0.1  # below the cutoff: the champion's score
    assert abs(decisions[1]["shadow"]["heavy"] - 0.9) < 1e-6
    assert parse_spec("") == []


def test_gate_refuses_once_and_promotes_the_better_model():
    gate = Gate(GateConfig(min_labels=30, min_frauds=5, cooldown_labels=30, margin=0.05))
    for i in range(60):
        y = int(i % 4 == 0)
        gate.observe({"score": 0.3, "shadow": {"good": 0.8 if y else 0.05,
                                               "flipped": 0.05 if y else 0.8}}, y)
        verdicts = gate.verdicts(["good", "flipped"])
        if i == 29:
            assert [(v.action, v.lineage) for v in verdicts] == [
                ("refuse", "flipped"), ("promote", "good")]
        elif i > 29:
            assert [v.action for v in verdicts] == ["promote"]  # refusals are reported once
    report = gate.report(["good", "flipped"])
    assert report["flipped"]["verdict"] == "refused" and report["good"]["verdict"] == "passing"
    restored = Gate(gate.config)
    restored.restore(loads(dumps(gate.to_state())))
    assert restored.report() == gate.report()


def test_the_gate_does_not_flap_it_waits_for_evidence_after_every_change():
    gate = Gate(GateConfig(min_labels=50, min_frauds=10, cooldown_labels=500, margin=0.02))

    promotions = []
    for i in range(3_000):  # both beat the champion, each by a little more in turn
        y = int(i % 10 == 0)
        lead = "a" if (i // 100) % 2 == 0 else "b"
        shadow = {name: (0.9 if y else 0.05) if name == lead else (0.85 if y else 0.07)
                  for name in ("a", "b")}
        gate.observe({"score": 0.3, "shadow": shadow}, y)
        for v in gate.verdicts(["a", "b"]):
            if v.action == "promote":
                promotions.append((i, v.lineage))
                assert "frauds" in v.reason and "labels" in v.reason  # the evidence travels
                gate.reset_seat(keep_drift=True)  # what the learner does on a seat change
    gaps = [b - a for (a, _), (b, _) in zip(promotions, promotions[1:], strict=False)]
    assert len(promotions) >= 2 and all(g >= 500 for g in gaps), promotions
    assert len(promotions) <= 3_000 // 500, "a change per 500 labels at most, not per 100"

    few_frauds = Gate(GateConfig(min_labels=50, min_frauds=10, cooldown_labels=0))
    for i in range(400):  # plenty of labels, 4 frauds: no verdict either way
        y = int(i % 100 == 0)
        few_frauds.observe({"score": 0.3, "shadow": {"a": 0.9 if y else 0.05}}, y)
    assert few_frauds.verdicts(["a"]) == []


def test_drift_finds_the_version_before_a_bad_one_and_checks_it_does_better():
    good = LinearChampion()
    x_fraud, x_legit = np.full(N_FEATURES, 5.0), np.zeros(N_FEATURES)
    for _ in range(100):
        good.learn_one(x_fraud, 1)
        good.learn_one(x_legit, 0)
    gate = Gate(GateConfig())
    timeline = [["lr-000001", 0], ["lr-000004", 300]]
    for i in range(300):  # the good champion decides
        y = int(i % 5 == 0)
        gate.observe({"score": 0.9 if y else 0.05, "features": (x_fraud if y else x_legit).tolist(),
                      "model_version": "lr-000004"}, y)
    assert gate.take_alarm() is None
    timeline.append(["bad-000005", gate.labels_seen])
    width = None
    for i in range(300):  # a bad promotion decides
        y = int(i % 5 == 0)
        gate.observe({"score": 0.05 if y else 0.9, "features": (x_fraud if y else x_legit).tolist(),
                      "model_version": "bad-000005"}, y)
        width = width or gate.take_alarm()
    assert width
    candidates = rollback_candidates(timeline, gate.window(width))
    assert [v for v, _ in candidates][:1] == ["lr-000004"]
    mine, champ = compare_on(candidates[0][1], good, "logloss")
    assert mine < champ / 10


def test_no_rollback_on_less_evidence_than_a_promotion_needs():
    """An ADWIN alarm on a window with few frauds rolls nothing back: the class-balanced loss
    of a handful of labels flaps (a demo rolled back on 80 labels, none of them fraud)."""
    from flagstream.scoring.champion_lifecycle import ChampionLifecycle

    x_fraud, x_legit = np.full(N_FEATURES, 5.0), np.zeros(N_FEATURES)
    earlier = LinearChampion()
    registry = {version_key(v): {"version": v, "lineage": "lr", "state": earlier.to_state()}
                for v in ("lr-000001", "lr-000004")}
    gate = Gate(GateConfig(min_labels=200, min_frauds=20))
    learner = Learner(ModelHandle(LinearChampion()), DECISIONS.get, clock_ms=lambda: 0,
                      gate=gate, publish_each_batch=False)
    learner.timeline = [["lr-000001", 0], ["lr-000004", 0]]
    life = ChampionLifecycle(learner, registry.get, registry.__setitem__)
    for i in range(300):  # fine: confident and right, three frauds in all
        y = int(i % 100 == 0)
        gate.observe({"score": 0.9 if y else 0.05, "features": (x_fraud if y else x_legit).tolist(),
                      "model_version": "lr-000004"}, y)
    learner.timeline.append(["lr-000009", gate.labels_seen])
    writes, tried = [], []
    for _ in range(300):  # then confidently wrong on legitimate traffic: the alarm rings
        gate.observe({"score": 0.95, "features": x_legit.tolist(), "model_version": "lr-000009"}, 0)
        if gate.alarm:
            writes, tried = life.drift()
            break
    assert tried, "the alarm rang and a candidate was considered"
    assert writes == [] and life.changes == []
    assert "too little evidence" in tried[0] and "needs 20 of each class" in tried[0]


def test_the_gate_pairs_only_the_seated_challengers_whatever_a_decision_names():
    """A decision read back from ``scores`` may carry any ``shadow`` names: each was a
    pairing the gate kept (and snapshotted, and reported) for ever. Only the challengers
    seated are paired now."""
    named = {tx: {**d, "shadow": {"fast": 0.3, **{f"made-up-{k}": 0.5 for k in range(500)}}}
             for tx, d in DECISIONS.items()}
    learner = Learner(ModelHandle(new_model("linear")), named.get, clock_ms=lambda: 0,
                      shadow=ShadowSet(challengers_from_spec("fast:learning_rate=0.3", new_model("linear"))),
                      gate=Gate(GateConfig(min_labels=10)), publish_each_batch=False)
    learner.learn([feedback(i) for i in range(30)], list(range(30)), 0)
    assert learner.gate is not None and set(learner.gate.pairs) == {"fast"}
    assert learner.gate.pairs["fast"].n == 30
