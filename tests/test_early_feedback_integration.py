"""Early feedback on the real broker: labels that come before their decision wait (and survive
a SIGKILL), labels for transactions that never come are dead-lettered after the wait, and the
decisions store shrinks after the retention."""

from __future__ import annotations

import asyncio
import time

import pytest
from kafka_helpers import committed_offsets, produce_json, read_json
from model_helpers import wait_until

pytestmark = pytest.mark.integration


def transaction(i: int) -> dict:
    return {"transaction_id": f"t-{i:05d}", "account_id": f"c-{i % 5}", "merchant_id": f"m-{i % 3}",
            "amount": 20.0 + i, "currency": "USD",
            "timestamp": f"2018-04-01T00:{i % 60:02d}:00Z"}


def feedback(i: int) -> dict:
    """A label an untrained champion's decision (approve) may get: chargebacks and auto labels."""
    fraud = i % 4 == 0
    return {"transaction_id": f"t-{i:05d}", "label": "fraud" if fraud else "legit",
            "source": "chargeback" if fraud else "auto"}


def waited(worker, outcome: str) -> float:
    return worker.metric(f'flagstream_feedback_waited_total{{outcome="{outcome}"}}')


def test_feedback_before_its_transaction_is_learned_and_feedback_for_none_is_dead_lettered(
        settings, worker_factory):
    worker = worker_factory(feedback_wait_s=10.0)
    early = [feedback(i) for i in range(40)]
    never = {"transaction_id": "never-scored", "label": "fraud", "source": "chargeback"}
    produce_json(settings, "feedback", [*early, never], "transaction_id")
    wait_until(lambda: worker.metric("flagstream_feedback_waiting") == len(early) + 1, 30,
               "every early label waiting", worker)
    started = time.monotonic()
    produce_json(settings, "transactions", [transaction(i) for i in range(40)], "account_id")
    wait_until(lambda: worker.metric("flagstream_feedback_labels_total") == len(early), 60,
               "every early label learned once its decision was recorded", worker)
    assert waited(worker, "learned") == len(early)
    letters = read_json(settings, "feedback.dlq", 1, timeout_s=60)
    assert [(x["reason"], x["source"]["topic"]) for x in letters] == [
        ("decision_never_arrived", settings.topic("feedback"))]
    assert letters[0]["detail"] == "no decision for 'never-scored' within 10 s"
    assert time.monotonic() - started < 60
    wait_until(lambda: worker.metric("flagstream_feedback_waiting") == 0, 10, "none waiting", worker)
    assert waited(worker, "expired") == 1 and waited(worker, "full") == 0
    assert worker.metric("flagstream_feedback_labels_total") == len(early)  # nothing twice


def test_labels_waiting_when_the_learner_is_killed_are_learned_after_the_restart(
        settings, worker_factory):
    worker = worker_factory(feedback_wait_s=600.0)
    early = [feedback(i) for i in range(30)]
    produce_json(settings, "feedback", early, "transaction_id")
    wait_until(lambda: worker.metric("flagstream_feedback_waiting") == len(early), 30,
               "every early label waiting", worker)
    group = f"{settings.topic_prefix}{settings.app_id}"  # role all
    wait_until(lambda: sum(asyncio.run(committed_offsets(settings, group, "feedback")).values())
               >= len(early), 60, "the waiting labels' offsets committed", worker)
    worker.kill()  # SIGKILL: the waiting labels were acknowledged, only the snapshot has them

    second = worker_factory(feedback_wait_s=600.0)
    wait_until(lambda: second.metric("flagstream_feedback_waiting") == len(early), 60,
               "the waiting labels restored", second)
    produce_json(settings, "transactions", [transaction(i) for i in range(30)], "account_id")
    wait_until(lambda: second.metric("flagstream_feedback_labels_total") == len(early), 60,
               "every waiting label learned after the restart", second)
    assert waited(second, "learned") == len(early) and waited(second, "lost") == 0
    time.sleep(2)
    assert second.metric("flagstream_feedback_labels_total") == len(early)
    assert second.metric("flagstream_dead_letters_total") == 0  # none given up, none refused


def test_the_decisions_store_shrinks_after_the_retention_and_stays_pruned_after_a_restart(
        settings, worker_factory, tmp_path):
    retention = 12  # the sweep runs every retention / 4 = 3 s
    worker = worker_factory(feature_retention_s=retention)
    txs = [transaction(i) for i in range(60)]
    produce_json(settings, "transactions", txs, "account_id")
    read_json(settings, "scores", len(txs))
    wait_until(lambda: worker.metric("flagstream_decisions_stored") == len(txs), 30,
               "every decision stored and counted", worker)
    produce_json(settings, "feedback", [feedback(i) for i in range(20)], "transaction_id")
    wait_until(lambda: worker.metric("flagstream_labels_stored") == 20, 30,
               "the labels stored and counted", worker)
    wait_until(lambda: worker.metric("flagstream_decisions_stored") == 0, 4 * retention,
               "every decision pruned after the retention", worker)
    wait_until(lambda: worker.metric("flagstream_labels_stored") == 0, 4 * retention,
               "every label row pruned after the retention", worker)
    assert worker.metric('flagstream_store_pruned_total{table="decisions"}') == len(txs)
    assert worker.metric('flagstream_store_pruned_total{table="labels"}') == 20

    # the deletes are on the changelog: a worker that rebuilds the tables from it has none
    worker.stop()
    second = worker_factory(feature_retention_s=retention, data_dir=str(tmp_path / "second"))
    time.sleep(2 * retention / 4)
    wait_until(lambda: second.metric('flagstream_store_pruned_total{table="decisions"}') == 0
               and second.metric("flagstream_decisions_stored") == 0, 30,
               "a rebuilt decisions table as empty as the pruned one", second)
    assert second.metric("flagstream_labels_stored") == 0
