"""Faults inside steps of a worker serving the scoring API, on a real scorer without a broker.

A real :class:`Scorer` (its registered ``score`` agent, its :class:`InOrder` completions, its
RocksDB ``accounts`` table) and the real :class:`WorkerApi`/:class:`WorkerLink`/:class:`ApiCalls`
run over :class:`Kafka`, a fake broker and producer: one log per topic-partition, where a
record lands when its send is acknowledged, and faults that make the next send to a topic
fail (refused, nothing written; or written and its acknowledgement lost) or wait. The agent
reads ``transactions`` through :class:`Agent`, which hands it events that record their acks;
"Faust restarts the agent" is the registered agent function called again on a new stream,
and "the worker restarts" is that plus re-reading from the committed offset (the first offset
not acknowledged), as Faust does.

What every test checks at the end (:func:`check_once`): each valid transaction has a
decision on ``scores`` (exactly one unless a step failed after sending part of its outputs,
when the README allows "a repeated decision for the id at worst", the same score and
features), the account's row in the table counts each transaction once, and every call
answered 200 was answered with the first record on ``scores`` for its transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scorer_helpers import home_accounts, scorer_app
from scorer_helpers import tx as stream_tx

from flagstream.codec import dumps, loads
from flagstream.features.layout import LAST_OFFSET, TOTAL_COUNT, TOTAL_SUM
from flagstream.streams import scorer_agent
from flagstream.streams.api_answers import AnswerBook, answer_of, is_fallback, requests
from flagstream.streams.api_worker import ApiCalls, WorkerApi, WorkerLink
from flagstream.streams.compat.internals import read_row
from flagstream.streams.config import Secret
from flagstream.streams.core import warm_up
from flagstream.streams.scorer_agent import Scorer

KEY = "worker-api-key-0000001"
PARTITION = 2
#: how long any one wait on the fakes may take before the test fails (a guard, never a pause)
GUARD_S = 4.0


class Meta:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset


class Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(
        self, key: bytes | None, value: bytes | None, timestamp: Any = None, headers: Any = None
    ) -> Any:
        self.records.append((key, value))
        return SimpleNamespace(offset=len(self.records) - 1)  # (as aiokafka's: relative)

    def close(self) -> None:
        pass


class Kafka:
    """A fake broker and ``AIOKafkaProducer``: logs per topic-partition, acks, faults.

    ``fail(topic, mode)`` makes the next send to ``topic`` fail: ``"refused"`` (raises, nothing
    written) or ``"ack_lost"`` (written, then raises). ``hold(topic)`` keeps the next send to
    ``topic`` unacknowledged (and off the log) until :meth:`release`.
    """

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        self.faults: list[tuple[str, str]] = []
        self.fired: list[tuple[str, str]] = []
        self.holding: list[str] = []
        self.held: list[Callable[[], None]] = []
        #: acknowledged offsets of ``transactions`` per partition (the agent's acks)
        self.acked: dict[int, set[int]] = {}
        self.changed = asyncio.Event()

    # --- the test's side --------------------------------------------------------------------
    def fail(self, topic: str, mode: str = "refused") -> None:
        self.faults.append((topic, mode))

    def hold(self, topic: str) -> None:
        self.holding.append(topic)

    def release(self, index: int) -> None:
        """Acknowledge the ``index``-th send held so far (its records land now)."""
        self.held[index]()

    def log(self, topic: str, partition: int) -> list[tuple[bytes | None, bytes | None]]:
        return self.logs.setdefault((topic, partition), [])

    def on(self, topic: str) -> list[dict]:
        return [loads(v) for (t, _), log in sorted(self.logs.items()) if t == topic for _, v in log if v]

    def committed(self, partition: int) -> int:
        """The first offset of ``transactions`` not acknowledged (what a restart reads from)."""
        acked, offset = self.acked.get(partition, set()), 0
        while offset in acked:
            offset += 1
        return offset

    def note(self) -> None:
        self.changed.set()

    async def until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` holds, re-checked whenever the fake broker changes."""

        async def wait() -> None:
            while not ready():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), GUARD_S)

    def produce(self, topic: str, partition: int, key: bytes | None, value: bytes) -> int:
        """A record some other producer wrote (the stream's transactions); its offset."""
        log = self.log(topic, partition)
        log.append((key, value))
        self.note()
        return len(log) - 1

    # --- the producer's side ----------------------------------------------------------------
    def create_batch(self) -> Batch:
        return Batch()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future:
        return self._send(topic, partition, list(batch.records))

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: Any = None,
        headers: Any = None,
    ) -> asyncio.Future:
        """(The Faust producer's ``send``: the dead-letter path.)"""
        return self._send(topic, partition or 0, [(key, value)])

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, partition: int) -> Meta:
        return await self._send(topic, partition, [(key, value)])

    def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None]]
    ) -> asyncio.Future:
        fault = next((f for f in self.faults if f[0] == topic), None)
        if fault is not None:
            self.faults.remove(fault)
            self.fired.append(fault)
            self.note()
            if fault[1] == "ack_lost":
                self.log(topic, partition).extend(records)
            raise ConnectionError(f"broker down ({fault[1]})")
        done = asyncio.get_running_loop().create_future()

        def land() -> None:
            log = self.log(topic, partition)
            if not done.done():  # (as aiokafka: a cancelled delivery future is left alone)
                done.set_result(Meta(partition, len(log)))
            log.extend(records)
            self.note()

        if topic in self.holding:
            self.holding.remove(topic)
            self.held.append(land)
            self.note()
        else:
            land()
        return done


class Stream:
    """What the agent iterates: lists of events, as ``noack_take`` hands them over."""

    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka
        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue()

    async def noack_take(self, max_: int, within: float) -> Any:
        while True:
            events = await self.queue.get()
            self.kafka.note()  # (taken: the agent stages them before anything else runs)
            yield events


class Agent:
    """The scorer's registered ``score`` agent, fed from :class:`Kafka`'s ``transactions``."""

    def __init__(self, scorer: Scorer, kafka: Kafka) -> None:
        self.scorer, self.kafka = scorer, kafka
        self.fun = scorer.p.app.agents["score"].fun
        self.topic = scorer.names["transactions"]
        self.task: asyncio.Future | None = None
        self.stream = Stream(kafka)

    def start(self) -> None:
        """(Re)start the agent, as Faust does: the agent function on a new stream."""
        self.stream = Stream(self.kafka)
        self.task = asyncio.ensure_future(self.fun(self.stream))

    def read(self, partition: int, start: int, stop: int | None = None) -> None:
        """Hand the agent the records ``start:stop`` of a partition as one list of events."""
        log = self.kafka.log(self.topic, partition)
        stop = len(log) if stop is None else stop
        self.stream.queue.put_nowait([self._event(partition, o, *log[o]) for o in range(start, stop)])

    def _event(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Any:
        acked = self.kafka.acked.setdefault(partition, set())

        def ack() -> None:
            acked.add(offset)
            self.kafka.note()

        message = SimpleNamespace(
            partition=partition,
            topic=self.topic,
            key=key,
            value=value,
            offset=offset,
            timestamp=1_522_540_800.0,
        )
        return SimpleNamespace(message=message, ack=ack)

    async def settled(self, partition: int) -> None:
        """Wait until every record of the partition is acknowledged."""
        log = self.kafka.log(self.topic, partition)
        await self.kafka.until(lambda: self.kafka.committed(partition) == len(log))

    async def crashed(self) -> BaseException:
        """Wait for the agent to fail (a step raised); its exception."""
        assert self.task is not None
        await asyncio.wait({self.task}, timeout=GUARD_S)
        assert self.task.done(), "the agent did not fail"
        exc = self.task.exception()
        assert exc is not None
        return exc

    async def restart_worker(self, partition: int) -> None:
        """The worker restarts: only the table is kept; the agent reads from the commit."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        scorer = self.scorer
        if scorer.finish is not None:
            await scorer.finish.join()
        scorer.revoked = False
        scorer.held.clear()
        scorer.broken = None  # (a new process)
        self.start()
        self.read(partition, self.kafka.committed(partition))
        await self.settled(partition)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})


class World:
    """A scorer, its agent, its API and the fake broker, wired as a worker would be."""

    def __init__(self, scorer: Scorer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scorer = scorer
        self.kafka = kafka = Kafka()
        monkeypatch.setattr(scorer_agent, "kafka_producer", lambda app: kafka)
        monkeypatch.setattr(scorer_agent, "tune_gc", lambda: None)  # (no gc.freeze in tests)
        monkeypatch.setattr(scorer, "hold_share_of_capacity", lambda: None)  # (no assignment)
        monkeypatch.setattr(scorer.p.app.producer, "send", kafka.send)  # (dead letters)
        self.crashes: list[BaseException] = []

        async def crash(exc: BaseException) -> None:
            self.crashes.append(exc)

        monkeypatch.setattr(scorer.p.app, "crash", crash)
        self.settings = scorer.settings.with_(api_key=Secret(KEY), worker_api=True, api_deadline_ms=3_000)
        self.calls = ApiCalls(AnswerBook(1_000))
        scorer.api_calls = self.calls
        #: ``(offset, staged by the API)`` of each call handed to the scorer, when it said
        self.handed: list[tuple[int, bool]] = []

        async def decide(partition: int, offset: int, key: bytes, value: bytes, holds: Any) -> bool:
            try:
                staged = await scorer.decide_now(partition, offset, key, value, holds)
            except BaseException:
                self.handed.append((offset, False))
                raise
            finally:
                kafka.note()
            self.handed.append((offset, staged))
            return staged

        self.link = WorkerLink(self.settings, self.calls, decide, lambda: kafka)
        self.link.assigned({0, 1, 2, 3}, {})
        self.api = WorkerApi(self.settings, self.link)
        self.agent = Agent(scorer, kafka)
        self.account = home_accounts(PARTITION, 1)[0]
        self.names = scorer.names
        #: transaction id -> amount, of every valid transaction produced
        self.amounts: dict[str, float] = {}
        #: transaction id -> (status, body) of every call that ended
        self.answers: dict[str, tuple[int, dict]] = {}

    def stream(self, i: int) -> int:
        """Transaction ``t-<i>`` produced by the stream (not a call); its offset."""
        amount = 10.0 + i
        self.amounts[f"t-{i}"] = amount
        return self.kafka.produce(
            self.names["transactions"], PARTITION, self.account.encode(), stream_tx(i, self.account, amount)
        )

    def call(self, i: int) -> asyncio.Future:
        """A call of the API for transaction ``t-<i>`` (a task; its answer in ``answers``)."""
        amount = 10.0 + i
        self.amounts[f"t-{i}"] = amount
        [req] = requests(dumps(loads(stream_tx(i, self.account, amount))), self.settings, batch=False)
        assert req.error is None

        async def answer() -> tuple[int, dict]:
            self.answers[req.transaction_id] = result = await self.api.answer(req)
            return result

        return asyncio.ensure_future(answer())

    def transactions(self) -> list[tuple[bytes | None, bytes | None]]:
        return self.kafka.log(self.names["transactions"], PARTITION)

    def scores(self, transaction_id: str) -> list[dict]:
        return [d for d in self.kafka.on(self.names["scores"]) if d["transaction_id"] == transaction_id]

    def row(self) -> np.ndarray:
        stored = read_row(self.scorer.accounts, PARTITION, self.account.encode())
        assert stored is not None, "the account's row was never written"
        return np.frombuffer(stored, dtype=np.float64)

    def check_once(
        self, repeats_allowed: frozenset[str] = frozenset(), last_offset: int | None = None
    ) -> None:
        """Every transaction decided (once, or repeated the same), its state applied once, and
        every call answered 200 with the first record on ``scores``."""
        for tx in self.amounts:
            records = [d for d in self.scores(tx) if not is_fallback(d)]
            if tx in repeats_allowed:
                assert records, f"{tx} was never decided"
                assert len({(d["score"], dumps(d["features"])) for d in records}) == 1, (
                    f"{tx} was decided twice, differently"
                )
            else:
                assert len(records) == 1, f"{tx} has {len(records)} decisions on scores"
        row = self.row()
        assert row[TOTAL_COUNT] == len(self.amounts), "the account does not count each transaction once"
        assert row[TOTAL_SUM] == pytest.approx(sum(self.amounts.values()))
        last = len(self.transactions()) - 1 if last_offset is None else last_offset
        assert row[LAST_OFFSET] == last
        for tx, (status, body) in self.answers.items():
            if status == 200:
                assert body == answer_of(self.scores(tx)[0]), f"{tx} was answered with what is not first"

    async def close(self) -> None:
        await self.agent.stop()
        if self.scorer.api_stager is not None:
            await asyncio.wait({self.scorer.api_stager}, timeout=GUARD_S)
        if self.scorer.finish is not None:  # (a completion still held: left to asyncio.run)
            await asyncio.wait({asyncio.ensure_future(self.scorer.finish.join())}, timeout=GUARD_S)
        await self.api.close()


@pytest.fixture
def scorer(tmp_path):
    warm_up()  # (the kernels' one-time compile, as the worker does before its first step:
    # not a step's time, which GUARD_S bounds)
    yield from scorer_app(tmp_path)


def run(scorer: Scorer, monkeypatch: pytest.MonkeyPatch, scenario: Any) -> None:
    async def go() -> None:
        world = World(scorer, monkeypatch)
        try:
            await scenario(world)
        finally:
            await world.close()

    asyncio.run(go())


async def quiescent() -> None:
    """Let every task run until each waits on something only the test does (a held send):
    no timer runs in these scenarios, so a bounded number of loop turns is enough. (Used
    where the code as it should be waits on the test, which therefore has nothing to await.)"""
    for _ in range(100):
        await asyncio.sleep(0)


async def started_with_one_stream_record(w: World) -> None:
    """The agent runs and has staged (and completed) ``t-0`` at offset 0 of the partition."""
    w.agent.start()
    w.stream(0)
    w.agent.read(PARTITION, 0)
    await w.agent.settled(PARTITION)
    assert w.scorer.staged_through == {PARTITION: 0}


# --- (1) an API step whose send fails ----------------------------------------------------------
@pytest.mark.parametrize("failing", ["scores", "merchant_activity"])
def test_an_api_step_whose_send_fails_leaves_its_call_to_the_agent(scorer, monkeypatch, failing):
    """The API step of ``t-1`` fails sending its outputs: before anything is written
    (``scores``), or after its decision is on ``scores`` (``merchant_activity``, sent after it).
    It forgets what it staged, the agent decides ``t-1`` when it reads it, and the call is
    answered once that decision and the row are written; a later call is staged by the API
    again and the agent passes over it."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.kafka.fail(w.names[failing])
        call = w.call(1)
        await w.kafka.until(lambda: bool(w.handed))
        assert w.handed == [(1, False)] and w.kafka.fired  # (its step failed: left to the agent)
        assert w.scorer.staged_through == {} and w.scorer.revoked
        assert "t-1" in w.calls.staged  # (its decision may be on scores: it never falls back)
        assert not call.done()  # (nothing answered from a step that failed)
        # the agent reads what was not acknowledged: t-1, which it decides now
        w.agent.read(PARTITION, w.kafka.committed(PARTITION))
        await w.agent.settled(PARTITION)
        assert await asyncio.wait_for(call, GUARD_S) == (200, w.answers["t-1"][1])
        assert w.answers["t-1"][1]["fallback"] is False
        # the next call is the API's again (its turn comes after the agent's t-1)
        later = w.call(2)
        assert (await asyncio.wait_for(later, GUARD_S))[0] == 200
        assert w.scorer.staged_through == {PARTITION: 2}
        w.agent.read(PARTITION, w.kafka.committed(PARTITION))
        await w.agent.settled(PARTITION)
        w.check_once(frozenset({"t-1"}) if failing == "merchant_activity" else frozenset())
        # (sent before the failure, the step's decision stays: the agent's repeats it)
        assert len(w.scores("t-1")) == (1 if failing == "scores" else 2)

    run(scorer, monkeypatch, scenario)


# --- (2) an agent step whose send fails --------------------------------------------------------
def test_an_agent_step_whose_send_fails_is_decided_once_when_read_again(scorer, monkeypatch):
    """The agent's step of ``t-1``, ``t-2`` fails sending decisions; the agent dies. A call
    (``t-3``) comes while it is down: not staged (the worker is stopping), left to the
    agent. The failure crashes the worker; restarted, it reads again from the committed
    offset: each decided once."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.kafka.fail(w.names["scores"])
        w.stream(1)
        w.stream(2)
        w.agent.read(PARTITION, 1)
        assert isinstance(await w.agent.crashed(), ConnectionError)
        assert w.scorer.staged_through == {} and w.scorer.revoked
        assert len(w.crashes) == 1  # (the worker goes down: it is restarted)
        call = w.call(3)
        await w.kafka.until(lambda: bool(w.handed))
        assert w.handed == [(3, False)]  # (produced, not staged: the worker is stopping)
        await w.agent.restart_worker(PARTITION)
        assert (await asyncio.wait_for(call, GUARD_S))[0] == 200
        w.check_once()

    run(scorer, monkeypatch, scenario)


def test_records_of_a_failed_agent_step_are_decided_after_faust_restarts_the_agent(scorer, monkeypatch):
    """Step A (``t-0``, ``t-1``) completes; step B (``t-2``, ``t-3``) fails sending its
    decisions and the agent dies, crashing the worker. Faust restarts the agent before the
    worker is down and its stream goes on with ``t-4``, ``t-5``: the restarted agent stages
    nothing (applying them would move the row's offset past ``t-2``, ``t-3``, which a replay
    would then pass over: lost). The restarted worker reads from the commit (offset 2):
    every transaction decided and counted once."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.stream(1)
        w.agent.read(PARTITION, 1)
        await w.agent.settled(PARTITION)
        for i in range(2, 6):
            w.stream(i)
        w.kafka.fail(w.names["scores"])
        w.agent.read(PARTITION, 2, 4)
        await w.agent.crashed()
        assert len(w.crashes) == 1  # (the failed step takes the worker down)
        # Faust restarts the agent meanwhile, its stream going on after step B: it stages
        # nothing more (else t-4, t-5 would move the row's offset past t-2, t-3)
        w.agent.start()
        w.agent.read(PARTITION, 4, 6)
        await quiescent()
        assert w.kafka.committed(PARTITION) == 2 and not {4, 5} & w.kafka.acked[PARTITION]
        assert w.scores("t-4") == [] and w.row()[LAST_OFFSET] == 1
        await w.agent.restart_worker(PARTITION)  # (read again from the commit)
        w.check_once()

    run(scorer, monkeypatch, scenario)


def test_an_agent_restarted_while_an_earlier_step_completes_reads_its_rows_once_written(scorer, monkeypatch):
    """Step A (``t-0``, ``t-1``) is completing (its decisions not acknowledged yet) when step B
    (``t-2``, ``t-3``) fails sending, crashing the worker; Faust restarts the agent meanwhile,
    reading from the commit (offset 0: A is not acknowledged). It must stage nothing: not A's
    transactions again on a row A has not written yet, nor a row A's could overwrite. A
    completes; the restarted worker reads from offset 2: each decided and counted once."""

    async def scenario(w: World) -> None:
        w.agent.start()
        for i in range(6):
            w.stream(i)
        scores = w.names["scores"]
        w.kafka.hold(scores)  # step A's decisions: sent, not acknowledged yet
        w.agent.read(PARTITION, 0, 2)
        await w.kafka.until(lambda: len(w.kafka.held) == 1)
        w.kafka.fail(scores)  # step B's send is refused: the agent dies
        w.agent.read(PARTITION, 2, 4)
        await w.agent.crashed()
        assert len(w.crashes) == 1
        # Faust restarts the agent before the worker is down, its stream reading from the
        # commit (offset 0): it stages nothing beside A (nor reads A's row before it is written)
        w.agent.start()
        w.agent.read(PARTITION, w.kafka.committed(PARTITION))
        await quiescent()
        assert len(w.kafka.held) == 1 and w.kafka.committed(PARTITION) == 0
        w.kafka.release(0)  # A completes: its row written, its records acknowledged
        await w.kafka.until(lambda: w.kafka.committed(PARTITION) == 2)
        await w.agent.restart_worker(PARTITION)  # (the worker, restarted, reads from offset 2)
        w.check_once()

    run(scorer, monkeypatch, scenario)


@pytest.mark.parametrize("failing", ["scores", "merchant_activity"])
def test_a_call_of_a_failed_agent_step_never_falls_back(scorer, monkeypatch, failing):
    """A call (``t-0``) left to the agent (nothing staged yet), whose agent step fails sending
    its outputs: before its decision (``scores``) or after it (``merchant_activity``). The
    worker cannot know which, so the call does not fall back (a fallback after its decision
    would be an answer that is not first on ``scores``): it is answered 503 "retry", and the
    restarted worker decides it."""

    async def scenario(w: World) -> None:
        w.api.deadline_s = 0.2
        w.agent.start()
        call = w.call(0)
        await w.kafka.until(lambda: bool(w.handed))
        assert w.handed == [(0, False)]  # (not its turn: left to the agent)
        w.kafka.fail(w.names[failing])
        w.agent.read(PARTITION, 0)
        await w.agent.crashed()
        status, body = await asyncio.wait_for(call, GUARD_S)
        assert (status, body["error"]) == (503, "unavailable"), body
        assert not any(is_fallback(d) for d in w.scores("t-0"))
        await w.agent.restart_worker(PARTITION)
        w.check_once(frozenset({"t-0"}))

    run(scorer, monkeypatch, scenario)


def test_an_agent_step_failing_while_an_api_step_completes_leaves_the_api_answer_first(scorer, monkeypatch):
    """An API step (``t-1``) waits for its row to be written when the agent's step of offsets
    1-2 (``t-1`` passed over as staged, ``t-2``) fails: the API call is still answered with
    its decision, the first record on ``scores``, never with a fallback."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.api.deadline_s = 0.2
        w.kafka.hold(w.scorer.accounts.changelog_topic.get_topic_name())
        call = w.call(1)
        await w.kafka.until(lambda: bool(w.handed) and len(w.kafka.held) == 1)
        assert w.handed == [(1, True)]
        w.stream(2)
        w.kafka.fail(w.names["scores"])
        w.agent.read(PARTITION, 1)
        await w.agent.crashed()
        w.kafka.release(0)
        status, body = await asyncio.wait_for(call, GUARD_S)
        assert status == 200 and body == answer_of(w.scores("t-1")[0]) and not body["fallback"]
        await w.agent.restart_worker(PARTITION)
        w.check_once()

    run(scorer, monkeypatch, scenario)


def test_after_a_completion_failed_no_api_step_is_staged(scorer, monkeypatch):
    """The completion of the API step of ``t-1`` fails (its row): the app crashes. A call
    (``t-2``) after that is not staged in this process (its decision could not be completed
    either): it is left to the restarted worker, and nothing is answered that is not first
    on ``scores``."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.api.deadline_s = 0.2
        w.kafka.fail(w.scorer.accounts.changelog_topic.get_topic_name())
        first = w.call(1)
        await w.kafka.until(lambda: bool(w.crashes))
        assert w.scorer.stopping()
        status, body = await asyncio.wait_for(w.call(2), GUARD_S)
        assert w.handed[-1] == (2, False), w.handed  # (not staged: nothing decided here)
        assert all(is_fallback(d) for d in w.scores("t-2"))
        if status == 200:  # (a fallback, first on scores)
            assert body == answer_of(w.scores("t-2")[0])
        first.cancel()
        await w.agent.restart_worker(PARTITION)
        w.check_once(frozenset({"t-1"}))

    run(scorer, monkeypatch, scenario)


def test_an_api_call_is_answered_once_its_decision_is_on_kafka_before_its_row_is(scorer, monkeypatch):
    """The answer is the decision, first on ``scores``: it does not wait for the account's
    row to reach the changelog (one round trip less); the row is written all the same."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.kafka.hold(w.scorer.accounts.changelog_topic.get_topic_name())
        call = w.call(1)
        status, body = await asyncio.wait_for(call, GUARD_S)
        assert len(w.kafka.held) == 1, "answered while the row is still on its way"
        assert status == 200 and body == answer_of(w.scores("t-1")[0]) and not body["fallback"]
        w.kafka.release(0)
        w.agent.read(PARTITION, 1)
        await w.agent.settled(PARTITION)
        w.check_once()

    run(scorer, monkeypatch, scenario)


# --- the completion of an API step fails (its changelog rows) ----------------------------------
def test_an_api_step_whose_rows_cannot_be_written_crashes_the_worker_and_is_replayed(scorer, monkeypatch):
    """The API step of ``t-1`` sends its decision, then its account row to the changelog
    fails: the call is answered with its decision once that is on ``scores`` (the first
    record there), the completion crashes the worker, the agent's next step fails too
    (nothing acknowledged), and the restarted worker decides ``t-1`` again from the table's
    row (a repeated decision after the first, one state update)."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.kafka.fail(w.scorer.accounts.changelog_topic.get_topic_name())
        call = w.call(1)
        await w.kafka.until(lambda: bool(w.kafka.fired))
        await w.kafka.until(lambda: bool(w.crashes))
        status, body = await asyncio.wait_for(call, GUARD_S)
        assert status == 200 and body == answer_of(w.scores("t-1")[0]) and not body["fallback"]
        w.agent.read(PARTITION, 1)
        await w.agent.crashed()  # (the worker is going down: the next step cannot complete)
        assert w.kafka.committed(PARTITION) == 1
        await w.agent.restart_worker(PARTITION)
        assert answer_of(w.scores("t-1")[0]) == body  # (the answer stays the decision of record)
        w.check_once(frozenset({"t-1"}))

    run(scorer, monkeypatch, scenario)


# --- (3) a call's transaction is not taken ---------------------------------------------------
@pytest.mark.parametrize("mode", ["refused", "ack_lost"])
def test_a_call_whose_transaction_is_not_taken_gets_503_and_nothing_twice(scorer, monkeypatch, mode):
    """Producing the call's transaction fails: refused (not on Kafka) or its acknowledgement
    lost (on Kafka all the same). The call gets 503 and nothing is handed to the scorer; the
    agent decides what is on Kafka; a retry is decided once, or (its first copy decided by the
    stream, which this worker's API does not remember) dead-lettered as a duplicate: 409."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.kafka.fail(w.names["transactions"], mode)
        assert (await asyncio.wait_for(w.call(1), GUARD_S))[0] == 503
        assert not w.calls.expecting and not w.calls.staged and not w.scorer.api_waiting
        assert len(w.transactions()) == (2 if mode == "ack_lost" else 1)
        w.agent.read(PARTITION, w.kafka.committed(PARTITION))
        await w.agent.settled(PARTITION)
        assert len(w.scores("t-1")) == (1 if mode == "ack_lost" else 0)
        status, body = await asyncio.wait_for(w.call(1), GUARD_S)
        w.agent.read(PARTITION, w.kafka.committed(PARTITION))
        await w.agent.settled(PARTITION)
        if mode == "refused":
            assert status == 200 and body["fallback"] is False
            w.check_once()
        else:
            assert (status, body["error"]) == (409, "duplicate_transaction")
            assert len(w.transactions()) == 3  # (two copies of t-1: the second one refused)
            dlq = w.kafka.on(w.names["transactions_dlq"])
            assert [d["reason"] for d in dlq] == ["duplicate_transaction"]
            w.check_once(last_offset=1)

    run(scorer, monkeypatch, scenario)


# --- answered once the decision is sent (found by a review) ---------------------------------
def test_a_held_decision_is_not_answered_before_its_fallback_lands(scorer, monkeypatch):
    """``t-1`` arrives on the stream (offset 1) and through a call (its copy at offset 2).
    The call's deadline passes before the agent reads them: its fallback is being recorded
    (held by the broker). The agent's step decides the stream copy (the call's decision,
    held back behind the fallback) and refuses the API copy as a duplicate, which marks
    ``t-1`` as staged. The step's other outputs are acknowledged: the early answer must not
    record the held decision, which is not on ``scores`` (the fallback will be first)."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.api.deadline_s = 0.2
        w.stream(1)  # the stream's copy of t-1, offset 1
        w.kafka.hold(w.names["scores"])  # (the next send to scores: the call's fallback)
        call = w.call(1)  # the API's copy, offset 2: not its turn, left to the agent
        await w.kafka.until(lambda: bool(w.handed) and len(w.kafka.held) == 1)
        assert w.handed == [(2, False)]
        assert "t-1" in w.calls.fallen_back
        w.agent.read(PARTITION, 1)  # one step: t-1 decided (held back), its API copy refused
        await quiescent()
        early = w.calls.book.first("t-1")
        w.kafka.release(0)  # the fallback lands, then the held decision after it
        status, body = await asyncio.wait_for(call, GUARD_S)
        await w.agent.settled(PARTITION)
        first = answer_of(w.scores("t-1")[0])
        assert first["fallback"], w.scores("t-1")
        assert early is None or early == first, f"answered {early} before the fallback landed"
        assert status == 200 and body == first, (status, body, first)

    run(scorer, monkeypatch, scenario)


def test_a_fallback_read_back_after_a_rebalance_stays_the_answer(scorer, monkeypatch):
    """The partition changes hands during the call of ``t-2`` (left
    to the agent: out of turn) and comes back; past the deadline its fallback is recorded
    and, the call not being exact any more, read back from ``scores``. Before the read-back
    returns the agent decides ``t-2`` (no longer held back: its fallback is settled) and the
    decision is answered from memory: a 200 that is not the first record on ``scores``."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.api.deadline_s = 0.2
        reading = asyncio.Event()
        proceed = asyncio.Event()

        async def past(tx, partition, offset, started_ms):  # (the read-back, slow)
            reading.set()
            await proceed.wait()
            return True

        monkeypatch.setattr(w.link.follower, "past", past)
        w.stream(1)  # someone else's record: t-2 is out of turn, left to the agent
        call = w.call(2)
        await w.kafka.until(lambda: bool(w.handed))
        w.link.revoked()
        w.link.assigned({0, 1, 2, 3}, {})  # (the same partitions, a new generation)
        await asyncio.wait_for(reading.wait(), GUARD_S)  # fallback on scores, being read back
        w.agent.read(PARTITION, 1)
        await w.agent.settled(PARTITION)
        proceed.set()
        status, body = await asyncio.wait_for(call, GUARD_S)
        first = answer_of(w.scores("t-2")[0])
        assert first["fallback"]
        assert status == 200 and body == first, (body, first)

    run(scorer, monkeypatch, scenario)


def test_cancelling_an_early_answer_leaves_the_step_completion_alone(scorer, monkeypatch):
    """The early-answer task gathers the very send futures the step's
    completion waits for: cancelling it (a stop, a loop shutting down tasks one by one)
    cancels those futures, and the completion dies with CancelledError (not a failure:
    no crash, the row never written, the InOrder queue stuck)."""

    async def scenario(w: World) -> None:
        await started_with_one_stream_record(w)
        w.kafka.hold(w.names["scores"])
        call = w.call(1)
        await w.kafka.until(lambda: len(w.kafka.held) == 1 and bool(w.scorer.answering))
        for task in list(w.scorer.answering):
            task.cancel()
        await quiescent()
        task = w.scorer.finish._task
        assert not (task.done() and task.cancelled()), "the completions died (CancelledError), no crash"
        w.kafka.release(0)
        await quiescent()
        call.cancel()
        w.agent.read(PARTITION, 1)
        await w.agent.settled(PARTITION)  # (the API step's completion wrote its row)
        w.check_once()

    run(scorer, monkeypatch, scenario)
