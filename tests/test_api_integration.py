"""The scoring API on the real broker, answered by a real worker.

The API runs in the test's process (its Kafka link and handlers, served by aiohttp's
test server); the worker is a ``flagstream worker`` subprocess.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kafka_helpers import free_port, produce, read_topic
from model_helpers import decided, in_process, publish_champion, serving_version, wait_until
from test_pipeline_integration import trained_champion, transaction

from flagstream.codec import dumps, loads
from flagstream.scoring.model_key import KEY_FILE
from flagstream.streams.api_answers import AnswerBook, answer_of
from flagstream.streams.api_kafka import KafkaLink
from flagstream.streams.api_service import ScoringApi
from flagstream.streams.config import Secret, Settings
from flagstream.streams.topics import partition_for

pytestmark = pytest.mark.integration

KEY = "integration-api-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def running_api(s: Settings) -> tuple[TestClient, KafkaLink]:
    book = AnswerBook(s.api_answers)
    link = KafkaLink(s, book)
    await link.start()
    client = TestClient(TestServer(ScoringApi(s, book, link).application()))
    await client.start_server()
    return client, link


async def stop(client: TestClient, link: KafkaLink) -> None:
    await client.close()
    await link.stop()


def by_transaction(records) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        value = loads(r.value)
        out.setdefault(value["transaction_id"], []).append(value)
    return out


def test_api_and_stream_share_one_decision_and_one_state_update(settings, worker_factory):
    state = trained_champion()
    version = publish_champion(settings, state)
    worker = worker_factory()
    wait_until(lambda: serving_version(worker) == version, 60, "the published champion in use", worker)
    # a deadline no loaded machine misses: this test is about the decided path
    s = settings.with_(api_key=Secret(KEY), api_deadline_ms=60_000)
    first = transaction(1, 900.0, "c-api")  # (it carries a card number field: never echoed)
    then = transaction(2, 25.0, "c-api")  # same account, later, sent on the stream
    batch = [transaction(3, 30.0, "c-b1"), {"transaction_id": "bad"}, transaction(4, 950.0, "c-b2")]

    async def scenario() -> None:
        client, link = await running_api(s)
        # the answers are read with the worker's fetch wait, not aiokafka's 500 ms: a fetch
        # holding only the idle dead-letter partitions kept every answer unread that long
        assert link.consumer is not None and link.consumer._fetch_max_wait_ms == s.fetch_max_wait_ms
        try:
            r = await client.post("/v1/score", data=dumps(first), headers=AUTH)
            assert r.status == 200, await r.text()
            answer = await r.json()
            assert "4111" not in await r.text()
            retry = await client.post("/v1/score", data=dumps(first), headers=AUTH)
            assert retry.status == 200 and await retry.json() == answer

            assert (await client.post("/v1/score", data=dumps(first))).status == 401
            wrong = {"Authorization": "Bearer not-the-key-0000000"}
            assert (await client.post("/v1/score/batch", data=dumps([first]), headers=wrong)).status == 401
            big = dumps({**first, "transaction_id": "t-big", "note": "x" * 20_000})
            assert (await client.post("/v1/score", data=big, headers=AUTH)).status == 413
            bad = await client.post("/v1/score", data=dumps({**first, "amount": "lots"}), headers=AUTH)
            assert bad.status == 400 and (await bad.json())["error"] == "invalid_amount"

            r = await client.post("/v1/score/batch", data=dumps(batch), headers=AUTH)
            results = (await r.json())["results"]
            assert [x["status"] for x in results] == [200, 400, 200]

            # the same transaction replayed on the stream, then the account's next one
            await produce(s, "transactions", [(b"c-api", dumps(first)), (b"c-api", dumps(then))])
            scores = by_transaction(await read_topic(s, "scores", 4, distinct_keys=True))
            dlq = [loads(x.value) for x in await read_topic(s, "transactions.dlq", 1)]
        finally:
            await stop(client, link)

        assert sorted(scores) == ["t-00001", "t-00002", "t-00003", "t-00004"]
        assert all(len(v) == 1 for v in scores.values()), "one decision per transaction"
        [recorded] = scores["t-00001"]
        assert answer == answer_of(recorded) and answer["fallback"] is False
        assert answer["model_version"] == version and answer["decision"] == "review"
        assert answer["reasons"], "a review answer says why"
        assert [(d["reason"], loads(d["original"])["transaction_id"]) for d in dlq] == [
            ("duplicate_transaction", "t-00001")]
        # one state update: the account's next transaction sees exactly one earlier one
        want = in_process([[first, then], batch[::2]], [state, None],
                          [settings.threshold, settings.threshold])
        for tx in ("t-00001", "t-00002", "t-00003", "t-00004"):
            assert decided(scores[tx][0]) == decided(want[tx]), tx
        for result, tx in zip(results[::2], ("t-00003", "t-00004"), strict=True):
            assert {k: result[k] for k in ("decision", "score", "model_version")} == {
                k: scores[tx][0][k] for k in ("decision", "score", "model_version")}

    asyncio.run(scenario())


def test_past_the_deadline_the_first_record_on_scores_is_the_answer(settings, worker_factory):
    worker = worker_factory()
    wait_until(lambda: serving_version(worker), 60, "the worker serving", worker)
    s = settings.with_(api_key=Secret(KEY), api_deadline_ms=1, api_fallback="approve")
    tx = transaction(9, 700.0, "c-late")

    async def scenario() -> tuple[dict, dict, list[dict]]:
        client, link = await running_api(s)
        try:
            r = await client.post("/v1/score", data=dumps(tx), headers=AUTH)
            assert r.status == 200, await r.text()
            answer = await r.json()
            records = await read_topic(s, "scores", 2)  # the fallback and the real decision
            retry = await (await client.post("/v1/score", data=dumps(tx), headers=AUTH)).json()
        finally:
            await stop(client, link)
        return answer, retry, [loads(x.value) for x in records]

    answer, retry, records = asyncio.run(scenario())
    assert len(records) == 2 and {bool(x.get("fallback")) for x in records} == {True, False}
    # (a 1 ms deadline is always missed, but the worker may still win the race to scores)
    assert answer == answer_of(records[0]) and retry == answer
    if answer["fallback"]:
        assert answer["decision"] == "approve" and answer["score"] is None


def test_a_killed_workers_accounts_are_answered_again_after_the_rebalance(settings, worker_factory, tmp_path):
    state = trained_champion()
    version = publish_champion(settings, state)
    first_worker = worker_factory()
    wait_until(lambda: serving_version(first_worker) == version, 60, "the champion in use", first_worker)
    s = settings.with_(api_key=Secret(KEY), api_deadline_ms=120_000)
    # an account on every partition, so whichever partitions the killed worker held are asked for
    accounts = [f"c-k{i}" for i in range(12)]
    assert {partition_for(a, settings.partitions) for a in accounts} == set(range(settings.partitions))
    # (merchants of their own: merchant state reaches the scorer asynchronously, so the
    # second transactions must not share a merchant with anything scored before)
    before = [{**transaction(100 + i, 40.0, a), "merchant_id": f"m-b{i}"} for i, a in enumerate(accounts)]
    after = [{**transaction(200 + i, 45.0, a), "merchant_id": f"m-a{i}"} for i, a in enumerate(accounts)]

    async def call_all(client: TestClient, txs: list[dict]) -> list[dict]:
        r = await client.post("/v1/score/batch", data=dumps(txs), headers=AUTH)
        assert r.status == 200, await r.text()
        return (await r.json())["results"]

    async def scenario() -> tuple[list[dict], list[dict]]:
        client, link = await running_api(s)
        try:
            answered_before = await call_all(client, before)
            second = tmp_path / "second"  # its own tables, the same model signing key
            second.mkdir()
            shutil.copy(settings.data_path / KEY_FILE, second / KEY_FILE)
            second_worker = worker_factory(data_dir=str(second), web_port=free_port())
            wait_until(lambda: serving_version(second_worker) == version, 60, "the second worker",
                       second_worker)
            first_worker.kill()  # its partitions move to the second worker after the session timeout
            answered_after = await call_all(client, after)
        finally:
            await stop(client, link)
        return answered_before, answered_after

    answered_before, answered_after = asyncio.run(scenario())
    assert all(x["status"] == 200 and not x["fallback"] for x in answered_before + answered_after)
    # each account's second transaction saw its first: the state moved with the partition
    want = in_process([before + after], [state], [settings.threshold])
    for answer in answered_before + answered_after:
        assert answer["score"] == want[answer["transaction_id"]]["score"], answer["transaction_id"]
        assert answer["decision"] == want[answer["transaction_id"]]["decision"]
