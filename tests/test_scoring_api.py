"""The scoring API's request handling without a broker: a fake Kafka link plays the worker.

The link records what the API produces and answers the way the topics would: a decision
(or a dead letter, or nothing) for each transaction, fallbacks appended to ``scores``
after whatever is already there.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from flagstream.codec import dumps, loads
from flagstream.streams.api_answers import AnswerBook, first_on_scores, is_fallback
from flagstream.streams.api_service import ScoringApi
from flagstream.streams.config import Secret, Settings

KEY = "test-api-key-000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}


def tx(i: int, amount: float = 20.0, **extra) -> dict:
    return {"transaction_id": f"t-{i}", "account_id": f"c-{i % 3}", "merchant_id": "m-1",
            "amount": amount, "timestamp": "2018-04-01T00:07:56Z", **extra}


def decision_for(record: dict, decision: str = "approve") -> bytes:
    return dumps({"transaction_id": record["transaction_id"], "account_id": record["account_id"],
                  "decision": decision, "score": 0.25 if decision == "approve" else 0.75,
                  "threshold": 0.5, "model_version": "v-1", "features": [0.0] * 3,
                  "reasons": [] if decision == "approve" else [{"feature": "amount"}]})


class FakeLink:
    """Kafka as the API sees it; ``mode`` says how the 'worker' answers each transaction."""

    def __init__(self, book: AnswerBook, mode: str = "decide") -> None:
        self.book, self.mode = book, mode
        self.ready = asyncio.Event()
        self.ready.set()
        self.sent: list[bytes] = []
        self.fallbacks: list[dict] = []
        self.late: list[bytes] = []  # decisions that reach scores just before a fallback

    async def send_transaction(self, transaction_id: str, account_id: str, value: bytes) -> None:
        self.sent.append(value)
        record = loads(value)
        key = record["transaction_id"].encode()
        loop = asyncio.get_running_loop()
        if self.mode == "decide":
            loop.call_later(0.01, self.book.record, key, decision_for(record))
        elif self.mode == "duplicate":
            loop.call_later(0.01, self.book.dead_lettered, record["transaction_id"],
                            "duplicate_transaction", "already seen")
        elif self.mode == "late":
            self.late.append(decision_for(record, "review"))

    async def send_fallback(self, transaction_id: str, record: dict) -> tuple[int, int]:
        for late in self.late:  # appended to the partition before the fallback
            self.book.record(transaction_id.encode(), late)
        self.fallbacks.append(record)
        self.book.record(transaction_id.encode(), dumps(record))
        return 0, len(self.fallbacks)

    async def passed(self, transaction_id: str, partition: int, offset: int, timeout_s: float) -> bool:
        return True


def settings(**overrides) -> Settings:
    return Settings(api_key=Secret(KEY), api_deadline_ms=100, max_record_bytes=2_000,
                    api_max_body_bytes=20_000, api_max_batch=5, **overrides)


async def client(mode: str = "decide", **overrides) -> tuple[TestClient, FakeLink, AnswerBook]:
    s = settings(**overrides)
    book = AnswerBook(1_000)
    link = FakeLink(book, mode)
    api = ScoringApi(s, book, link)
    c = TestClient(TestServer(api.application()))
    await c.start_server()
    return c, link, book


def run(coro):
    return asyncio.run(coro)


def test_calls_without_the_key_get_401_and_nothing_is_produced():
    async def go():
        c, link, _ = await client()
        try:
            for headers in ({}, {"Authorization": "Bearer wrong-key-000000000"},
                            {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"},
                            {"Authorization": f"Basic {KEY}"}):
                r = await c.post("/v1/score", data=dumps(tx(1)), headers=headers)
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            r = await c.post("/v1/score/batch", data=dumps([tx(1)]))
            assert r.status == 401
            assert link.sent == []
        finally:
            await c.close()
    run(go())


def test_an_address_guessing_keys_is_throttled_and_then_even_the_right_key_waits():
    async def go():
        c, link, _ = await client()
        try:
            guesses = [await c.post("/v1/score", data=dumps(tx(1)),
                                    headers={"Authorization": f"Bearer guess-{i:020d}"})
                       for i in range(10)]
            assert [r.status for r in guesses] == [401] * 10
            right = await c.post("/v1/score", data=dumps(tx(1)), headers=AUTH)
            assert right.status == 429 and 0 < int(right.headers["Retry-After"]) <= 300
            assert (await right.json())["error"] == "too_many_wrong_keys" and link.sent == []
        finally:
            await c.close()
    run(go())


def test_an_answer_is_the_recorded_decision_and_a_retry_gets_the_first_answer():
    async def go():
        c, link, book = await client()
        try:
            r = await c.post("/v1/score", data=dumps(tx(1)), headers=AUTH)
            assert r.status == 200
            first = await r.json()
            assert first == {"transaction_id": "t-1", "decision": "approve", "score": 0.25,
                             "threshold": 0.5, "model_version": "v-1", "reasons": [],
                             "fallback": False}
            assert [loads(v)["origin"] for v in link.sent] == ["api"]
            book.record(b"t-1", decision_for(tx(1), "review"))  # a later record never replaces it
            again = await c.post("/v1/score", data=dumps(tx(1)), headers=AUTH)
            assert await again.json() == first and len(link.sent) == 1
        finally:
            await c.close()
    run(go())


def test_concurrent_calls_for_one_transaction_share_one_attempt():
    async def go():
        c, link, _ = await client()
        try:
            calls = [c.post("/v1/score", data=dumps(tx(7)), headers=AUTH) for _ in range(5)]
            answers = [await r.json() for r in await asyncio.gather(*calls)]
            assert len(link.sent) == 1
            assert all(a == answers[0] and a["decision"] == "approve" for a in answers)
        finally:
            await c.close()
    run(go())


@pytest.mark.parametrize("body, reason", [
    (b"not json", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (dumps({**tx(1), "amount": -5}), "invalid_amount"),
    (dumps({k: v for k, v in tx(1).items() if k != "timestamp"}), "missing_field"),
    (dumps({**tx(1), "timestamp": "yesterday"}), "invalid_timestamp"),
    (dumps({**tx(1), "timestamp": "2099-01-01T00:00:00Z"}), "timestamp_in_future"),
    (dumps({**tx(1), "x": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}), "too_deep"),
    (dumps({**tx(1), "account_id": "4111 1111 1111 1111"}), "card_number_in_field"),
    (b'{"transaction_id": "x", "amount": 1e999}', "invalid_json"),
    (b"\xff\xfe\x00", "invalid_json"),
])
def test_invalid_transactions_get_400_with_the_streams_reason(body, reason):
    async def go():
        c, link, _ = await client()
        try:
            r = await c.post("/v1/score", data=body, headers=AUTH)
            assert r.status == 400
            answer = await r.json()
            assert answer["error"] == reason and answer["detail"]
            assert "4111" not in await r.text()
            assert link.sent == []
        finally:
            await c.close()
    run(go())


def test_oversize_bodies_get_413():
    async def go():
        c, link, _ = await client()
        try:
            big = dumps({**tx(1), "note": "x" * 3_000})  # over max_record_bytes
            r = await c.post("/v1/score", data=big, headers=AUTH)
            assert r.status == 413 and (await r.json())["error"] == "too_large"
            huge = b"[" + b"1," * 15_000 + b"1]"  # over api_max_body_bytes
            for path in ("/v1/score", "/v1/score/batch"):
                r = await c.post(path, data=huge, headers=AUTH)
                assert r.status == 413
            r = await c.post("/v1/score/batch", data=dumps([tx(i) for i in range(6)]), headers=AUTH)
            assert r.status == 413 and (await r.json())["error"] == "too_many"
            assert link.sent == []
        finally:
            await c.close()
    run(go())


def test_a_batch_answers_each_transaction_in_order():
    async def go():
        c, link, _ = await client()
        try:
            body = dumps([tx(1), {**tx(2), "amount": "x"}, tx(3), "junk"])
            r = await c.post("/v1/score/batch", data=body, headers=AUTH)
            assert r.status == 200
            results = (await r.json())["results"]
            assert [x["status"] for x in results] == [200, 400, 200, 400]
            assert [x.get("transaction_id") for x in results] == ["t-1", None, "t-3", None]
            assert [x.get("error") for x in results] == [None, "invalid_amount", None, "not_an_object"]
            assert len(link.sent) == 2
            for bad in (b"{}", b"[]", b"nope"):
                r = await c.post("/v1/score/batch", data=bad, headers=AUTH)
                assert r.status == 400
        finally:
            await c.close()
    run(go())


def test_no_decision_in_time_answers_the_fallback_recorded_on_scores():
    async def go():
        c, link, book = await client(mode="silent")
        try:
            r = await c.post("/v1/score", data=dumps(tx(1, 999.0)), headers=AUTH)
            answer = await r.json()
            assert r.status == 200
            assert answer["fallback"] is True and answer["decision"] == "review"
            assert answer["score"] is None and answer["model_version"] is None
            [recorded] = link.fallbacks
            assert recorded["transaction_id"] == "t-1" and recorded["fallback"] is True
            book.record(b"t-1", decision_for(tx(1)))  # the real decision, too late
            again = await c.post("/v1/score", data=dumps(tx(1, 999.0)), headers=AUTH)
            assert await again.json() == answer and len(link.sent) == 1
        finally:
            await c.close()
    run(go())


def test_a_decision_that_reaches_scores_before_the_fallback_is_the_answer():
    async def go():
        c, link, _ = await client(mode="late", api_fallback="approve")
        try:
            r = await c.post("/v1/score", data=dumps(tx(1)), headers=AUTH)
            answer = await r.json()
            assert answer["fallback"] is False and answer["decision"] == "review"
            assert len(link.fallbacks) == 1  # written, but second on the partition: it does not count
        finally:
            await c.close()
    run(go())


def test_a_duplicate_gets_the_first_decision_or_409_when_it_is_not_remembered():
    async def go():
        c, link, book = await client(mode="duplicate")
        try:
            r = await c.post("/v1/score", data=dumps(tx(1)), headers=AUTH)
            assert r.status == 409 and (await r.json())["error"] == "duplicate_transaction"
            # remembered (read from scores after the call began): that is the answer
            link.mode = "silent"
            book.record(b"t-2", decision_for(tx(2), "review"))
            r = await c.post("/v1/score", data=dumps(tx(2)), headers=AUTH)
            assert (await r.json())["decision"] == "review" and len(link.sent) == 1
        finally:
            await c.close()
    run(go())


def test_the_api_refuses_to_run_without_a_key():
    with pytest.raises(ValueError, match="FLAGSTREAM_API_KEY"):
        ScoringApi(Settings(), AnswerBook(), FakeLink.__new__(FakeLink))


def test_the_first_record_on_scores_is_the_one_the_learner_counts():
    """A fallback first: the late decision is ignored; a decision first: the fallback is."""
    record = tx(1)
    fallback = dumps({"transaction_id": "t-1", "decision": "review", "fallback": True})
    real = loads(decision_for(record))
    api_real = {**real, "origin": "api"}
    table: dict = {}
    out, settled = first_on_scores(table, [b"t-1", b"t-1"], [fallback, dumps(api_real)],
                                   [fallback, api_real])
    assert out == [None, None] and settled == 2 and is_fallback(table[b"t-1"])
    table = {b"t-2": dumps({**real, "transaction_id": "t-2"})}
    out, settled = first_on_scores(table, [b"t-2", b"t-3"], [fallback, dumps(real)], [fallback, real])
    assert out == [None, real] and settled == 1 and not is_fallback(table[b"t-2"])
    assert b"t-3" not in table  # (the learner stores real decisions itself)


def test_a_label_for_a_fallback_decision_is_refused_with_its_reason():
    from flagstream.scoring.handle import ModelHandle
    from flagstream.scoring.learner import Learner
    from flagstream.scoring.linear import LinearChampion
    from flagstream.streams.api_answers import fallback_record

    decisions = {"t-1": fallback_record(tx(1), "review", 1_000_000)}
    learner = Learner(ModelHandle(LinearChampion()), decisions.get, clock_ms=lambda: 1_000_000,
                      publish_each_batch=False)
    before = dumps(learner.handle.model.to_state())
    label = dumps({"transaction_id": "t-1", "label": "fraud", "source": "review", "reviewer": "ana"})
    out = learner.learn([label], [0], 0)
    assert [r.reason for r in out.rejections] == ["fallback_decision"] and out.learned == 0
    assert dumps(learner.handle.model.to_state()) == before


def test_the_bench_caller_counts_each_calls_outcome():
    from flagstream.perf.bench.api_contender import call_at_rate
    from flagstream.perf.bench.workload import Record

    async def go():
        c, link, _ = await client()
        try:
            url = str(c.make_url("/v1/score"))
            records = [Record(b"c", dumps(tx(i)), 0, f"t-{i}") for i in range(6)]
            records.append(Record(b"c", b"junk", 0, "junk"))
            lat, outcomes, sent = await call_at_rate(url, records, rate=1_000, key=KEY)
            assert dict(outcomes) == {"200": 6, "400": 1}
            assert sorted(lat) == sorted(f"t-{i}" for i in range(6)) and len(sent) == 7
            _, refused, _ = await call_at_rate(url, records[:2], rate=1_000, key="wrong-key-000000000")
            assert dict(refused) == {"401": 2}
        finally:
            await c.close()
    run(go())


def test_the_answer_book_keeps_an_answer_in_its_own_size():
    """A worker's API keeps up to 100,000 answers as it encoded them: orjson's output holds
    its ~4 KB write buffer, 400 MB at the bound; the book keeps each in its own size."""
    import tracemalloc

    book = AnswerBook(max_answers=2_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1_000):  # (as the worker does: encoded, recorded, the encoding dropped)
            book.record(f"t-{i}".encode(), dumps({"transaction_id": f"t-{i}", "decision": "approve",
                                                  "score": 0.1, "threshold": 0.5, "model_version": "v1"}))
        per_answer = (tracemalloc.get_traced_memory()[0] - before) / 1_000
    finally:
        tracemalloc.stop()
    assert per_answer < 1_000, f"{per_answer:.0f} bytes an answer"
    first = book.first("t-7")
    assert first is not None and (first["transaction_id"], first["decision"]) == ("t-7", "approve")
