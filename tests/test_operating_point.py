"""The operating point follows its target from labelled feedback, in bounded, explainable steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.scoring.operating_point import OperatingPoint, ThreeWayPolicy, recall_threshold, wilson
from flagstream.streams.core import ScoringCore


def feed(op: OperatingPoint, frauds, legits, at=None) -> None:
    for s in frauds:
        op.observe(s, "fraud", at=at)
    for s in legits:
        op.observe(s, 0, at=at)


def scored(seed: int, n_fraud: int = 300, n_legit: int = 3_000):
    rng = np.random.default_rng(seed)
    return rng.beta(6, 2, n_fraud), rng.beta(1.5, 6, n_legit)


def test_moves_down_when_feedback_says_recall_is_below_target():
    op = OperatingPoint(target_recall=0.9, min_labels=100, initial_threshold=0.8, max_step=0.05)
    frauds, legits = scored(1)
    feed(op, frauds, legits)
    recall_before = op.recall_at(0.8)[0]
    est = op.update()
    assert recall_before < 0.9
    assert est.move == "down" and op.threshold == pytest.approx(0.75), "one bounded step"
    for _ in range(40):
        est = op.update()
    assert op.threshold == pytest.approx(est.target_threshold)
    assert est.recall >= 0.9 and est.move == "hold"


def test_moves_up_when_recall_is_comfortably_above_target_and_false_alarms_are_high():
    op = OperatingPoint(target_recall=0.7, min_labels=100, initial_threshold=0.05, max_step=0.05)
    frauds, legits = scored(2)
    feed(op, frauds, legits)
    before = op.recall_at(0.05)
    est = op.update()
    assert before[1] > 0.7, "the lower Wilson bound is above target: comfortable"
    assert est.move == "up" and op.threshold == pytest.approx(0.10)
    assert est.precision is not None and est.precision > 300 / 3_300


def test_holds_when_recall_is_above_target_but_not_comfortably():
    frauds = np.linspace(0.3, 0.95, 40)
    op = OperatingPoint(target_recall=0.8, min_labels=20, min_frauds=10, max_step=0.1,
                        initial_threshold=float(recall_threshold(frauds, 0.8)) - 0.01)
    feed(op, frauds, np.linspace(0.0, 0.6, 60))
    recall, low, _ = op.recall_at(op.threshold)
    assert recall >= 0.8 and low <= 0.8
    assert op.update().move == "hold"


def test_holds_without_enough_labels_or_without_false_alarms_to_save():
    op = OperatingPoint(target_recall=0.8, min_labels=500, initial_threshold=0.9)
    feed(op, *scored(3, 30, 100))
    assert op.update().move == "hold" and op.threshold == 0.9
    clean = OperatingPoint(target_recall=0.5, min_labels=10, min_frauds=5, initial_threshold=0.1)
    feed(clean, np.linspace(0.6, 0.99, 50), np.linspace(0.0, 0.05, 50))  # nothing legit above 0.1
    assert clean.update().move == "hold"


def test_immature_labels_are_left_out_until_their_chargebacks_can_have_arrived():
    now = [1_000_000.0]
    op = OperatingPoint(target_recall=0.8, min_labels=10, min_frauds=5, maturity_s=30 * 86_400,
                        clock=lambda: now[0])
    feed(op, [0.9] * 20, [0.1] * 20, at=now[0] - 31 * 86_400)
    feed(op, [0.2] * 20, [], at=now[0] - 86_400)  # recent; most of their chargebacks are still due
    assert op.labelled()[0].size == 40 and op.recall_at(0.5)[0] == 1.0
    now[0] += 30 * 86_400
    assert op.labelled()[0].size == 60 and op.recall_at(0.5)[0] == pytest.approx(0.5)


def test_sliding_window_forgets_old_labels():
    op = OperatingPoint(target_recall=0.8, window=100)
    feed(op, [0.9] * 100, [])
    feed(op, [0.1] * 100, [])
    assert op.recall_at(0.5)[0] == 0.0


def test_capacity_target_flags_no_more_than_people_can_review():
    now = [0.0]
    op = OperatingPoint(target_recall=None, capacity_per_day=1_000, min_labels=0, initial_threshold=0.2,
                        max_step=0.05, clock=lambda: now[0])
    rng = np.random.default_rng(4)
    for hour in range(25):  # 10,000 transactions an hour
        now[0] = hour * 3_600.0
        op.observe_traffic(rng.beta(1.5, 8, 10_000))
    assert op.alarms_per_day(0.2) > 1_000
    target = op.capacity_threshold()
    assert op.alarms_per_day(target) <= 1_000 < op.alarms_per_day(target - 0.001)
    est = op.update()
    assert est.move == "up" and op.threshold == pytest.approx(0.25)
    for _ in range(50):
        est = op.update()
    assert op.threshold == pytest.approx(target) and est.alarms_per_day <= 1_000
    low = OperatingPoint(target_recall=None, capacity_per_day=10**6, min_labels=0, initial_threshold=0.5,
                         clock=lambda: now[0])
    low._traffic = op._traffic
    assert low.update().move == "down", "far under capacity: flag more"


def test_capacity_wins_over_an_unaffordable_recall_target():
    now = [0.0]
    op = OperatingPoint(target_recall=0.99, capacity_per_day=100, min_labels=10, min_frauds=5,
                        initial_threshold=0.5, max_step=1.0, clock=lambda: now[0],
                        ceiling=1.0)  # capacity needs a threshold above the default ceiling
    feed(op, np.linspace(0.05, 0.95, 50), np.linspace(0.0, 0.5, 50))
    for hour in range(3):
        now[0] = hour * 3_600.0
        op.observe_traffic(np.random.default_rng(hour).uniform(0, 1, 1_000))
    est = op.update()
    assert not est.achievable and op.alarms_per_day(op.threshold) <= 100


def test_deterministic_with_a_seed():
    def run(seed: int):
        op = OperatingPoint(target_recall=0.85, min_labels=100, initial_threshold=0.6, seed=seed)
        feed(op, *scored(5))
        thresholds = [op.update().threshold for _ in range(5)]
        return thresholds, op.bootstrap(100)

    assert run(11) == run(11)
    thresholds, (low, high) = run(11)
    assert low <= recall_threshold(scored(5)[0], 0.85) <= high


def test_wilson_interval_narrows_with_more_labels():
    wide, narrow = wilson(8, 10), wilson(800, 1_000)
    assert wide[0] < 0.8 < wide[1] and narrow[0] < 0.8 < narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5


def test_replaces_the_fixed_threshold_in_the_scoring_core():
    core = ScoringCore()
    core.policy = OperatingPoint(initial_threshold=0.0)
    out = core.process([b'{"transaction_id":"t-1","account_id":"c-1","merchant_id":"m-1",'
                        b'"amount":10.0,"timestamp":"2018-04-01T10:00:00Z"}'], offsets=[0])
    assert [f["transaction_id"] for f in out.flagged] == ["t-1"]
    assert out.decisions[0]["threshold"] == 0.0


def test_three_way_policy_tracks_automation_and_overturns():
    policy = ThreeWayPolicy(low=0.1, high=0.9)
    routes = policy.route(np.array([0.01, 0.05, 0.5, 0.95, 0.99]))
    assert routes.tolist() == ["approve", "approve", "review", "decline", "decline"]
    assert policy.automated_share() == pytest.approx(0.8)
    policy.record(0.05, "fraud")   # a chargeback on an auto-approval
    policy.record(0.95, "fraud")   # auto-decline confirmed
    policy.record(0.99, "legit")   # auto-decline overturned
    policy.record(0.5, "legit")    # reviewed by a person: not automatic
    assert policy.overturn_rate() == pytest.approx(2 / 3)


scores = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    frauds=st.lists(scores, min_size=10, max_size=300),
    legits=st.lists(scores, max_size=300),
    target=st.floats(0.05, 1.0),
    start=scores,
)
def test_recall_at_the_chosen_threshold_meets_the_target_when_achievable(frauds, legits, target, start):
    op = OperatingPoint(target_recall=target, min_labels=10, min_frauds=10, initial_threshold=start,
                        max_step=1.0, floor=0.0, ceiling=1.0)
    feed(op, frauds, legits)
    est = op.update()
    fr = np.asarray(frauds)
    chosen = est.target_threshold
    assert (fr >= chosen).mean() >= target - 1e-9, "the target threshold meets the target"
    higher = fr[fr > chosen]
    if higher.size:
        assert (fr >= higher.min()).mean() < target, "and is the highest that does (fewest alarms)"
    assert (fr >= op.threshold).mean() >= target - 1e-9, "after one unbounded step, so does the threshold"
    assert est.recall == pytest.approx((fr >= op.threshold).mean())
