"""The operating point follows its business target from delayed labels and cannot run away."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagstream.scoring.operating_point import OperatingPoint, by_event_hour, by_event_hour_reference, wilson
from flagstream.scoring.policy import FixedThreshold, ThresholdPolicy
from flagstream.scoring.score_tally import BINS, ScoreTally, grid_index
from flagstream.streams.core import ScoringCore

HOUR = 3_600.0


@dataclass
class World:
    """Hourly traffic with a fraud rate, reviews of flagged ones two hours later and
    chargebacks of missed frauds a week later (event time), as the live system sees them."""

    separable: bool = True
    poison: str | None = None  #: "fraud": every review says fraud; "legit": every one says legit
    per_hour: int = 400
    fraud_rate: float = 0.008
    seed: int = 1
    #: event hours in which the model scores everything high (a rollback to a young version)
    flood: range = range(0)

    def run(self, op: OperatingPoint, hours: int = 24 * 40) -> tuple[list[float], list]:
        rng = np.random.default_rng(self.seed)
        pending: list[tuple[float, float, int, bool, float]] = []
        thresholds, estimates = [], []
        for h in range(hours):
            n = self.per_hour
            y = (rng.random(n) < self.fraud_rate).astype(int)
            s = (np.where(y == 1, rng.beta(4, 2, n), rng.beta(1, 20, n)) if self.separable
                 else rng.random(n))
            if h in self.flood:
                s = rng.uniform(0.6, 1.0, n)
            flagged, at = op.flags(s), h * HOUR
            op.observe_traffic(s, flagged, at)
            reviewed = {"fraud": np.ones_like(y), "legit": np.zeros_like(y)}.get(self.poison or "", y)
            pending += [(at + 2 * HOUR, float(score), int(label), True, at)
                        for score, label in zip(s[flagged], reviewed[flagged], strict=True)]
            pending += [(at + 7 * 24 * HOUR, float(score), 1, False, at)
                        for score in s[~flagged & (y == 1)]]
            due = [p for p in pending if p[0] <= at]
            pending = [p for p in pending if p[0] > at]
            for _, score, label, flag, scored_at in due:
                op.observe(score, label, flagged=flag, at=scored_at)
            estimates.append(op.update())
            thresholds.append(op.threshold)
        return thresholds, estimates


def test_follows_a_false_discovery_target_down_from_a_cautious_start():
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=2_000, initial_threshold=0.5)
    thresholds, estimates = World().run(op)
    last = estimates[-1]
    assert op.threshold < 0.5, "room to catch more fraud: it moved down"
    assert last.target_met and last.false_discovery_rate <= 0.15
    assert last.recall > 0.8
    assert all(0.02 <= t <= 0.98 for t in thresholds)
    steps = np.abs(np.diff(thresholds))
    assert steps.max() <= 0.02 + 1e-9, "one bounded step at a time"


def test_a_model_that_cannot_separate_walks_up_to_the_ceiling_and_says_so():
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=10_000, initial_threshold=0.5)
    thresholds, estimates = World(separable=False).run(op, hours=24 * 20)
    assert op.threshold == pytest.approx(0.98) and min(thresholds) >= 0.5
    assert estimates[-1].target_met is False


def test_an_unreachable_target_never_flags_more():
    op = OperatingPoint(target_fdr=0.001, capacity_per_day=10_000, initial_threshold=0.5)
    thresholds, estimates = World().run(op, hours=24 * 20)
    assert min(thresholds) >= 0.5, "no evidence that a lower threshold keeps 0.1%: it never goes down"


@pytest.mark.parametrize("poison", ["fraud", "legit"])
def test_a_poisoned_label_window_cannot_make_it_flag_everything(poison):
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=300, initial_threshold=0.5)
    thresholds, estimates = World(poison=poison).run(op, hours=24 * 30)
    assert min(thresholds) >= 0.02 and max(thresholds) <= 0.98
    per_day = [e.flags_per_day for e in estimates[48:] if e.flags_per_day is not None]
    assert max(per_day) <= 300, "never beyond the review capacity"
    if poison == "fraud":  # reviews say every alert is fraud: unflagged traffic still counts
        assert op.threshold > 0.1


def test_an_unreachable_recall_target_stops_at_the_capacity():
    op = OperatingPoint(target_fdr=None, target_recall=0.999, capacity_per_day=100,
                        initial_threshold=0.5, maturity_s=7 * 24 * HOUR)
    thresholds, estimates = World(separable=False).run(op, hours=24 * 30)
    per_day = [e.flags_per_day for e in estimates[48:] if e.flags_per_day is not None]
    assert max(per_day) <= 100 and min(thresholds[48:]) > 0.5


def test_capacity_is_a_hard_limit_applied_at_once():
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=48, initial_threshold=0.05, min_labels=10**9)
    rng = np.random.default_rng(3)
    thresholds, estimates = [], []
    for h in range(30):
        scores = rng.random(1_000)
        op.observe_traffic(scores, op.flags(scores), h * HOUR)
        estimates.append(op.update())
        thresholds.append(op.threshold)
    jump = next(k for k, e in enumerate(estimates) if e.move == "up")
    assert estimates[jump].reason == "review capacity" and thresholds[jump] > 0.99, (
        "one jump, beyond the ceiling: people cannot review more")
    est = estimates[-1]
    assert est.flags_per_day <= 48 and op.threshold > 0.99
    assert est.target_met is None, "no labels: nobody can say"


def test_no_move_without_evidence():
    op = OperatingPoint(target_fdr=0.15, initial_threshold=0.5)
    rng = np.random.default_rng(4)
    scores = rng.random(5_000)
    op.observe_traffic(scores, op.flags(scores), 0.0)
    for s in scores[:100]:
        op.observe(s, "legit", at=0.0)
    est = op.update()
    assert est.move == "hold" and est.reason == "not enough labels" and op.threshold == 0.5


def test_the_estimate_uses_traffic_not_labels_alone_below_the_threshold():
    """Below the threshold only frauds come back; lowering must not look free."""
    tally = ScoreTally()
    rng = np.random.default_rng(5)
    legit, fraud = rng.beta(1, 20, 10_000), rng.beta(4, 2, 100)
    scores = np.concatenate([legit, fraud])
    flagged = scores >= 0.5
    tally.add_traffic(scores, flagged, 0.0)
    for s in fraud:
        tally.add_label(s, fraud=True, flagged=s >= 0.5, at_s=0.0)
    for s in legit[legit >= 0.5]:
        tally.add_label(s, fraud=False, flagged=True, at_s=0.0)
    counts = tally.window(0.0, 0.0)
    true_fdr = float((legit >= 0.1).sum() / (scores >= 0.1).sum())
    assert counts.false_discovery_rate(0.1) == pytest.approx(true_fdr, abs=0.01)
    assert counts.recall(0.1) == pytest.approx(float((fraud >= 0.1).mean()), abs=0.01)


def test_the_tally_forgets_old_buckets():
    tally = ScoreTally(bucket_s=HOUR, keep_s=10 * HOUR)
    for h in range(100):
        tally.add_traffic(np.array([0.5]), np.array([True]), h * HOUR)
    assert len(tally.buckets) <= 12
    tally.add_label(0.5, fraud=True, flagged=True, at_s=0.0)  # far too old: ignored
    assert tally.window(0, 0).labels() == 0


@settings(max_examples=200, deadline=None)
@given(threshold=st.floats(0.0, 1.0, allow_nan=False))
def test_grid_index_is_the_grid_point_at_or_just_above(threshold):
    i = grid_index(threshold)
    assert 0 <= i <= BINS and i / BINS >= threshold - 1e-9 and (i - 1) / BINS < threshold
    assert [grid_index(k / BINS) for k in range(BINS + 1)] == list(range(BINS + 1))


def test_wilson_interval_narrows_with_more_labels():
    wide, narrow = wilson(8, 10), wilson(800, 1_000)
    assert wide[0] < 0.8 < wide[1] and narrow[0] < 0.8 < narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5


def test_rejects_targets_it_cannot_hold():
    for kwargs in ({"target_fdr": 0.0}, {"target_fdr": None, "target_recall": None},
                   {"floor": 0.0}, {"floor": 0.9, "ceiling": 0.5}, {"capacity_per_day": 0}):
        with pytest.raises(ValueError):
            OperatingPoint(**kwargs)


def test_replaces_the_fixed_threshold_in_the_scoring_core():
    core = ScoringCore()
    core.policy = OperatingPoint(initial_threshold=0.0)  # clamped to the floor
    out = core.process([b'{"transaction_id":"t-1","account_id":"c-1","merchant_id":"m-1",'
                        b'"amount":10.0,"timestamp":"2018-04-01T10:00:00Z"}'], offsets=[0])
    assert out.decisions[0]["threshold"] == 0.02


def test_the_score_shift_is_watched_without_labels():
    op = OperatingPoint(target_fdr=0.15, window_s=14 * 24 * HOUR, traffic_window_s=24 * HOUR)
    rng = np.random.default_rng(6)
    shifts = []
    for h in range(24 * 14):
        scores = rng.beta(1, 20, 300) if h < 24 * 13 else rng.beta(2, 5, 300)  # the last day moves
        op.observe_traffic(scores, op.flags(scores), h * HOUR)
        shifts.append(op.update().score_psi)
    assert shifts[0] is None, "not enough history to compare"
    steady = [s for s in shifts[24 * 3:24 * 13] if s is not None]
    assert steady and max(steady) < 0.1
    assert shifts[-1] > 0.2, "the last day's scores shifted"


def test_a_new_model_restarts_the_estimates_and_the_threshold_holds_until_they_are_due():
    """After a change of champion lineage, the old model's scores say nothing about the new
    one's: the estimates start again, labels of earlier decisions are left out, the threshold
    holds until there is evidence, and the capacity limit comes back with an hour of traffic."""
    op = OperatingPoint(target_fdr=0.2, capacity_per_day=2_000, initial_threshold=0.5,
                        min_labels=50, min_frauds=5)
    World().run(op, hours=24 * 10)
    before = op.update()
    assert before.labels >= 50
    held = op.threshold
    op.new_model()
    late_label_time = op.tally.newest_s - 5 * HOUR  # a chargeback for an earlier decision
    op.observe(0.9, "fraud", flagged=True, at=late_label_time)
    after = op.update()
    assert after.labels == 0 and after.move == "hold" and op.threshold == held
    # the new model flags everything it sees for an hour: capacity still binds at once
    now = op.tally.newest_s
    for minute in range(61):
        scores = np.full(200, 0.99)
        op.observe_traffic(scores, op.flags(scores), now + 60.0 * minute)
    assert op.update().reason == "review capacity" and op.threshold > held


def test_three_ways_declines_only_where_the_evidence_shows_almost_no_false_alarms():
    """With a decline target the highest scores are declined with nobody looking, but only
    where the false-discovery rate's upper bound is within it; the rest of the flags go to
    people, and the capacity counts those alone."""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=2_000, initial_threshold=0.5,
                        decline_fdr=0.05)
    assert op.decline_threshold is None, "no evidence yet: nothing is declined"
    rng = np.random.default_rng(11)
    World().run(op, hours=24 * 30)
    assert op.decline_threshold is not None and op.decline_threshold > op.threshold
    # truth, on fresh traffic from the same world: declines are almost all fraud
    y = (rng.random(400_000) < 0.008).astype(int)
    s = np.where(y == 1, rng.beta(4, 2, len(y)), rng.beta(1, 20, len(y)))
    flags, declines = s >= op.threshold, op.declines(s)  # (flags() also caps a batch's share)
    assert declines.any() and not (declines & ~flags).any(), "declines are a subset of flags"
    assert (y[declines] == 0).mean() <= 0.05
    assert op.last is not None and op.last.decline_threshold == op.decline_threshold
    record = op.published(1, 0)
    assert record["decline_threshold"] == op.decline_threshold
    scorer = OperatingPoint(target_fdr=0.15)
    scorer.follow(record["threshold"], record["decline_threshold"])
    assert (scorer.declines(s) == declines).all(), "a scorer declines exactly what the learner does"


def test_a_model_that_cannot_separate_never_declines():
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=10_000, initial_threshold=0.5,
                        decline_fdr=0.05)
    World(separable=False).run(op, hours=24 * 20)
    assert op.decline_threshold is None
    assert not op.declines(np.linspace(0, 1, 101)).any()
    assert "decline_threshold" not in op.published(1, 0)


def test_the_core_declines_without_sending_to_review():
    """The scoring core routes three ways: declined decisions are recorded, not queued."""
    class Declining(ThresholdPolicy):
        threshold = 0.0

        def flags(self, scores):
            return np.ones(len(scores), dtype=bool)

        def declines(self, scores):
            return np.arange(len(scores)) % 2 == 0

    from flagstream.codec import dumps

    core = ScoringCore(policy=Declining())
    records = [dumps({"transaction_id": f"t-{i}", "account_id": f"a-{i}", "merchant_id": "m-1",
                      "amount": 10.0 + i, "currency": "USD", "timestamp": "2018-04-01T00:00:00Z",
                      "channel": "card"}) for i in range(6)]
    outcome = core.process(records)
    routes = [d["decision"] for d in outcome.decisions]
    assert routes == ["decline", "review"] * 3 and outcome.declined == 3
    assert [f["transaction_id"] for f in outcome.flagged] == ["t-1", "t-3", "t-5"]


def test_a_sudden_flood_of_high_scores_is_held_to_the_batchs_share_of_the_capacity():
    """A new version of the model that scores most traffic high must not flood the reviewers
    before the threshold catches up: each batch gets at most its share of the day's capacity
    (times a burst allowance), the highest scores first, and never more than is left today."""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=240, initial_threshold=0.5,
                        min_labels=10**9, burst=3.0)
    rng = np.random.default_rng(5)
    for h in range(30):  # a calm day: 1,000 decisions an hour, few above the threshold
        s = rng.beta(1, 30, 1_000)
        op.observe_traffic(s, op.flags(s), h * HOUR)
    flood = rng.uniform(0.6, 1.0, 1_000)  # an hour of traffic, all of it above the threshold
    flagged = op.flags(flood)
    share = 3.0 * 240 * 1_000 / 24_000  # burst × capacity × this batch's share of a day
    k = int(flagged.sum())  # the day's traffic is estimated from the hours seen (~24,000)
    assert 0.9 * share <= k <= share and op.capped == 1_000 - k
    assert flood[flagged].min() >= np.sort(flood)[-k], "the highest scores first"
    op.observe_traffic(flood, flagged, 30 * HOUR)
    for h in range(31, 40):  # the flood goes on: the day's capacity runs out, then nothing
        flood = rng.uniform(0.6, 1.0, 1_000)
        flagged = op.flags(flood)
        op.observe_traffic(flood, flagged, h * HOUR)
    day = op.tally.window(39 * HOUR - 24 * HOUR, 39 * HOUR)
    assert day.rows[0].sum() <= 240 + int(share), "a day's flags stay within the capacity"
    assert FixedThreshold(0.5).flags(np.array([0.9] * 5)).all(), "the benchmark policy is uncapped"


def test_decided_a_few_at_a_time_nothing_is_held_back_while_the_reviewers_have_room():
    """A worker decides a few events at a time (a partition's share of a poll, an event hour
    at a time). Each decision earns its share of the capacity, so small batches add up to
    what a large one gets: at 40 flags a day against a capacity of 300, none is held back.
    (They were: a batch's room was its own share rounded down, 0 for a batch of two, and a
    demo approved half of the scores above its threshold while its reviewers sat idle.)"""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=300, initial_threshold=0.5,
                        min_labels=10**9)
    rng = np.random.default_rng(11)
    above = 0
    for h in range(48):
        for k in range(80):  # 160 decisions an event hour, two at a time
            s = np.where(rng.random(2) < 40 / 3_840, rng.uniform(0.5, 1.0, 2), rng.beta(1, 30, 2))
            at = h * HOUR + k * 45.0
            op.deciding_at(at)
            flagged = op.flags(s)
            op.observe_traffic(s, flagged, at)
            above += int((s >= 0.5).sum()) if h >= 24 else 0
    assert above > 20 and op.capped == 0


def test_flags_granted_count_at_once_before_their_decisions_come_back():
    """In the worker the tally hears of decisions only when they come back from the scores
    topic; the flags the policy granted meanwhile count against the day's capacity at once."""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=100, initial_threshold=0.5,
                        min_labels=10**9, burst=1_000.0)
    rng = np.random.default_rng(9)
    for h in range(25):
        s = rng.beta(1, 30, 1_000)
        op.observe_traffic(s, op.flags(s), h * HOUR)
    granted = 0
    for _ in range(50):  # a flood decided before any of it is observed
        granted += int(op.flags(rng.uniform(0.6, 1.0, 200)).sum())
    assert granted <= 100, "never more than the day's capacity, even unobserved"


def test_declines_take_none_of_the_review_capacity_and_are_never_held_back():
    """The capacity is people's: flags declined with nobody looking neither use it nor wait
    for it, and the flags that go to review are held to it."""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=100, initial_threshold=0.5,
                        min_labels=10**9, burst=1_000.0)
    op.follow(0.5, decline_threshold=0.9)
    rng = np.random.default_rng(4)
    for h in range(25):  # a day with many declines and few reviews
        s = np.concatenate([rng.beta(1, 30, 1_000), rng.uniform(0.9, 1.0, 50)])
        op.observe_traffic(s, op.flags(s), h * HOUR)
    scores = np.concatenate([rng.uniform(0.5, 0.9, 80), rng.uniform(0.9, 1.0, 400)])
    flagged, declined = op.flags(scores), op.declines(scores)
    assert declined.sum() == 400 and (flagged & declined).sum() == 400, "every decline stays"
    reviews = flagged & ~declined
    assert 0 < reviews.sum() <= 100
    assert reviews.sum() == min(80, 100 - int(op.tally.window(
        op.tally.newest_s - 24 * HOUR, op.tally.newest_s).rows[0][:op.decline_index].sum()))


def test_moves_on_the_target_at_most_once_an_event_hour_however_often_it_is_updated():
    """The worker updates on every small batch of labels, the backtest once per batch of
    events: both move at most one step per event hour, so the same labels give the same path."""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=None, initial_threshold=0.3,
                        min_new_labels=1)
    rng = np.random.default_rng(8)
    s = rng.uniform(0.3, 1.0, 2_000)  # everything flagged, almost all of it legitimate
    op.observe_traffic(s, op.flags(s), 0.0)
    steps = []
    for hour in range(3):
        for k in range(10):  # ten updates within the hour, each with fresh labels
            for score in s[k * 30:(k + 1) * 30]:
                op.observe(float(score), int(score > 0.9), flagged=True, at=hour * HOUR)
            op.update()
        steps.append(op.threshold)
        op.observe_traffic(s[:10], op.flags(s[:10]), (hour + 1) * HOUR)
    assert steps == pytest.approx([0.32, 0.34, 0.36]), "one bounded step per event hour"


def test_from_a_reckless_start_it_climbs_to_the_target_and_stops_there():
    """Started far too low, the threshold rises until the false alarms are within target and
    no further, before any chargeback is back: sparse high-score bins borrow their fraud share
    from the bins above them, so the estimate at a high threshold is not inflated by the many
    low-score reviews (it was: the threshold overshot to 0.49 and stayed for a week)."""
    reckless = OperatingPoint(target_fdr=0.15, capacity_per_day=10_000, initial_threshold=0.05)
    thresholds, estimates = World().run(reckless, hours=24 * 6)
    assert max(thresholds) <= 0.35 and reckless.threshold >= 0.2
    assert estimates[-1].false_discovery_rate <= 0.2


def test_traffic_sent_in_bulk_gets_each_days_capacity_by_its_own_event_time():
    """A backfill runs days ahead of the decisions the tally has heard back about: the
    capacity left is judged by the event time of the batch being decided, so each day gets
    its reviews (it was: the first day's flags counted against every later day, and whole
    days went unreviewed)."""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=40, initial_threshold=0.5,
                        min_labels=10**9, burst=1_000.0)
    rng = np.random.default_rng(3)
    for h in range(25):  # one calm day heard back
        s = rng.beta(1, 30, 100)
        op.deciding_at(h * HOUR)
        op.observe_traffic(s, op.flags(s), h * HOUR)
    per_day = []
    for day in range(1, 6):  # five more days decided before any of them comes back
        n = 0
        for h in range(24):
            op.deciding_at((24 * day + h) * HOUR)
            n += int(op.flags(rng.uniform(0.6, 1.0, 100)).sum())
        per_day.append(n)
    assert all(35 <= n <= 40 for n in per_day), per_day


def test_a_batch_spanning_days_is_decided_hour_by_hour_within_each_days_capacity():
    """The core tells the policy each event hour of a batch in turn (a backfill can put days
    in one batch): every day gets reviews, none more than the capacity (after the first
    hour, which has no traffic rate to judge by)."""
    from flagstream.codec import dumps

    op = OperatingPoint(target_fdr=0.15, capacity_per_day=24, floor=0.001, initial_threshold=0.001,
                        min_labels=10**9, burst=1_000.0)
    core = ScoringCore(policy=op)
    base = 1_522_540_800_000
    records = [dumps({"transaction_id": f"t-{h}-{k}", "account_id": f"a-{k}", "merchant_id": "m-1",
                      "amount": 10.0, "timestamp": base + h * 3_600_000 + k * 1_000})
               for h in range(72) for k in range(10)]
    outcome = core.process(records)
    reviews = np.zeros(3, dtype=int)
    for d in outcome.decisions:
        reviews[(d["event_time_ms"] - base) // 86_400_000] += d["decision"] == "review"
    assert reviews[0] <= 24 + 10 and all(1 <= n <= 24 for n in reviews[1:]), reviews


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3_599_999)), max_size=60), st.booleans(),
       st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 1e19, -1e19]), max_size=3))
def test_a_batch_is_grouped_by_hour_as_one_hour_at_a_time(stamps, as_float, odd):
    """One sort of the batch (a step over lagging partitions, a backfill) gives the groups and
    medians a mask and a median per hour give: batch order within each hour, hours in order
    (times no int64 can hold, which the core never passes, included)."""
    times = np.array([1_522_540_800_000 + h * 3_600_000 + ms for h, ms in stamps], dtype=np.int64)
    if as_float or odd:
        times = np.concatenate([times.astype(np.float64), odd])
    with np.errstate(invalid="ignore"):
        fast, reference = by_event_hour(times), by_event_hour_reference(times)
    assert np.array_equal([at for _, at in fast], [at for _, at in reference], equal_nan=True)
    assert [np.arange(len(times))[part].tolist() for part, _ in fast] == [
        np.arange(len(times))[part].tolist() for part, _ in reference]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 72), st.floats(0.0, 1.0)), min_size=1, max_size=80))
def test_without_a_capacity_a_batch_over_hours_is_routed_as_hour_by_hour(events):
    """No route depends on the time when there is no review capacity: the batch is decided
    at once, and the policy's clock ends where hour by hour would have left it."""
    times = np.array([1_522_540_800_000 + h * 3_600_000 + 7 for h, _ in events], dtype=np.int64)
    scores = np.array([score for _, score in events])
    at_once, hourly = (OperatingPoint(target_fdr=0.2, initial_threshold=0.4) for _ in range(2))
    for policy in (at_once, hourly):
        policy.follow(0.4, decline_threshold=0.9)  # (declines too)
    routes = np.empty(len(scores), dtype=object)
    for part, at_s in by_event_hour_reference(times):
        hourly.deciding_at(at_s)
        routes[part] = hourly.routes(scores[part])
    assert at_once.routes(scores, times).tolist() == routes.tolist()
    assert at_once.clock_s == hourly.clock_s


def test_after_a_flood_the_threshold_comes_back_to_the_target_point_without_waiting_for_labels():
    """A flood of high scores lifts the threshold to what the reviewers can take, at once.
    The capacity is a limit, not a move: once the flood has left the day the flags per day
    are judged on, the threshold is back at the target's point, with no labels needed. (It
    was not: the capacity's 0.99 became the point the target started from, and at 0.99 labels
    hardly come, so a demo sat at the ceiling for 16 event days and caught a third of the
    fraud.)"""
    op = OperatingPoint(target_fdr=0.15, capacity_per_day=300, initial_threshold=0.5,
                        min_labels=10**9)  # no move on the target: only the capacity acts
    flood = range(24 * 3, 24 * 3 + 6)
    thresholds, estimates = World(flood=flood).run(op, hours=24 * 6)
    assert max(thresholds[flood.start:flood.stop + 2]) > 0.95, "the flood is held to capacity"
    assert estimates[flood.start + 1].reason == "review capacity"
    back = flood.stop + 24 + 2  # the flood's hours have left the one-day traffic window
    assert thresholds[back:] == [0.5] * len(thresholds[back:])
    assert any(e.reason.startswith("back to the target point") for e in estimates[flood.stop:back])


def test_chargebacks_still_to_come_do_not_hold_a_high_threshold_up():
    """Below the threshold frauds come back only as chargebacks, a week later here: the
    newest week of unflagged traffic would look legitimate, every lower threshold too costly,
    and a high threshold would stay (from 0.9 it was still at 0.63 after 39 days). Unflagged
    traffic gets the fraud share its mature part showed, so it comes down as a cautious start
    does, to the same point."""
    week = 7 * 24 * HOUR
    high = OperatingPoint(target_fdr=0.15, capacity_per_day=2_000, initial_threshold=0.9,
                          maturity_s=week)
    cautious = OperatingPoint(target_fdr=0.15, capacity_per_day=2_000, initial_threshold=0.5,
                              maturity_s=week)
    from_high, estimates = World().run(high, hours=24 * 25)
    from_cautious, _ = World().run(cautious, hours=24 * 25)
    assert from_high[-1] == pytest.approx(from_cautious[-1], abs=0.02) and from_high[-1] < 0.35
    assert estimates[-1].target_met and estimates[-1].false_discovery_rate <= 0.15


def test_the_published_record_carries_its_evidence_and_a_restart_resumes_the_targets_point():
    """Each published threshold says what the update saw (a move can be traced on the
    ``models`` topic); a learner restarted under a capacity limit resumes the target's point
    beneath it, not the limit's."""
    from flagstream.scoring.record_checks import check_record
    from flagstream.scoring.registry import OPERATING_POINT

    op = OperatingPoint(target_fdr=0.15, capacity_per_day=300, initial_threshold=0.5, min_labels=10**9)
    World(flood=range(30, 36)).run(op, hours=34)
    record = op.published(7, 0)
    assert record["threshold"] > 0.9 and record["evidence"]["target_threshold"] == 0.5
    assert record["evidence"]["flags_per_day"] > 0 and record["reason"] == "review capacity"
    check_record(OPERATING_POINT, record)
    for bad in ({"evidence": {"price": 1.0}}, {"evidence": {"labels": float("nan")}}, {"evidence": []}):
        with pytest.raises(ValueError, match="evidence"):
            check_record(OPERATING_POINT, record | bad)
    check_record(OPERATING_POINT, {k: v for k, v in record.items() if k != "evidence"})  # older
    resumed = OperatingPoint(target_fdr=0.15, capacity_per_day=300)
    resumed.follow(record["threshold"], None, record["evidence"]["target_threshold"])
    assert resumed.threshold == op.threshold and resumed.target_index == op.target_index


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=40))
def test_the_fraud_share_by_score_is_non_decreasing_and_keeps_the_reviewed_frauds(bins):
    """The reviewed fraud share per score bin, fitted non-decreasing (isotonic): it never
    decreases with the score, it keeps the total of reviewed frauds (pooling moves frauds
    between neighbouring bins, never adds any), and an already ordered share is unchanged."""
    from flagstream.scoring.score_tally import monotone_share

    frauds = np.array([min(f, n) for f, n in bins], dtype=float)
    trials = np.array([n for _, n in bins], dtype=float)
    share = monotone_share(frauds, trials)
    assert np.all(np.diff(share) >= -1e-12) and np.all((0 <= share) & (share <= 1))
    assert (share * trials).sum() == pytest.approx(frauds.sum())
    has = trials > 0
    raw = frauds[has] / trials[has]
    if np.all(np.diff(raw) >= 0):
        assert share[has] == pytest.approx(raw)
