"""Honest feedback without a broker: one effective label per transaction, trust, budgets, bounds.

Each test replays a finding of issue #11 against the worker's learner (its ledger built
from the worker's settings) and the operating point the worker follows.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_review_queue import sign_in, web_client  # noqa: F401 (the review page's fixture)

from flagstream.codec import dumps
from flagstream.features.layout import N_FEATURES
from flagstream.scoring.handle import ModelHandle
from flagstream.scoring.label_ledger import DictMemory, HourlyBudget, LabelLedger
from flagstream.scoring.learner import Learner
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.sinks.metrics import PipelineMetrics
from flagstream.streams.config import Settings
from flagstream.streams.learner_agents import follow_operating_point
from flagstream.streams.learner_runtime import label_ledger

NOW_MS = 1_700_000_000_000
RNG = np.random.default_rng(11)
FEATURES = RNG.random((600, N_FEATURES)) * 20


def decision(i: int, flagged: bool, score: float = 0.3, merchant: str = "m-1") -> dict:
    return {"features": FEATURES[i].tolist(), "merchant_id": merchant, "event_time_ms": NOW_MS,
            "scored_at_ms": NOW_MS, "score": score, "decision": "review" if flagged else "approve"}


#: t-0..t-199 flagged, t-200..t-599 approved
DECISIONS = {f"t-{i}": decision(i, flagged=i < 200) for i in range(600)}


def label(tx: str, value: str, source: str = "", reviewer: str = "") -> bytes:
    record = {"transaction_id": tx, "label": value}
    if source:  # (without one, a label says it is a review)
        record["source"] = source
    if reviewer:
        record["reviewer"] = reviewer
    return dumps(record)


def worker_learner(settings: Settings | None = None, ledger: LabelLedger | None = None) -> Learner:
    """The learner as the worker builds it (its ledger from the settings)."""
    s = settings or Settings()
    return Learner(ModelHandle(LinearChampion(learning_rate=s.learning_rate)), DECISIONS.get,
                   clock_ms=lambda: NOW_MS, publish_each_batch=False,
                   ledger=ledger or label_ledger(s, DictMemory()))


def mean_score(learner: Learner, rows: range) -> float:
    return float(learner.handle.model.score_batch(FEATURES[list(rows)]).mean())


def learn_in_batches(learner: Learner, values: list[bytes], start: int = 0, size: int = 500):
    """Learn ``values`` as a worker would: batches with consecutive offsets on partition 0."""
    outcomes = []
    for lo in range(0, len(values), size):
        chunk = values[lo:lo + size]
        outcomes.append(learner.learn(chunk, list(range(start + lo, start + lo + len(chunk))), 0))
    return outcomes


def test_2000_copies_of_one_chargeback_move_nothing_but_one_label():
    learner = worker_learner()
    before = mean_score(learner, range(200, 400))  # 200 unrelated transactions: 0.01
    flood = [label("t-250", "fraud", "chargeback")] * 2_000
    outcomes = learn_in_batches(learner, flood, start=1_000)
    after = mean_score(learner, range(200, 400))

    assert sum(o.learned for o in outcomes) == 1
    assert sum(o.repeats for o in outcomes) == 1_999
    assert not any(o.rejections for o in outcomes)
    assert sum(float(o.activity.frauds.sum()) for o in outcomes) == 1.0  # one merchant fraud
    assert abs(after - before) < 0.01, (before, after)

    unguarded = Learner(ModelHandle(LinearChampion()), DECISIONS.get, clock_ms=lambda: NOW_MS,
                        publish_each_batch=False)  # what the flood did without the ledger
    learn_in_batches(unguarded, flood, start=1_000)
    assert mean_score(unguarded, range(200, 400)) > 0.75


def test_3000_conflicting_copies_leave_one_effective_label_and_dead_letters():
    learner = worker_learner()
    first = learner.learn([label("t-5", "fraud", "review", "ana")], [0], 0)
    state = learner.handle.model.to_state()
    conflicting = [label("t-5", "legit", "review", f"r-{k % 7}") for k in range(2_000)]
    conflicting += [label("t-5", "legit", "auto")] * 1_000
    outcomes = learn_in_batches(learner, conflicting, start=1)

    assert first.learned == 1
    assert sum(o.learned for o in outcomes) == 0
    reasons = [r.reason for o in outcomes for r in o.rejections]
    assert reasons == ["conflicting_label"] * 3_000
    assert learner.handle.model.to_state() == state  # nothing learned from them
    assert learner.ledger is not None and learner.ledger.memory.get("t-5")["label"] == 1


def test_a_more_trusted_source_replaces_the_label_once():
    learner = worker_learner()
    auto = learner.learn([label("t-300", "legit", "auto")], [0], 0)
    chargeback = learner.learn([label("t-300", "fraud", "chargeback")] * 3, [1, 2, 3], 0)
    review = learner.learn([label("t-300", "legit", "review", "ana")], [4], 0)

    assert (auto.learned, chargeback.learned, chargeback.replaced, chargeback.repeats) == (1, 1, 1, 2)
    assert chargeback.activity.frauds.tolist() == [1.0]  # the merchant's fraud, counted once
    assert [r.reason for r in review.rejections] == ["not_flagged"]  # t-300 was approved
    flagged = learner.learn([label("t-7", "legit", "review", "ana"),
                             label("t-7", "legit", "auto"),      # the same label: a repeat
                             label("t-7", "fraud", "auto")], [5, 6, 7], 0)  # auto never says fraud
    assert (flagged.learned, flagged.repeats) == (1, 1)
    assert [r.reason for r in flagged.rejections] == ["invalid_label"]


def test_only_chargebacks_and_auto_labels_may_label_an_approved_transaction():
    learner = worker_learner()
    out = learner.learn([label("t-400", "fraud", "review", "ana"), label("t-401", "fraud"),
                         label("t-402", "fraud", "chargeback"), label("t-403", "legit", "auto")],
                        [0, 1, 2, 3], 0)
    assert [(r.index, r.reason) for r in out.rejections] == [(0, "not_flagged"), (1, "not_flagged")]
    assert out.learned == 2


def test_a_relearned_record_is_learned_again_without_new_merchant_activity():
    memory = DictMemory()
    settings = Settings()
    first = worker_learner(ledger=label_ledger(settings, memory))
    first.learn([label("t-9", "fraud", "review", "ana")], [41], 2)
    restored = worker_learner(ledger=label_ledger(settings, memory))  # from an older snapshot
    again = restored.learn([label("t-9", "fraud", "review", "ana")], [41], 2)
    copy = restored.learn([label("t-9", "fraud", "review", "ana")], [42], 2)
    assert (again.learned, again.repeats, len(again.activity)) == (1, 0, 0)
    assert restored.handle.model.to_state() == first.handle.model.to_state()
    assert (copy.learned, copy.repeats) == (0, 1)


def test_one_reviewer_or_source_is_held_to_its_hourly_budget():
    settings = Settings(feedback_labels_per_reviewer_hour=50, feedback_labels_per_source_hour=120)
    clock = [NOW_MS]
    learner = worker_learner(settings)
    learner.clock_ms = lambda: clock[0]
    mallory = [label(f"t-{i}", "fraud", "review", "mallory") for i in range(100)]
    out = learner.learn(mallory, list(range(100)), 0)
    assert out.learned == 50
    assert [r.reason for r in out.rejections] == ["rate_limited"] * 50
    # made-up reviewer names do not escape the source's budget
    others = [label(f"t-{i}", "fraud", "review", f"name-{i}") for i in range(100, 200)]
    out = learner.learn(others, list(range(100, 200)), 0)
    assert out.learned == 70 and len(out.rejections) == 30
    assert learner.learn([label("t-450", "fraud", "chargeback")], [200], 0).learned == 1
    clock[0] += 3_600_000  # the next hour: a new budget (refused labels may be sent again)
    assert learner.learn(mallory[50:60], list(range(201, 211)), 0).learned == 10


def test_400_copies_of_one_label_cannot_move_the_threshold():
    s = Settings()
    op = s.operating_point()
    p = SimpleNamespace(core=SimpleNamespace(policy=op), metrics=PipelineMetrics())
    DECISIONS["t-low"] = {**decision(0, flagged=False), "score": 0.01}
    try:
        learner = worker_learner(s)
        for outcome in learn_in_batches(learner, [label("t-low", "fraud", "chargeback")] * 400,
                                        size=20):
            follow_operating_point(p, outcome.labelled)
    finally:
        del DECISIONS["t-low"]
    assert op.threshold == s.threshold


@pytest.mark.parametrize("said", ["fraud", "legit"])
def test_labels_never_move_the_threshold_past_its_floor_or_ceiling(said):
    s = Settings(review_capacity_per_day=0.0)  # no capacity: only the bounds hold it
    op = s.operating_point()
    rng = np.random.default_rng(1)
    for hour in range(24 * 20):
        scores = rng.random(500)
        flagged = op.flags(scores)
        op.observe_traffic(scores, flagged, hour * 3_600.0)
        for score, flag in zip(scores[:50], flagged[:50], strict=True):  # every label the same
            op.observe(score, said, flagged=bool(flag), at=hour * 3_600.0)
        op.update()
        assert s.threshold_floor <= op.threshold <= s.threshold_ceiling


def test_an_initial_threshold_outside_the_bounds_is_brought_inside():
    assert Settings(threshold=0.0).operating_point().threshold == Settings().threshold_floor
    assert Settings(threshold=1.0).operating_point().threshold == Settings().threshold_ceiling
    with pytest.raises(ValueError, match="floor"):
        OperatingPoint(floor=0.9, ceiling=0.1)


def test_hourly_budget_keeps_no_entries_for_refused_names():
    budget = HourlyBudget(per_reviewer=5, per_source=10)
    for k in range(1_000):
        budget.take("review", f"name-{k}", NOW_MS)
    assert len(budget.counts) == 11  # the source and the ten names it admitted


async def test_the_review_page_labels_with_the_signed_in_reviewer_only(web_client):  # noqa: F811
    client, svc, sent = web_client
    csrf = await sign_in(client, "ana")
    item = svc.queue.page(0, 1)[1][0]
    forged = {"label": "fraud", "reviewer": "mallory", "source": "chargeback",
              "transaction_id": "t-somebody-else"}
    resp = await client.post(f"/review/api/items/{item.item_id}/decision", json=forged,
                             headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    key, label = sent[0]
    assert key == item.transaction_id.encode() and label["transaction_id"] == item.transaction_id
    assert (label["reviewer"], label["source"]) == ("ana", "review")
