"""Nothing is paid in the future: a transaction stamped after the worker's clock is refused.

Event time drives every window: an account's velocity, the operating point's traffic, the
learner's daily health and feature drift. A single record stamped in 2099 (inside the
schema's 2000..2100 range) used to be scored, move those clocks decades ahead and empty
their windows. Now the core refuses it (``timestamp_in_future``, on the dead-letter topic
like any other reason), the API answers 400, and the learner refuses a recorded decision
stamped in the future.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from flagstream.codec import dumps
from flagstream.errors import ConfigurationError, InvalidRecord
from flagstream.features.layout import FEATURE_NAMES, N_FEATURES
from flagstream.scoring.challengers import parse_decision
from flagstream.scoring.feature_drift import FeatureDrift
from flagstream.scoring.feedback import DECISION_LEAD_MS, check_decision
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.schema import MAX_EPOCH_MS

HOUR_MS = 3_600_000


def tx(i: int, at_ms: int, account: str = "a-1") -> bytes:
    return dumps({"transaction_id": f"t-{i}", "account_id": account, "merchant_id": "m-1",
                  "amount": 20.0, "timestamp": at_ms})


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("ahead_ms", [10 * 60_000, 26 * HOUR_MS, None])
def test_a_transaction_stamped_after_the_clock_is_refused_with_its_reason(ahead_ms):
    base = now_ms()
    stamp = MAX_EPOCH_MS - 1 if ahead_ms is None else base + ahead_ms  # (None: the schema's last ms)
    out = ScoringCore().process([tx(1, base - HOUR_MS), tx(2, stamp), tx(3, base)], offsets=[0, 1, 2])
    assert [d["transaction_id"] for d in out.decisions] == ["t-1", "t-3"]
    [refused] = out.rejections
    assert (refused.index, refused.reason) == (1, "timestamp_in_future")
    assert "after this worker's clock" in refused.detail


def test_a_stamp_within_the_lead_is_decided_and_the_lead_is_a_setting():
    base = now_ms()
    assert len(ScoringCore().process([tx(1, base + 60_000)]).decisions) == 1
    strict = ScoringCore(max_lead_ms=0)
    assert [r.reason for r in strict.process([tx(2, base + 60_000)]).rejections] == ["timestamp_in_future"]
    assert Settings(max_event_lead_s=0).max_event_lead_s == 0
    with pytest.raises(ConfigurationError):
        Settings(max_event_lead_s=7_200)


def test_a_refused_stamp_leaves_the_accounts_clock_alone():
    """Decided after a refused future record, the account's next transaction gets the
    features it gets when that record never came (its velocity is not judged from 2099)."""
    base = now_ms() - 10 * HOUR_MS
    plain, attacked = ScoringCore(), ScoringCore()
    plain.process([tx(1, base)], offsets=[0])
    attacked.process([tx(1, base), tx(9, 4_000_000_000_000)], offsets=[0, 1])
    a = plain.process([tx(2, base + 60_000)], offsets=[2])
    b = attacked.process([tx(2, base + 60_000)], offsets=[2])
    assert a.decisions[0]["features"] == b.decisions[0]["features"]


def decision(at_ms: int) -> dict:
    return {"transaction_id": "t-1", "features": [0.5] * N_FEATURES, "score": 0.2,
            "merchant_id": "m-1", "event_time_ms": at_ms, "scored_at_ms": now_ms(), "decision": "approve"}


def test_the_learner_refuses_a_recorded_decision_stamped_in_the_future():
    base = now_ms()
    assert check_decision(decision(base + DECISION_LEAD_MS - 60_000), N_FEATURES)
    for at in (base + DECISION_LEAD_MS + 60_000, 4_000_000_000_000, 10**15 - 1):
        with pytest.raises(InvalidRecord, match="in the future"):
            check_decision(decision(at), N_FEATURES)
        assert isinstance(parse_decision(dumps(decision(at))), bytes)  # not usable: never counted


def test_one_future_decision_on_scores_leaves_the_learners_drift_window_as_it_was():
    """A fortnight of decisions fills the drift windows; one more, stamped decades ahead,
    would empty them (every bucket older than its day dropped). Read the way the learner
    reads ``scores`` (:func:`parse_decision`, then only the usable ones), it never counts."""
    drift = FeatureDrift(FEATURE_NAMES, min_rows=50)
    rng = np.random.default_rng(0)
    start = now_ms() - 20 * 24 * HOUR_MS
    for hour in range(20 * 24):
        drift.add(rng.random((10, N_FEATURES)), np.full(10, start + hour * HOUR_MS, dtype=np.float64))
    before, buckets = drift.stability(), len(drift.buckets)
    assert before is not None
    hostile = {**decision(4_000_000_000_000), "features": [0.9] * N_FEATURES}
    usable = [d for d in map(parse_decision, [dumps(hostile)]) if isinstance(d, dict)]
    if usable:
        drift.add(np.array([d["features"] for d in usable]), np.array([d["event_time_ms"] for d in usable]))
    assert drift.stability() == before and len(drift.buckets) == buckets
