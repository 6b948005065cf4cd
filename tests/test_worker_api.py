"""The scoring API served by scoring workers, without a broker.

A fake scorer plays :meth:`Scorer.decide_now` with the real :class:`ApiCalls` (stage,
hold, release, deliver) and a fake producer plays ``scores``, so the order of records
there can be checked; two APIs in one test forward to each other over real HTTP.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from flagstream.codec import dumps, loads
from flagstream.streams.api_answers import AnswerBook, is_fallback
from flagstream.streams.api_service import FORWARDED, forward_signature
from flagstream.streams.api_worker import ApiCalls, WorkerApi, WorkerLink
from flagstream.streams.config import Secret, Settings
from flagstream.streams.topics import partition_for

KEY = "worker-api-key-0000001"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARTITIONS = 4


def settings(**overrides: Any) -> Settings:
    return Settings(
        **{
            "api_key": Secret(KEY),
            "api_deadline_ms": 200,
            "partitions": PARTITIONS,
            "worker_api": True,
            **overrides,
        }
    )


def account_on(partition: int) -> str:
    return next(f"c-{i}" for i in range(1_000) if partition_for(f"c-{i}", PARTITIONS) == partition)


def tx(i: int, account: str, amount: float = 20.0) -> dict:
    return {
        "transaction_id": f"t-{i}",
        "account_id": account,
        "merchant_id": "m-1",
        "amount": amount,
        "timestamp": "2018-04-01T00:07:56Z",
    }


class Meta:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, key: bytes, value: bytes, timestamp: Any = None, headers: Any = None) -> Meta:
        self.records.append((key, value))
        return Meta(0, len(self.records) - 1)  # (as aiokafka's: the offset within the batch)

    def close(self) -> None:
        pass


class FakeProducer:
    """Every topic-partition as a list of ``(key, value)``; a send can be made to fail."""

    def __init__(self) -> None:
        self.topics: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        self.fail = False
        #: topics whose sends fail (all of them while ``fail``)
        self.failing: set[str] = set()

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future:
        if self.fail or topic in self.failing:
            raise ConnectionError("broker down")
        log = self.topics.setdefault((topic, partition), [])
        first = len(log)
        log.extend(batch.records)
        done = asyncio.get_running_loop().create_future()
        done.set_result(Meta(partition, first))
        return done

    def on(self, topic: str) -> list[tuple[bytes, dict]]:
        return [(k, loads(v)) for (t, _), log in sorted(self.topics.items()) if t == topic for k, v in log]


class FakeScorer:
    """Decides like the worker's scorer: stage (hold back what fell back), then deliver."""

    def __init__(self, calls: ApiCalls, producer: FakeProducer, s: Settings) -> None:
        self.calls, self.producer, self.settings = calls, producer, s
        self.gate = asyncio.Event()
        self.gate.set()
        self.decided: list[str] = []
        self.tasks: list[asyncio.Future] = []

    async def decide_now(self, partition: int, offset: int, key: bytes, value: bytes, holds: Any) -> bool:
        await self.gate.wait()
        assert holds(partition)
        record = loads(value)
        self.decided.append(record["transaction_id"])
        d = {
            "transaction_id": record["transaction_id"],
            "decision": "approve",
            "score": 0.125,
            "threshold": 0.5,
            "model_version": "v-1",
            "reasons": [],
            "origin": "api",
        }
        send, held = self.calls.staging([d])
        self.tasks.append(asyncio.ensure_future(self._complete(send, held)))
        return True

    async def _complete(self, send: list[dict], held: list[dict]) -> None:
        await asyncio.sleep(0.005)
        scores = self.settings.topic("scores")
        for d in send:
            part = partition_for(d["transaction_id"], PARTITIONS)
            await self.producer.send_batch(_batch(d), scores, part)
        for d in held:

            async def out(x: dict = d) -> None:
                await self.producer.send_batch(
                    _batch(x), scores, partition_for(x["transaction_id"], PARTITIONS)
                )

            await self.calls.release(d, out)
        self.calls.delivered(send, [])


def _batch(d: dict) -> FakeBatch:
    b = FakeBatch()
    b.append(d["transaction_id"].encode(), dumps(d))
    return b


class FakeFollower:
    """:class:`~flagstream.streams.scores_follower.ScoresFollower`'s calls, read from the fakes."""

    def __init__(self, read_back: Any) -> None:
        self.read_back = read_back

    async def first(self, transaction_id: str, partition: int, since_ms: int) -> bool:
        return bool(await self.read_back(transaction_id, partition, None))

    async def past(self, transaction_id: str, partition: int, offset: int, since_ms: int) -> bool:
        return bool(await self.read_back(transaction_id, partition, offset))

    def expect(self, transaction_id: str) -> None:
        pass

    def release(self, transaction_id: str) -> None:
        pass

    async def stop(self) -> None:
        pass


class Worker:
    """One worker's API over the fakes, served on a real local HTTP port."""

    def __init__(self, s: Settings, owned: set[int]) -> None:
        self.settings = s
        self.producer = FakeProducer()
        self.calls = ApiCalls(AnswerBook(100))
        self.scorer = FakeScorer(self.calls, self.producer, s)
        self.link = WorkerLink(s, self.calls, self.scorer.decide_now, lambda: self.producer)
        self.link.follower = cast(Any, FakeFollower(self.read_back))
        self.api = WorkerApi(s, self.link)
        self.owned = owned
        self.client: TestClient | None = None

    async def read_back(self, transaction_id: str, partition: int, offset: int | None) -> bool:
        """``scores`` read back as the link would, from this worker's fake producer."""
        key = transaction_id.encode()
        while True:
            log = self.producer.topics.get((self.settings.topic("scores"), partition), [])
            for at, (k, v) in enumerate(log):
                if k == key:
                    self.book_first(k, v)
                if offset is not None and at >= offset:
                    return True
            if offset is None and self.calls.book.first(transaction_id) is not None:
                return True
            await asyncio.sleep(0.005)

    def book_first(self, key: bytes, value: bytes) -> None:
        self.calls.book.record(key, value)

    async def start(self) -> TestClient:
        app = web.Application()
        app.router.add_post("/v1/score", self.api.guarded(self.api.score))
        app.router.add_post("/v1/score/batch", self.api.guarded(self.api.score_batch))
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        return self.client

    @property
    def url(self) -> str:
        assert self.client is not None
        return str(self.client.make_url("/"))

    async def stop(self) -> None:
        await self.api.close()
        if self.client is not None:
            await self.client.close()


def test_an_owned_account_is_decided_here_and_a_retry_gets_the_first_answer():
    async def go() -> None:
        w = Worker(settings(), set(range(PARTITIONS)))
        c = await w.start()
        w.link.assigned(w.owned, {})
        try:
            r = await c.post("/v1/score", data=dumps(tx(1, "c-1")), headers=AUTH)
            assert r.status == 200, await r.text()
            answer = await r.json()
            assert answer == {
                "transaction_id": "t-1",
                "decision": "approve",
                "score": 0.125,
                "threshold": 0.5,
                "model_version": "v-1",
                "reasons": [],
                "fallback": False,
            }
            again = await c.post("/v1/score", data=dumps(tx(1, "c-1")), headers=AUTH)
            assert await again.json() == answer
            assert w.scorer.decided == ["t-1"], "a retry is answered from memory, not decided again"
            # produced once to its account's partition (where replays find it), decided once
            assert [k for k, _ in w.producer.on(w.settings.topic("transactions"))] == [b"c-1"]
            assert (await c.post("/v1/score", data=dumps(tx(2, "c-1")))).status == 401
        finally:
            await w.stop()

    asyncio.run(go())


def test_an_account_another_worker_holds_is_forwarded_once_with_the_key():
    async def go() -> None:
        s = settings()
        a, b = Worker(s, {0, 1}), Worker(s, {2, 3})
        ca, cb = await a.start(), await b.start()
        a.link.assigned(a.owned, {2: b.url, 3: b.url})
        b.link.assigned(b.owned, {0: a.url, 1: a.url})
        here, there = account_on(0), account_on(2)
        try:
            r = await ca.post("/v1/score/batch", data=dumps([tx(1, here), tx(2, there)]), headers=AUTH)
            results = (await r.json())["results"]
            assert [x["status"] for x in results] == [200, 200]
            assert not any(x["fallback"] for x in results)
            assert (a.scorer.decided, b.scorer.decided) == (["t-1"], ["t-2"])
            # a forwarded call is never forwarded again (no loops while owners change)
            # (here: nothing decides what goes to transactions, so its fallback answers)
            body = dumps(tx(3, here))
            looped = await cb.post("/v1/score", data=body, headers={FORWARDED: forward_signature(KEY, body)})
            assert looped.status == 200 and (await looped.json())["fallback"] is True
            assert a.scorer.decided == ["t-1"] and b.scorer.decided == ["t-2"]
            produced = sorted(k for k, _ in b.producer.on(s.topic("transactions")))
            assert produced == sorted([there.encode(), here.encode()])
            # a forward carries a signature of its body, never the key; a wrong one is refused
            body = dumps(tx(4, there))
            for signed in (
                "1",
                forward_signature("another-key-00000000", body),
                forward_signature(KEY, dumps(tx(5, there))),
                forward_signature(KEY, body, time.time() - 3_600),
            ):
                r = await cb.post("/v1/score", data=body, headers={FORWARDED: signed})
                assert r.status == 401, signed
            assert b.scorer.decided == ["t-2"]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(go())


def test_while_no_worker_holds_the_partition_a_call_waits_for_the_assignment():
    async def go() -> None:
        w = Worker(settings(api_deadline_ms=2_000), set(range(PARTITIONS)))
        c = await w.start()
        w.link.assigned(w.owned, {})
        w.link.revoked()  # a rebalance began
        try:
            call = asyncio.ensure_future(c.post("/v1/score", data=dumps(tx(5, "c-5")), headers=AUTH))
            await asyncio.sleep(0.1)
            assert not call.done() and w.scorer.decided == []
            w.link.assigned(w.owned, {})
            r = await call
            assert r.status == 200 and (await r.json())["fallback"] is False
        finally:
            await w.stop()

    asyncio.run(go())


def test_a_call_before_the_first_assignment_waits_for_it_then_is_decided_here():
    """A worker just started (its producer runs, its tables still recover): no 503, the call
    waits like one in a rebalance and is decided once the partition is this worker's."""

    async def go() -> None:
        w = Worker(settings(api_deadline_ms=2_000), set(range(PARTITIONS)))
        c = await w.start()
        try:
            call = asyncio.ensure_future(c.post("/v1/score", data=dumps(tx(9, "c-9")), headers=AUTH))
            await asyncio.sleep(0.1)
            assert not call.done() and w.scorer.decided == [] and w.api.health()["assigned"] is False
            w.link.assigned(w.owned, {})
            r = await call
            assert r.status == 200 and (await r.json())["fallback"] is False
            assert w.api.health() == {"assigned": True, "decided_here": PARTITIONS}
        finally:
            await w.stop()

    asyncio.run(go())


def test_past_the_deadline_the_fallback_is_recorded_first_and_the_late_decision_after_it():
    async def go() -> None:
        s = settings(api_deadline_ms=50, api_fallback="approve")
        w = Worker(s, set(range(PARTITIONS)))
        c = await w.start()
        w.link.assigned(w.owned, {})
        w.scorer.gate.clear()  # the scorer is busy: nothing is staged before the deadline
        try:
            r = await c.post("/v1/score", data=dumps(tx(6, "c-6", 900.0)), headers=AUTH)
            answer = await r.json()
            assert r.status == 200 and answer["fallback"] is True and answer["score"] is None
            w.scorer.gate.set()
            await asyncio.sleep(0.05)
            await asyncio.gather(*w.scorer.tasks)
            scores = w.producer.on(s.topic("scores"))
            assert [(k, is_fallback(v)) for k, v in scores] == [(b"t-6", True), (b"t-6", False)]
            retry = await c.post("/v1/score", data=dumps(tx(6, "c-6", 900.0)), headers=AUTH)
            assert await retry.json() == answer
        finally:
            await w.stop()

    asyncio.run(go())


def test_a_transaction_staged_before_its_deadline_gets_its_decision_and_no_fallback():
    async def go() -> None:
        calls = ApiCalls()
        calls.expecting.update({"t-7", "t-8"})  # (this worker's calls)
        sent, held = calls.staging([{"transaction_id": "t-7", "origin": "api"}])
        assert held == [] and calls.falling_back("t-7") is None
        # a decision of another transaction (the stream's, another API's) is neither staged nor held
        assert calls.staging([{"transaction_id": "t-9", "origin": "api"}]) == (
            [{"transaction_id": "t-9", "origin": "api"}], [])
        assert "t-9" not in calls.staged and calls.falling_back("t-8") is not None
        _, held = calls.staging([{"transaction_id": "t-8", "origin": "api"}])
        assert held == [{"transaction_id": "t-8", "origin": "api"}]
        # a refusal answers only a call of this worker's
        calls.staging([], ["t-7", "t-9"])
        assert "t-9" not in calls.staged

    asyncio.run(go())


def test_a_fallback_that_could_not_be_recorded_releases_the_decision_and_says_503():
    async def go() -> None:
        s = settings(api_deadline_ms=50)
        w = Worker(s, set(range(PARTITIONS)))
        c = await w.start()
        w.link.assigned(w.owned, {})
        w.scorer.gate.clear()
        w.producer.failing.add(s.topic("scores"))  # (the fallback cannot be recorded)
        try:
            r = await c.post("/v1/score", data=dumps(tx(9, "c-9")), headers=AUTH)
            assert r.status == 503
            w.producer.failing.clear()
            w.scorer.gate.set()
            await asyncio.sleep(0.05)
            await asyncio.gather(*w.scorer.tasks)
            assert [is_fallback(v) for _, v in w.producer.on(s.topic("scores"))] == [False]
            retry = await c.post("/v1/score", data=dumps(tx(9, "c-9")), headers=AUTH)
            assert retry.status == 200 and (await retry.json())["fallback"] is False
        finally:
            await w.stop()

    asyncio.run(go())


def test_a_decision_staged_while_its_fallback_is_in_flight_is_sent_only_after_it():
    async def go() -> None:
        calls = ApiCalls()
        calls.expecting.add("t-10")
        settled = calls.falling_back("t-10")
        assert settled is not None
        sent, held = calls.staging([{"transaction_id": "t-10", "origin": "api"}])
        assert sent == [] and len(held) == 1
        order: list[str] = []

        async def send(d: dict) -> None:
            order.append("decision")

        release = asyncio.ensure_future(calls.release(held[0], send))
        await asyncio.sleep(0.01)
        assert order == [] and not release.done(), "held until the fallback is settled"
        order.append("fallback")
        calls.book.record(b"t-10", dumps({"transaction_id": "t-10", "decision": "review", "fallback": True}))
        calls.settled("t-10", True)
        await release
        assert order == ["fallback", "decision"]
        assert calls.book.first("t-10")["fallback"] is True, "the fallback stays the first answer"

    asyncio.run(go())


def test_a_holder_that_does_not_answer_gets_the_call_through_the_stream_path():
    async def go() -> None:
        s = settings(api_deadline_ms=100)
        w = Worker(s, {0, 1})
        c = await w.start()
        w.link.assigned(w.owned, {2: "http://127.0.0.1:9", 3: "http://127.0.0.1:9"})  # (nothing listens)
        there = account_on(2)
        try:
            r = await c.post("/v1/score", data=dumps(tx(11, there)), headers=AUTH)
            assert r.status == 200 and (await r.json())["fallback"] is True
            assert w.api.counts["handed_over"] == 1 and w.scorer.decided == []
            assert [k for k, _ in w.producer.on(s.topic("transactions"))] == [there.encode()]
            assert [is_fallback(v) for _, v in w.producer.on(s.topic("scores"))] == [True]
            assert not w.link.in_flight and not w.link.following and not w.link.active
        finally:
            await w.stop()

    asyncio.run(go())


def test_a_transaction_kafka_does_not_take_gets_503_and_nothing_is_decided():
    async def go() -> None:
        s = settings()
        w = Worker(s, set(range(PARTITIONS)))
        c = await w.start()
        w.link.assigned(w.owned, {})
        w.producer.fail = True
        try:
            r = await c.post("/v1/score", data=dumps(tx(12, "c-12")), headers=AUTH)
            assert r.status == 503 and w.scorer.decided == []
            w.producer.fail = False
            retry = await c.post("/v1/score", data=dumps(tx(12, "c-12")), headers=AUTH)
            assert retry.status == 200 and w.scorer.decided == ["t-12"]
        finally:
            await w.stop()

    asyncio.run(go())
