"""Learning from feedback: join each label to the features stored at scoring time.

The features come from the decision the scorer recorded (never recomputed, so no
label leakage). Unknown, expired and malformed feedback is rejected with a reason.

>>> import numpy as np
>>> from scoring.handle import ModelHandle
>>> from scoring.linear import LinearChampion
>>> decisions = {"t-1": {"features": [1.0] * 17, "merchant_id": "m-1",
...                      "event_time_ms": 0, "scored_at_ms": 0}}
>>> learner = Learner(ModelHandle(LinearChampion()), decisions.get, clock_ms=lambda: 0)
>>> out = learner.learn([b'{"transaction_id": "t-1", "label": "fraud", "source": "review"}',
...                      b'{"transaction_id": "t-9", "label": "legit"}'])
>>> out.learned, [r.reason for r in out.rejections], out.activity.frauds.tolist()
(1, ['unknown_transaction'], [1.0])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from features.layout import DAY_MS
from scoring.handle import ModelHandle
from streams.core import MerchantActivity
from streams.schema import InvalidRecord, Rejection, check_feedback, decode_object

#: Looks up the decision recorded for a transaction id (None when unknown).
DecisionLookup = Callable[[str], dict | None]


@dataclass
class LearnOutcome:
    """What one feedback batch did."""

    learned: int = 0
    frauds: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    activity: MerchantActivity = field(default_factory=MerchantActivity)
    labelled: list[tuple[dict, int, dict]] = field(default_factory=list)


class Learner:
    """Updates the champion from labelled feedback, one label at a time."""

    def __init__(
        self,
        handle: ModelHandle,
        lookup: DecisionLookup,
        retention_ms: int = 35 * DAY_MS,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.handle = handle
        self.lookup = lookup
        self.retention_ms = retention_ms
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def learn(self, values: Sequence[bytes | None]) -> LearnOutcome:
        """Learn a batch of raw feedback values; publishes a new version if anything changed."""
        out = LearnOutcome()
        merchants: list[str] = []
        days: list[int] = []
        frauds: list[float] = []
        now = self.clock_ms()
        for index, raw in enumerate(values):
            try:
                feedback = decode_object(raw, 16_384, 8)
                transaction_id, label = check_feedback(feedback)
            except InvalidRecord as exc:
                out.rejections.append(Rejection(index, exc.reason, str(exc)))
                continue
            decision = self.lookup(transaction_id)
            if decision is None:
                out.rejections.append(
                    Rejection(index, "unknown_transaction", f"no decision for {transaction_id!r}")
                )
                continue
            if now - decision["scored_at_ms"] > self.retention_ms:
                out.rejections.append(
                    Rejection(index, "expired_transaction", "scored longer ago than retention")
                )
                continue
            self.handle.model.learn_one(np.asarray(decision["features"], np.float64), label)
            out.learned += 1
            out.frauds += label
            out.labelled.append((decision, label, feedback))
            if label:
                merchants.append(decision["merchant_id"])
                days.append(decision["event_time_ms"] // DAY_MS)
                frauds.append(1.0)
        if merchants:
            out.activity = MerchantActivity(
                merchants, np.asarray(days, np.int64), np.zeros(len(days)), np.asarray(frauds)
            )
        if out.learned:
            self.handle.publish()
        return out
