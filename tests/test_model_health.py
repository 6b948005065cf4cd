"""The model-health numbers: the daily tally and the feature drift against plain-Python
references, the metrics they export, and the review page's ``/review/api/health``."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from flagstream.features.layout import FEATURE_NAMES, N_FEATURES
from flagstream.scoring.feature_drift import FeatureDrift, decile_counts, stability
from flagstream.scoring.model_health import DAY_MS, DailyHealth
from flagstream.scoring.operating_point import wilson
from flagstream.sinks.review.auth import ReviewAuth
from flagstream.sinks.review.credentials import ReviewerTokens
from flagstream.sinks.review.service import ReviewService
from flagstream.sinks.review.views import ReviewRoutes
from flagstream.streams.app import create_pipeline
from flagstream.streams.config import Settings
from flagstream.streams.health_feed import HealthFeed

TOKEN = "test-review-token-0001"
DAY0 = 17_620  # 2018-03-30

decision = st.fixed_dictionaries({
    "day": st.integers(0, 9), "ms": st.integers(0, DAY_MS - 1), "flagged": st.booleans(),
    "label": st.sampled_from([None, 0, 1]),
})


def as_decision(d: dict) -> dict:
    return {"event_time_ms": (DAY0 + d["day"]) * DAY_MS + d["ms"],
            "decision": "review" if d["flagged"] else "approve", "threshold": 0.3 + 0.01 * d["day"],
            "model_version": f"lr-{d['day'] // 3 + 1:06d}"}


def reference_days(items: list[dict], keep_days: int) -> dict[int, dict]:
    """The same numbers, one transaction at a time, with no numpy."""
    newest = max(DAY0 + d["day"] for d in items)
    out: dict[int, dict] = defaultdict(lambda: defaultdict(int))
    for d in items:
        day = DAY0 + d["day"]
        if day <= newest - keep_days:
            continue
        row = out[day]
        row["decisions"] += 1
        row["flagged" if d["flagged"] else "auto"] += 1
        if d["label"] is not None:
            kind = "flagged" if d["flagged"] else "auto"
            row[f"{kind}_{'fraud' if d['label'] else 'legit'}"] += 1
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(decision, min_size=1, max_size=120), st.integers(1, 12), st.integers(1, 4))
def test_the_daily_tally_matches_a_transaction_by_transaction_count(items, keep_days, batches):
    health = DailyHealth(keep_days=keep_days, maturity_s=2 * 86_400.0)
    size = math.ceil(len(items) / batches)
    for start in range(0, len(items), size):  # decisions arrive in batches, labels after
        health.add_decisions([as_decision(d) for d in items[start:start + size]])
    health.add_labels([(as_decision(d), d["label"], {}) for d in items if d["label"] is not None])
    expected = reference_days(items, keep_days)
    rows = health.rows()
    assert [r["day"] for r in rows] == sorted(expected)
    for row in rows:
        want = expected[row["day"]]
        for column in ("decisions", "flagged", "auto", "flagged_fraud", "flagged_legit",
                       "auto_fraud", "auto_legit"):
            assert row[column] == want[column], column
        reviewed = want["flagged_fraud"] + want["flagged_legit"]
        if reviewed:
            assert row["fdr"] == round(want["flagged_legit"] / reviewed, 4)
            low, high = wilson(want["flagged_legit"], reviewed)
            assert (row["fdr_low"], row["fdr_high"]) == (round(low, 4), round(high, 4))
        else:
            assert row["fdr"] is None
        frauds = want["flagged_fraud"] + want["auto_fraud"]
        assert row["recall"] == (round(want["flagged_fraud"] / frauds, 4) if frauds else None)
        assert row["auto_share"] == round(want["auto"] / want["decisions"], 4)
        assert row["overturn_rate"] == (round(want["auto_fraud"] / want["auto"], 4) if want["auto"] else None)
        assert row["threshold_max"] == pytest.approx(0.3 + 0.01 * (row["day"] - DAY0))
        assert set(row["versions"]) == {f"lr-{(row['day'] - DAY0) // 3 + 1:06d}"}
        newest_ms = max(as_decision(d)["event_time_ms"] for d in items)
        assert row["mature"] == (newest_ms >= (row["day"] + 1) * DAY_MS + 2 * DAY_MS)


def test_memory_is_bounded_and_labels_for_forgotten_days_are_ignored():
    health = DailyHealth(keep_days=5)
    for day in range(40):
        health.add_decisions([{"event_time_ms": (DAY0 + day) * DAY_MS, "decision": "approve"}] * 3)
    health.add_labels([({"event_time_ms": DAY0 * DAY_MS, "decision": "approve"}, "fraud")])
    assert [r["day"] for r in health.rows()] == list(range(DAY0 + 35, DAY0 + 40))
    assert len(health.counts) == len(health.days) == 5
    health.add_decisions([{"event_time_ms": "nonsense", "decision": "review"}, {"decision": "review"}])
    assert sum(r["decisions"] for r in health.rows()) == 15


def test_the_operating_points_word_is_kept_for_the_day_it_spoke():
    health = DailyHealth(maturity_s=0.0)
    health.add_decisions([{"event_time_ms": DAY0 * DAY_MS + 5, "decision": "review"}])
    health.add_estimate({"threshold": 0.42, "target_met": False, "false_discovery_rate": 0.3,
                         "reason": "false alarms above target"})
    [row] = health.rows()
    assert (row["threshold"], row["target_met"]) == (0.42, False)
    assert row["estimate"]["reason"] == "false alarms above target"


# --- drift ------------------------------------------------------------------------------
def reference_psi(ref: list[float], cur: list[float], groups: int = 10) -> float:
    """PSI of one feature, plain Python: the k-th edge is the value of rank k n / 10 of ``ref``."""
    ordered = sorted(ref)
    edges = [ordered[k * len(ordered) // groups] for k in range(1, groups)]

    def counts(values: list[float]) -> list[float]:
        out = [0.0] * groups
        for v in values:
            out[sum(1 for e in edges if v >= e)] += 1
        return out

    r, c = counts(ref), counts(cur)
    total_r, total_c = sum(r) + 0.5 * groups, sum(c) + 0.5 * groups
    psi = 0.0
    for a, b in zip(r, c, strict=True):
        p, q = (a + 0.5) / total_r, (b + 0.5) / total_c
        psi += (q - p) * math.log(q / p)
    return psi


values = st.lists(st.one_of(st.integers(0, 5).map(float), st.floats(-1e3, 1e3, width=32)),
                  min_size=2, max_size=80)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(values, values), min_size=1, max_size=4))
def test_feature_psi_matches_a_plain_python_reference(columns):
    n_ref = min(len(r) for r, _ in columns)
    n_cur = min(len(c) for _, c in columns)
    ref = np.array([r[:n_ref] for r, _ in columns], dtype=np.float64).T
    cur = np.array([c[:n_cur] for _, c in columns], dtype=np.float64).T
    got = stability(*decile_counts(ref, cur))
    want = [reference_psi(list(ref[:, j]), list(cur[:, j])) for j in range(ref.shape[1])]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    # as FeatureDrift keeps its samples (float32: the values are float32 ones here)
    as_kept = decile_counts(ref.astype(np.float32), cur.astype(np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(as_kept, decile_counts(ref, cur), strict=True))


def test_a_shifted_feature_alarms_and_the_others_stay_quiet():
    rng = np.random.default_rng(11)
    drift = FeatureDrift(FEATURE_NAMES, per_bucket=64)
    for hour in range(15 * 24):
        rows = rng.normal(0.0, 1.0, (40, N_FEATURES))
        if hour >= 14 * 24:
            rows[:, 0] *= 3.0  # amounts spread out on the last day
        drift.add(rows, np.full(40, hour * 3_600_000.0 + 1))
    psi = drift.stability()
    assert psi is not None and set(psi) == set(FEATURE_NAMES)
    assert psi["amount"] > 0.2
    assert max(v for k, v in psi.items() if k != "amount") < 0.1
    # bounded: the buckets of the windows, each at most per_bucket rows
    assert len(drift.buckets) <= 15 * 24 + 1
    assert all(len(sample) <= 64 for sample, _ in drift.buckets.values())


def test_the_reservoir_keeps_a_uniform_sample_of_its_bucket():
    drift = FeatureDrift(("x",), per_bucket=100, seed=5)
    for start in range(0, 10_000, 250):  # one bucket, in batches
        drift.add(np.arange(start, start + 250, dtype=np.float64).reshape(-1, 1), np.zeros(250))
    [(sample, seen)] = drift.buckets.values()
    assert seen == 10_000 and len(sample) == 100
    assert 3_500 < float(sample.mean()) < 6_500  # not the first 100 rows, nor the last


def test_drift_needs_traffic_in_both_windows():
    drift = FeatureDrift(("x",), min_rows=50)
    drift.add(np.zeros((500, 1)), np.full(500, 1.0))
    assert drift.stability() is None  # a day of traffic, no reference before it
    with pytest.raises(ValueError):
        drift.add(np.zeros((3, 2)), np.zeros(3))


def ramping(rng: np.random.Generator, day: float) -> np.ndarray:
    """A fresh stream's row: ``count_30d`` grows with the state's age for 30 days (then holds
    still), ``amount`` never moves."""
    return np.array([rng.normal(50.0, 10.0), rng.poisson(2.0 * min(day, 30.0) + 1.0)], dtype=np.float64)


def run_fresh_stream(drift: FeatureDrift, days: int, start_day: int = 0) -> None:
    rng = np.random.default_rng(4)
    for hour in range(start_day * 24, days * 24):
        rows = np.array([ramping(rng, hour / 24) for _ in range(20)])
        drift.add(rows, np.full(20, hour * 3_600_000.0 + 1))


def test_a_fresh_streams_growing_counts_are_warming_up_not_drifting():
    """The counts of a stream that began 20 days ago are still growing; against the fortnight
    before, its last day is far off. Without a warm-up that is an alarm on every windowed
    feature (a fresh demo's model health showed one); with it, their drift waits until the
    reference window starts 30 days after the stream did, and then they are stable."""
    names, warm_up = ("amount", "count_30d"), (0.0, 30 * DAY_MS)
    plain, warmed = FeatureDrift(names, min_rows=100), FeatureDrift(names, min_rows=100, warm_up_ms=warm_up)
    for drift in (plain, warmed):
        run_fresh_stream(drift, 20)
    assert plain.stability()["count_30d"] > 0.2  # the false alarm
    assert set(warmed.stability()) == {"amount"} and warmed.stability()["amount"] < 0.1
    assert warmed.warming() == {"count_30d": (30 + 14 + 1) * DAY_MS}
    run_fresh_stream(warmed, 46, start_day=20)
    psi = warmed.stability()
    assert set(psi) == set(names) and psi["count_30d"] < 0.1 and warmed.warming() == {}


def test_one_record_stamped_years_back_does_not_end_the_warm_up():
    """A device whose clock was reset stamps one transaction 2000-01-01: scored, recorded,
    and taken alone as the state's start it would have made every feature warm for good."""
    names, warm_up = ("amount", "count_30d"), (0.0, 30 * DAY_MS)
    drift = FeatureDrift(names, min_rows=100, warm_up_ms=warm_up)
    run_fresh_stream(drift, 3)
    reset = np.full(10, -18 * 365 * DAY_MS) + np.arange(10) * 60_000  # (ten in a batch, one hour)
    drift.add(np.tile([[50.0, 1.0]], (10, 1)), reset)
    run_fresh_stream(drift, 20, start_day=3)
    assert drift.since_ms == 0 and set(drift.stability()) == {"amount"}
    assert list(drift.warming()) == ["count_30d"]


def test_even_traffic_of_a_few_rows_an_hour_warms_up_too():
    """Nine rows an hour, never ten in one bucket: the state is still dated (by the buckets
    kept together), and the warm-up ends."""
    drift = FeatureDrift(("amount", "count_30d"), min_rows=100, warm_up_ms=(0.0, 30 * DAY_MS))
    rng = np.random.default_rng(6)
    for hour in range(60 * 24):
        drift.add(np.array([ramping(rng, hour / 24) for _ in range(9)]), np.full(9, hour * 3_600_000.0))
    assert drift.since_ms == 0 and drift.warming() == {}


def test_no_feature_of_state_of_unknown_age_is_warming_even_before_its_first_row():
    drift = FeatureDrift(("amount", "count_30d"), warm_up_ms=(0.0, 30 * DAY_MS), since_ms=-math.inf)
    assert drift.warming() == {} and drift.stability() is None


def test_the_weekend_is_not_a_drift(tmp_path):
    """The calendar sets ``is_weekend`` for a whole day: a Saturday against the fortnight
    before is a shift every week (a fresh demo alarmed on it). The feed does not watch it."""
    names = ("amount", "is_weekend")
    watched, calendar = FeatureDrift(names, min_rows=100), FeatureDrift(names, min_rows=100,
                                                                         unwatched=("is_weekend",))
    rng = np.random.default_rng(5)
    for hour in range(15 * 24):  # (a weekend every 7 days; the last day is a weekday: all 0)
        day = hour // 24
        rows = np.column_stack([rng.normal(50.0, 10.0, 20), np.full(20, float((day + 4) % 7 >= 5))])
        for drift in (watched, calendar):
            drift.add(rows, np.full(20, hour * 3_600_000.0 + 1))
    assert watched.stability()["is_weekend"] > 0.2
    assert set(calendar.stability()) == {"amount"} and calendar.warming() == {}
    feed = HealthFeed(create_pipeline(Settings(data_dir=str(tmp_path)), "learner"))
    assert not feed.drift.watched[FEATURE_NAMES.index("is_weekend")]
    assert "every Saturday" in feed.report()["drift"]["unwatched"]["is_weekend"]  # the page says why


def test_state_of_unknown_age_is_warm_and_a_known_start_is_kept():
    names, warm_up = ("amount", "count_30d"), (0.0, 30 * DAY_MS)
    old = FeatureDrift(names, min_rows=100, warm_up_ms=warm_up, since_ms=-math.inf)
    run_fresh_stream(old, 16)
    assert set(old.stability()) == set(names) and old.warming() == {}
    resumed = FeatureDrift(names, min_rows=100, warm_up_ms=warm_up, since_ms=-10 * DAY_MS)
    run_fresh_stream(resumed, 16)  # state began 10 days before the rows this one saw
    assert resumed.since_ms == -10 * DAY_MS
    assert resumed.warming() == {"count_30d": (20 + 14 + 1) * DAY_MS}


# --- the feed, its metrics and the endpoint ------------------------------------------------
def traffic(rng: np.random.Generator, days: int, per_day: int) -> list[tuple[dict, int]]:
    """Decisions with features and the truth: frauds score high, a few legit ones too."""
    out = []
    for day in range(days):
        for i in range(per_day):
            fraud = int(rng.random() < 0.05)
            score = float(rng.beta(6, 2) if fraud else rng.beta(1, 10))
            features = rng.normal(0.0, 1.0, N_FEATURES)
            if day == days - 1:
                features[0] += 4.0  # amounts jump on the last day
            out.append(({"transaction_id": f"t-{day}-{i}", "score": round(score, 6),
                         "event_time_ms": (DAY0 + day) * DAY_MS + i * (DAY_MS // per_day),
                         "decision": "review" if score >= 0.5 else "approve", "threshold": 0.5,
                         "model_version": "lr-000001", "features": features.round(6).tolist()},
                        fraud))
    return out


@pytest.fixture
def feed(tmp_path):
    p = create_pipeline(Settings(data_dir=str(tmp_path), review_capacity_per_day=400.0), "learner")
    return HealthFeed(p, refresh_s=0.0)


def fill(feed: HealthFeed, days: int = 16, per_day: int = 300) -> list[tuple[dict, int]]:
    rng = np.random.default_rng(2)
    seen = traffic(rng, days, per_day)
    policy = feed.p.core.policy
    for start in range(0, len(seen), 200):
        batch = [d for d, _ in seen[start:start + 200]]
        policy.observe_decisions(batch)
        feed.decisions(batch)
        labelled = [(d, y, {}) for d, y in seen[start:start + 200] if d["decision"] == "review" or y]
        policy.observe_labelled(labelled)
        feed.labelled(labelled)
    return seen


def test_the_feed_exports_feature_drift_and_alarms(feed):
    fill(feed)
    text = feed.p.metrics.render().decode()
    amount = float(text.split('flagstream_feature_psi{feature="amount"} ')[1].split()[0])
    night = float(text.split('flagstream_feature_psi{feature="is_night"} ')[1].split()[0])
    assert amount > 0.2 > night
    assert 'flagstream_drift_alert{signal="features"} 1.0' in text
    assert "flagstream_drift_psi_alert 0.2" in text
    assert "flagstream_target_false_discovery_rate 0.15" in text
    assert "flagstream_review_capacity_per_day 400.0" in text and "flagstream_target_recall NaN" in text


async def test_the_health_endpoint_needs_a_reviewer_and_shows_the_days(feed):
    seen = fill(feed)
    tokens = ReviewerTokens(None)
    tokens.allow("lead", TOKEN)

    async def publish(key: bytes, value: bytes) -> None:
        pass

    routes = ReviewRoutes(ReviewService(publish, CollectorRegistry()), ReviewAuth(tokens),
                          health=feed.report)
    client = TestClient(TestServer(routes.application()))
    await client.start_server()
    try:
        assert (await client.get("/review/api/health")).status == 401
        wrong = await client.get("/review/api/health", headers={"Authorization": "Bearer x" * 3})
        assert wrong.status == 401
        answer = await client.get("/review/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 200
        body = await answer.json()
    finally:
        await client.close()
    assert len(body["days"]) == 16 and body["days"][0]["date"] == "2018-03-30"
    first = body["days"][0]
    day_items = [(d, y) for d, y in seen if d["event_time_ms"] // DAY_MS == DAY0]
    flagged = [y for d, y in day_items if d["decision"] == "review"]
    assert first["decisions"] == len(day_items) and first["flagged"] == len(flagged)
    assert first["fdr"] == round(flagged.count(0) / len(flagged), 4)
    assert first["fdr_low"] <= first["fdr"] <= first["fdr_high"]
    assert body["target"]["false_discovery_rate"] == 0.15
    assert body["target"]["capacity_per_day"] == 400.0
    assert body["now"]["estimate"]["labels"] > 0 and body["now"]["threshold"] == pytest.approx(
        feed.p.core.policy.threshold)
    assert body["drift"]["features"]["amount"] > 0.2 and "amount" in body["drift"]["alerting"]
    assert body["drift"]["alert"] == 0.2 and body["drift"]["score_psi"] is not None
    shares = body["scores"]["current"]
    assert len(shares) == 20 and sum(shares) == pytest.approx(1, abs=1e-3)
    assert body["seat_changes"] == []


def test_the_report_shows_the_drift_of_all_traffic_seen_even_between_refreshes(tmp_path):
    p = create_pipeline(Settings(data_dir=str(tmp_path)), "learner")
    slow = HealthFeed(p, refresh_s=3_600.0)  # the metrics refresh at most hourly here
    seen = traffic(np.random.default_rng(4), 16, 300)
    quiet = [d for d, _ in seen if d["event_time_ms"] < (DAY0 + 15) * DAY_MS]
    slow.decisions(quiet[:300])  # the first refresh: nothing to compare yet
    slow.decisions(quiet[300:])
    assert slow.report()["drift"]["features"]["amount"] < 0.2
    slow.decisions([d for d, _ in seen[len(quiet):]])  # the day amounts jumped
    assert slow.report()["drift"]["features"]["amount"] > 0.2


def test_the_dashboards_model_health_panels_query_metrics_the_worker_exports(feed):
    fill(feed, days=3, per_day=100)
    exported = feed.p.metrics.render().decode()
    path = Path(__file__).resolve().parent.parent / "deploy/grafana/provisioning/dashboards/flagstream.json"
    panels = json.loads(path.read_text())["panels"]
    row = next(i for i, p in enumerate(panels) if p["type"] == "row" and "Model health" in p["title"])
    names = {name for p in panels[row + 1:] for t in p["targets"]
             for name in re.findall(r"flagstream_[a-z_0-9]+", t["expr"])}
    assert {"flagstream_false_discovery_rate_low", "flagstream_recall_high", "flagstream_feature_psi",
            "flagstream_drift_alert", "flagstream_target_met", "flagstream_review_capacity_per_day"} <= names
    for name in names:
        assert f"\n{name} " in exported or f"\n{name}{{" in exported or f"# TYPE {name} " in exported, name


async def test_without_a_learner_there_is_no_health_view():
    routes = ReviewRoutes(ReviewService(lambda k, v: None, CollectorRegistry()),  # type: ignore[arg-type]
                          ReviewAuth(ReviewerTokens(None)))
    tokens = routes.auth.tokens
    tokens.allow("lead", TOKEN)
    client = TestClient(TestServer(routes.application()))
    await client.start_server()
    try:
        answer = await client.get("/review/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 404
    finally:
        await client.close()
