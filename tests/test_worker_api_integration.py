"""The scoring API served by real workers (``FLAGSTREAM_WORKER_API``) on the real broker."""

from __future__ import annotations

import asyncio
import shutil
import time

import aiohttp
import pytest
from kafka_helpers import free_port, produce, read_topic
from model_helpers import decided, in_process, publish_champion, serving_version, wait_until
from test_api_integration import by_transaction
from test_pipeline_integration import trained_champion, transaction

from flagstream.codec import dumps, loads
from flagstream.scoring.model_key import KEY_FILE
from flagstream.streams.api_answers import answer_of
from flagstream.streams.config import Secret
from flagstream.streams.topics import partition_for

pytestmark = pytest.mark.integration

KEY = "integration-worker-api-01"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def call(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    path: str = "/v1/score",
    headers: dict | None = None,
    retry_s: float = 0.0,
) -> tuple[int, dict]:
    """One call; 503 (not ready, rebalancing) is retried for ``retry_s``, as a client would."""
    deadline = time.monotonic() + retry_s
    while True:
        async with session.post(
            url + path, data=dumps(body), headers=AUTH if headers is None else headers
        ) as r:
            status, answer = r.status, await r.json(content_type=None)
        if status != 503 or time.monotonic() > deadline:
            return status, answer
        await asyncio.sleep(0.2)


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> int:
    """A worker's counter, summed over its labels."""
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    lines = [x for x in text.splitlines() if x.startswith((f"{name} ", f"{name}{{"))]
    return int(sum(float(x.split()[-1]) for x in lines))


async def decisions_made(session: aiohttp.ClientSession, url: str) -> int:
    """The decisions a worker has made (its ``flagstream_decisions_total``, every kind)."""
    return await metric(session, url, "flagstream_decisions_total")


async def decided_by_each(session: aiohttp.ClientSession, workers: list, expected: int) -> list[int]:
    """Each worker's decisions, once they add up to ``expected`` (or after 10 s): a decision
    is counted when its step completes, just after its call was answered (the account's row
    is written after the answer)."""
    give_up = time.monotonic() + 10.0
    while True:
        counts = [await decisions_made(session, w.url) for w in workers]
        if sum(counts) >= expected or time.monotonic() > give_up:
            return counts
        await asyncio.sleep(0.05)


def test_a_worker_decides_api_calls_itself_once_with_the_stream(settings, worker_factory):
    state = trained_champion()
    version = publish_champion(settings, state)
    s = settings.with_(api_key=Secret(KEY), api_deadline_ms=60_000, worker_api=True)
    worker = worker_factory(api_key=s.api_key, api_deadline_ms=60_000, worker_api=True)
    wait_until(lambda: serving_version(worker) == version, 60, "the published champion in use", worker)
    first = transaction(1, 900.0, "c-api")
    then = transaction(2, 25.0, "c-api")  # same account, later, sent on the stream
    home = partition_for("c-api", settings.partitions)
    neighbours = [a for a in (f"c-n{i}" for i in range(200))
                  if partition_for(a, settings.partitions) == home][:4]

    async def scenario() -> tuple[dict, list, dict, list]:
        async with aiohttp.ClientSession() as session:
            status, answer = await call(session, worker.url, first, retry_s=60)
            assert status == 200, answer
            assert await call(session, worker.url, first) == (200, answer)  # a retry: the first answer
            assert (await call(session, worker.url, first, headers={}))[0] == 401
            bad = await call(session, worker.url, {**first, "transaction_id": "t-x", "amount": "lots"})
            assert bad == (400, {"error": "invalid_amount", "detail": bad[1]["detail"]})
            status, batch = await call(
                session,
                worker.url,
                [transaction(3, 30.0, "c-b1"), {"transaction_id": "bad"}],
                path="/v1/score/batch",
            )
            assert status == 200 and [x["status"] for x in batch["results"]] == [200, 400]
            # more calls on the first one's partition: each comes right after what the scorer
            # staged there, so it is decided at once, and the agent reads it as a replay
            for i, account in enumerate(neighbours):
                status, answer_n = await call(session, worker.url, transaction(10 + i, 20.0, account))
                assert status == 200 and answer_n["fallback"] is False, answer_n
            await asyncio.sleep(1.0)  # (the agent reads them)
            replayed = await metric(session, worker.url, "flagstream_replayed_total")
            assert replayed >= len(neighbours) - 1, replayed
            staged = await metric(session, worker.url, "flagstream_api_step_size_sum")
            answered = await metric(session, worker.url, 'flagstream_api_calls_total{outcome="answered"}')
            assert staged >= len(neighbours) - 1 and answered == 2 + len(neighbours), (staged, answered)
            async with session.get(worker.url + "/healthz") as r:
                health = await r.json()
            assert health["api"] == {"assigned": True, "decided_here": settings.partitions}, health
            assert health["rebalancing"] is False, health
        # the same transaction replayed on the stream, then the account's next one
        await produce(s, "transactions", [(b"c-api", dumps(first)), (b"c-api", dumps(then))])
        scores = by_transaction(await read_topic(s, "scores", 3 + len(neighbours), distinct_keys=True))
        dlq = [loads(x.value) for x in await read_topic(s, "transactions.dlq", 1)]
        return answer, batch["results"], scores, dlq

    answer, results, scores, dlq = asyncio.run(scenario())
    assert sorted(scores) == ["t-00001", "t-00002", "t-00003", "t-00010", "t-00011", "t-00012", "t-00013"]
    assert all(len(v) == 1 for v in scores.values()), "one decision per transaction"
    [recorded] = scores["t-00001"]
    assert answer == answer_of(recorded) and answer["fallback"] is False
    assert answer["model_version"] == version and answer["decision"] == "review"
    assert [(d["reason"], loads(d["original"])["transaction_id"]) for d in dlq] == [
        ("duplicate_transaction", "t-00001")
    ]
    # one state update: the account's next transaction sees exactly one earlier one
    want = in_process(
        [[first, then], [transaction(3, 30.0, "c-b1")]],
        [state, None],
        [settings.threshold, settings.threshold],
    )
    for tx in ("t-00001", "t-00002", "t-00003"):
        assert decided(scores[tx][0]) == decided(want[tx]), tx
    assert results[0]["score"] == scores["t-00003"][0]["score"]


def test_past_a_worker_apis_deadline_the_first_record_on_scores_is_the_answer(settings, worker_factory):
    s = settings.with_(api_key=Secret(KEY), api_deadline_ms=1, api_fallback="approve", worker_api=True)
    worker = worker_factory(api_key=s.api_key, api_deadline_ms=1, api_fallback="approve", worker_api=True)
    wait_until(lambda: serving_version(worker), 60, "the worker serving", worker)
    tx = transaction(9, 700.0, "c-late")

    async def scenario() -> tuple[dict, dict, list[dict]]:
        async with aiohttp.ClientSession() as session:
            status, answer = await call(session, worker.url, tx, retry_s=60)
            assert status == 200, answer
            records = await read_topic(s, "scores", 1)
            await asyncio.sleep(1.0)  # (a late decision, if any, lands after the fallback)
            records = await read_topic(s, "scores", len(records))
            retry = await call(session, worker.url, tx)
        return answer, retry[1], [loads(x.value) for x in records]

    answer, retry, records = asyncio.run(scenario())
    assert answer == answer_of(records[0]) and retry == answer
    if answer["fallback"]:  # (a 1 ms deadline is usually missed, but not always)
        assert answer["decision"] == "approve" and answer["score"] is None
        assert [bool(x.get("fallback")) for x in records] == [True, False], "the late decision after it"
    else:
        assert len(records) == 1


def test_two_workers_answer_every_account_and_a_killed_workers_accounts_after_the_rebalance(
    settings, worker_factory, tmp_path
):
    state = trained_champion()
    version = publish_champion(settings, state)
    api = {"api_key": Secret(KEY), "api_deadline_ms": 60_000, "worker_api": True}
    first = worker_factory(**api)
    wait_until(lambda: serving_version(first) == version, 60, "the champion in use", first)
    second_dir = tmp_path / "second"  # its own tables, the same model signing key
    second_dir.mkdir()
    shutil.copy(settings.data_path / KEY_FILE, second_dir / KEY_FILE)
    second = worker_factory(data_dir=str(second_dir), web_port=free_port(), **api)
    wait_until(lambda: serving_version(second) == version, 60, "the second worker", second)
    accounts = [f"c-k{i}" for i in range(12)]  # an account on every partition
    assert {partition_for(a, settings.partitions) for a in accounts} == set(range(settings.partitions))
    before = [{**transaction(100 + i, 40.0, a), "merchant_id": f"m-b{i}"} for i, a in enumerate(accounts)]
    after = [{**transaction(200 + i, 45.0, a), "merchant_id": f"m-a{i}"} for i, a in enumerate(accounts)]

    async def scenario() -> tuple[list[dict], list[dict]]:
        async with aiohttp.ClientSession() as session:
            # every account through the first worker: it forwards what the second holds
            answered_before = []
            for tx in before:
                status, answer = await call(session, first.url, tx, retry_s=60)
                assert status == 200, answer
                answered_before.append(answer)
            # each worker decided the calls for the accounts it holds (the first forwarded)
            decided_by = await decided_by_each(session, [first, second], len(accounts))
            assert sum(decided_by) == len(accounts) and min(decided_by) > 0, decided_by
            second.kill()  # its partitions move to the first worker after the session timeout
            answered_after = []
            for tx in after:
                status, answer = await call(session, first.url, tx, retry_s=120)
                assert status == 200, answer
                answered_after.append(answer)
        return answered_before, answered_after

    answered_before, answered_after = asyncio.run(scenario())
    assert not any(x["fallback"] for x in answered_before + answered_after)
    # each account's second transaction saw its first: the state moved with the partition
    want = in_process([before + after], [state], [settings.threshold])
    for answer in answered_before + answered_after:
        assert answer["score"] == want[answer["transaction_id"]]["score"], answer["transaction_id"]
        assert answer["decision"] == want[answer["transaction_id"]]["decision"]
