"""End to end on the real broker: counts, dead letters, review, learning from feedback."""

from __future__ import annotations

import asyncio
import time

import pytest
from kafka_helpers import produce, produce_json, read_json, read_topic

from flagstream.codec import dumps

pytestmark = pytest.mark.integration


def transaction(i: int, amount: float, account: str | None = None, day: int = 1) -> dict:
    return {
        "transaction_id": f"t-{i:05d}",
        "account_id": account or f"c-{i % 25}",
        "merchant_id": f"m-{i % 11}",
        "amount": amount,
        "currency": "USD",
        "timestamp": f"2018-04-{day:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
        "card_number": "4111111111111111",
    }


INVALID = [
    b"not json at all",
    b"[1, 2, 3]",
    dumps({"transaction_id": "bad-1", "account_id": "c-1", "merchant_id": "m-1", "amount": -5,
           "timestamp": "2018-04-01T00:00:00Z"}),
    dumps({"transaction_id": "bad-2", "account_id": "c-1", "merchant_id": "m-1", "amount": 5}),
    dumps({"transaction_id": "bad-3", "account_id": "c-1", "merchant_id": "m-1", "amount": 5,
           "timestamp": "yesterday"}),
    dumps({"transaction_id": "bad-4", "account_id": "c-1", "merchant_id": "m-1", "amount": "5",
           "timestamp": "2018-04-01T00:00:00Z"}),
    dumps({"transaction_id": "bad-5", "account_id": "c-1", "merchant_id": "m-1", "amount": 5,
           "timestamp": "2018-04-01T00:00:00Z", "x": {"a": {"b": {"c": {"d": {"e": {"f": {
               "g": {"h": 1}}}}}}}}}),
    b'{"transaction_id": "bad-6", "pan": "4111 1111 1111 1111", "amount": 1e999}',
]
INVALID_REASONS = [
    "invalid_json", "not_an_object", "invalid_amount", "missing_field", "invalid_timestamp",
    "invalid_amount", "too_deep", "invalid_json",
]


def test_valid_and_invalid_records_each_end_in_exactly_one_place(settings, worker_factory):
    worker_factory()
    valid = [transaction(i, 20.0 + (i % 7)) for i in range(300)]
    duplicate = dict(valid[5])  # same id, same account: a producer retry
    produce_json(settings, "transactions", valid[:150], "account_id")
    produce_json(settings, "transactions", valid[150:], None)  # unkeyed producer
    invalid = [*INVALID, dumps(duplicate)]
    asyncio.run(produce(settings, "transactions", [(None, v) for v in invalid]))

    scores = read_json(settings, "scores", len(valid))
    assert sorted(d["transaction_id"] for d in scores) == sorted(t["transaction_id"] for t in valid)
    dlq = read_json(settings, "transactions.dlq", len(invalid))
    assert len(dlq) == len(invalid)
    assert sorted(d["reason"] for d in dlq) == sorted([*INVALID_REASONS, "duplicate_transaction"])
    for letter in dlq:
        assert letter["source"]["topic"] == settings.topic("transactions")
        assert letter["detail"]
        assert "4111" not in letter["original"], "card numbers must be masked in dead letters"
    for decision in scores:
        assert "card_number" not in decision and "4111111111111111" not in str(decision)
        assert decision["model_version"] and 0.0 <= decision["score"] <= 1.0
    flagged_ids = {d["transaction_id"] for d in scores if d["decision"] == "review"}
    review = read_json(settings, "review", len(flagged_ids), timeout_s=10)
    assert {r["transaction_id"] for r in review} == flagged_ids


def test_feedback_changes_the_models_predictions(settings, worker_factory):
    worker = worker_factory()
    # big amounts at a "bad" merchant are fraud, small ones legit
    first = [transaction(i, 900.0 if i % 5 == 0 else 15.0 + i % 9) for i in range(200)]
    produce_json(settings, "transactions", first, "account_id")
    scores = {d["transaction_id"]: d for d in read_json(settings, "scores", len(first))}
    before = {t: d["score"] for t, d in scores.items()}
    feedback = [
        {"transaction_id": t["transaction_id"], "label": "fraud" if t["amount"] > 500 else "legit",
         "source": "review", "reviewer": "test"}
        for t in first
    ]
    produce_json(settings, "feedback", [*feedback, *feedback[:0]], "transaction_id")
    bad = [
        {"transaction_id": "never-scored", "label": "fraud", "source": "review"},
        {"transaction_id": "t-00001", "label": "maybe"},
    ]
    produce_json(settings, "feedback", bad, "transaction_id")
    deadline = time.monotonic() + 60
    while worker.metric("flagstream_feedback_labels_total") < len(feedback):
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    letters = read_json(settings, "feedback.dlq", 2)
    assert sorted(x["reason"] for x in letters) == ["invalid_label", "unknown_transaction"]

    second = [transaction(1000 + i, 900.0 if i % 5 == 0 else 15.0 + i % 9) for i in range(100)]
    produce_json(settings, "transactions", second, "account_id")
    after = read_json(settings, "scores", len(first) + len(second))
    new = {d["transaction_id"]: d for d in after if d["transaction_id"] >= "t-01000"}
    assert len(new) == len(second)
    versions = {d["model_version"] for d in new.values()}
    assert versions and all(v != scores["t-00000"]["model_version"] for v in versions)
    big_new = [d["score"] for d in new.values() if d["amount"] > 500]
    small_new = [d["score"] for d in new.values() if d["amount"] < 500]
    big_before = [before[t] for t, d in scores.items() if d["amount"] > 500]
    assert min(big_new) > max(big_before), "fraud feedback must raise scores of similar cases"
    assert sum(big_new) / len(big_new) > 2 * sum(small_new) / len(small_new)
    assert any(d["decision"] == "review" for d in new.values())


def test_review_topic_is_plain_json_readable_by_other_clients(settings, worker_factory):
    worker_factory(threshold=0.0)  # flag everything
    produce_json(settings, "transactions", [transaction(i, 50.0) for i in range(10)], "account_id")
    records = asyncio.run(read_topic(settings, "review", 10))
    assert len(records) == 10
    for r in records:
        assert r.value.startswith(b"{") and b"reasons" in r.value
