"""The straightforward peer: a per-event Faust agent with dict state, the model per event.

What one would write first with Faust and River: ``async for event in stream``,
decode and validate the record, update the account's windows in plain Python
dicts and lists, build the feature vector, score it alone through the champion's
per-row path (``predict_one``: River's ``predict_proba_one`` for the linear model,
plain Python for the binned one), and send
the decision (and the flag) with ``topic.send`` — all per event, with Faust's
default settings and per-event acks.

Features are the worker's: the same bucketed 1-hour/1-day rings with the same
arithmetic as :mod:`flagstream.features.kernels`, so decisions should agree with the other
contenders. Merchant features are zero here, as for the others in this benchmark
(no learner runs). Validation uses the wire schema's per-record checks; duplicates
are caught among an account's last eight transaction ids, as in the worker.
River's ``learn_one`` would run per labelled feedback event; the benchmark input
carries no feedback, so no contender learns during a run.

>>> acc = NaiveAccount()
>>> f = acc.apply(1_522_540_800_000, 10.0)
>>> f[3], f[15], f[16]
(1.0, 2592000.0, 1.0)
>>> acc.apply(1_522_540_860_000, 30.0)[4]
20.0
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import OrderedDict, deque
from typing import Any

import faust
import numpy as np

from flagstream.codec import decode_object, dumps, loads
from flagstream.errors import InvalidRecord
from flagstream.features.layout import (
    DAY_MS,
    DISTINCT_WINDOW_MS,
    FEATURE_NAMES,
    HOUR_MS,
    LARGE_RATIO,
    LARGE_WINDOW_MS,
    MAX_GAP_S,
    MAX_MERCHANT_AGE_DAYS,
    N_DAILY,
    N_HOURLY,
    N_KNOWN_MERCHANTS,
    N_RECENT_EVENTS,
    N_RECENT_IDS,
    PROBES_BEFORE_CASHOUT,
    SMALL_AMOUNT,
    SMALL_WINDOW_MS,
    VELOCITY_WINDOWS_MS,
)
from flagstream.features.location import area_step
from flagstream.scoring.handle import model_from_state
from flagstream.scoring.reasons import explain
from flagstream.sinks.dead_letter import dead_letter, headers
from flagstream.streams.config import Settings
from flagstream.streams.coordinates import places_of_reference
from flagstream.streams.kafka_security import faust_credentials
from flagstream.streams.schema import check_transaction
from flagstream.streams.topics import REVIEW, SCORES, TRANSACTIONS, TRANSACTIONS_DLQ

CONTEXT_FIELDS = ("currency", "channel", "country")


def _ring_add(ring: list[float], n_slots: int, bucket: int, value: float) -> None:
    slot = 3 * (bucket % n_slots)
    held = ring[slot]
    if held == bucket:
        ring[slot + 1] += 1.0
        ring[slot + 2] += value
    elif held < bucket:
        ring[slot], ring[slot + 1], ring[slot + 2] = float(bucket), 1.0, value


def _ring_window(ring: list[float], n_slots: int, first: int, last: int) -> tuple[float, float]:
    count = total = 0.0
    for k in range(n_slots):
        if first <= ring[3 * k] <= last:
            count += ring[3 * k + 1]
            total += ring[3 * k + 2]
    return count, total


class NaiveAccount:
    """One account's state in plain Python: counters, two rings, recent ids, recent events
    and merchants."""

    __slots__ = ("count", "total", "last_ts", "hourly", "daily", "recent", "events", "merchants",
                 "area", "large")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.last_ts = 0.0
        self.hourly = [-1.0, 0.0, 0.0] * N_HOURLY
        self.daily = [-1.0, 0.0, 0.0] * N_DAILY
        self.recent: deque[str] = deque(maxlen=N_RECENT_IDS)
        self.events: deque[tuple[int, float, str]] = deque(maxlen=N_RECENT_EVENTS)
        self.merchants: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.area = [0.0, 0.0, 0.0]  # located transactions, centre x, centre y
        self.large = 0.0  # the last transaction's earlier large amounts in 14 days

    def distance(self, x: float, y: float, home_x: float, home_y: float) -> float:
        """Distance from the usual area (the kernel's step, in plain Python); then the
        location joins the area."""
        n, centre_x, centre_y = self.area
        distance, n, centre_x, centre_y = area_step.py_func(n, centre_x, centre_y, x, y, home_x, home_y)
        self.area = [n, centre_x, centre_y]
        return distance

    def velocity(self, ts: int, amount: float, merchant: str) -> list[float]:
        """Add one transaction to the recent events and merchants; its 8 velocity features
        (call it before ``count`` and ``total`` count the transaction)."""
        known = self.count and self.total > 0
        usual = amount / (self.total / self.count) if known else 1.0
        large_above = LARGE_RATIO * (self.total / self.count) if known else math.inf
        last = self.merchants.pop(merchant, None)
        if last is None:
            new, age = 1.0, MAX_MERCHANT_AGE_DAYS
            if len(self.merchants) == N_KNOWN_MERCHANTS:
                self.merchants.popitem(last=False)
        else:
            new, age = 0.0, min(max((ts - last) / DAY_MS, 0.0), MAX_MERCHANT_AGE_DAYS)
        self.merchants[merchant] = ts
        self.events.append((ts, amount, merchant))
        back = [(ts - t, a, m) for t, a, m in self.events if t <= ts]
        large = sum(1.0 for b, a, _ in back if b <= LARGE_WINDOW_MS and a > large_above)
        self.large = large - (amount > large_above)
        small = sum(1.0 for b, a, _ in back if b <= SMALL_WINDOW_MS and a < SMALL_AMOUNT)
        probed = small - (amount < SMALL_AMOUNT) >= PROBES_BEFORE_CASHOUT and amount >= SMALL_AMOUNT
        return [
            float(sum(1 for b, _, _ in back if b <= VELOCITY_WINDOWS_MS[0])),
            float(sum(1 for b, _, _ in back if b <= VELOCITY_WINDOWS_MS[1])),
            small,
            float(len({m for b, _, m in back if b <= DISTINCT_WINDOW_MS})),
            new,
            age,
            amount if probed else 0.0,
            usual,
        ]

    def apply(self, ts: int, amount: float, merchant: str = "",
              place: tuple[float, ...] = (math.nan,) * 4) -> list[float]:
        """Add one transaction; its features (merchant columns zero). ``place``: its location
        and its holder's address, NaN where absent."""
        hour, day = ts // HOUR_MS, ts // DAY_MS
        gap = min(max((ts - self.last_ts) / 1000.0, 0.0), MAX_GAP_S) if self.count else MAX_GAP_S
        c30, s30 = _ring_window(self.daily, N_DAILY, day - 29, day)
        ratio = amount / (s30 / c30) if c30 > 0 else 1.0
        _ring_add(self.hourly, N_HOURLY, hour, amount)
        _ring_add(self.daily, N_DAILY, day, amount)
        velocity = self.velocity(ts, amount, merchant)
        distance = self.distance(*place)
        self.count += 1
        self.total += amount
        self.last_ts = max(self.last_ts, float(ts))
        c1, s1 = _ring_window(self.hourly, N_HOURLY, hour - 23, hour)
        c7, s7 = _ring_window(self.daily, N_DAILY, day - 6, day)
        c30, s30 = _ring_window(self.daily, N_DAILY, day - 29, day)
        weekday = (day + 3) % 7
        return [
            amount, 1.0 if weekday >= 5 else 0.0, 1.0 if (ts % DAY_MS) // HOUR_MS <= 6 else 0.0,
            c1, s1 / c1 if c1 > 0 else 0.0, c7, s7 / c7 if c7 > 0 else 0.0,
            c30, s30 / c30 if c30 > 0 else 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            gap, ratio, *velocity,
            0.0, 0.0,  # merchant novelty (merchant state: not kept by this peer)
            distance,
            self.large,
        ]


def load_model(path: str | None, settings: Settings) -> tuple[Any, str]:
    """The champion (and its version) from a published record, or an untrained one."""
    if not path:
        return settings.champion_model(), f"{settings.champion_lineage()}-000000"
    with open(path, "rb") as fh:
        record = loads(fh.read())
    return model_from_state(record["state"]), record["version"]


def build_app(settings: Settings, model_path: str | None) -> faust.App:
    """A Faust app with one per-event scoring agent, default settings otherwise."""
    app = faust.App(
        f"{settings.topic_prefix}{settings.app_id}-naive",
        broker=[f"kafka://{b}" for b in settings.broker.split(",")],
        store="memory://", topic_partitions=settings.partitions, topic_disable_leader=True,
        web_enabled=False, logging_config=None, broker_credentials=faust_credentials(settings),
        datadir=os.path.join(settings.data_dir, "naive-faust"),  # (Faust's default: the cwd)
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw", internal=False)

    source = raw_topic(settings.topic(TRANSACTIONS))
    scores = raw_topic(settings.topic(SCORES))
    review = raw_topic(settings.topic(REVIEW))
    dlq = raw_topic(settings.topic(TRANSACTIONS_DLQ))
    model, version = load_model(model_path, settings)
    threshold = float(settings.threshold)
    accounts: dict[str, NaiveAccount] = {}

    @app.agent(source, name="naive-score")
    async def score(stream):
        async for event in stream.events():
            msg = event.message
            try:
                obj = decode_object(msg.value, settings.max_record_bytes, settings.max_nesting)
                amount, ts = check_transaction(obj)
            except InvalidRecord as exc:
                letter = dead_letter(msg.value, exc.reason, str(exc), msg.topic, msg.partition, msg.offset)
                await dlq.send(key=msg.key, value=dumps(letter), headers=headers(exc.reason))
                continue
            tx, account_id = obj["transaction_id"], obj["account_id"]
            account = accounts.get(account_id)
            if account is None:
                account = accounts[account_id] = NaiveAccount()
            if tx in account.recent:
                letter = dead_letter(msg.value, "duplicate_transaction",
                                     f"transaction_id {tx!r} already seen", msg.topic, msg.partition,
                                     msg.offset)
                await dlq.send(key=msg.key, value=dumps(letter), headers=headers("duplicate_transaction"))
                continue
            account.recent.append(tx)
            place = tuple(places_of_reference([obj])[0].tolist())
            features = account.apply(ts, amount, obj["merchant_id"], place)
            p = model.predict_one(np.asarray(features))  # the model's own per-row path
            rounded = [round(v, 6) for v in features]
            decision = {
                "transaction_id": tx, "account_id": account_id, "merchant_id": obj["merchant_id"],
                "amount": amount, "event_time": obj["timestamp"], "event_time_ms": ts,
                "score": round(p, 6), "threshold": threshold,
                "decision": "review" if p >= threshold else "approve", "model_version": version,
                "scored_at_ms": int(time.time() * 1000), "features": rounded,
            }
            for name in CONTEXT_FIELDS:
                if name in obj:
                    decision[name] = obj[name]
            await scores.send(key=tx.encode(), value=dumps(decision))
            if p >= threshold:
                row = np.asarray(features)
                flagged = dict(decision, features=dict(zip(FEATURE_NAMES, rounded, strict=True)))
                flagged["reasons"] = explain(row, model.contributions(row[None, :])[0])
                await review.send(key=tx.encode(), value=dumps(flagged))

    _ = score
    return app


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    import asyncio

    from flagstream.streams.topics import create_topics

    asyncio.run(create_topics(settings))
    app = build_app(settings, os.environ.get("BENCH_MODEL_PATH"))
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
