"""The scoring API served by the scoring workers themselves (``FLAGSTREAM_WORKER_API=1``).

``flagstream api`` is a process of its own: it produces a call's transaction and reads
the decision back from ``scores``, so every call crosses Kafka twice and three processes.
With ``FLAGSTREAM_WORKER_API`` each scoring worker serves ``POST /v1/score`` (and the
batch form) on its own web server, with the same handlers
(:class:`~flagstream.streams.api_service.ScoringApi`) over a :class:`WorkerLink`:

- a call for an account whose ``transactions`` partition this worker holds is produced
  there (one produce, where replays and the stream find it) and handed to the worker's
  own scorer (:meth:`~flagstream.streams.scorer_agent.Scorer.decide_now`), which decides
  it at once when it comes right after what it has staged on that partition (else when
  the agent reads it): nothing is consumed before deciding, the same validation, state,
  model and policy as a streamed record, the account rows' offsets making the agent's
  later read a replay. The call is answered from memory once its decision is on
  ``scores`` (the account's row follows, in the step's completion): nothing is read back;
- a call for an account another worker holds is forwarded once to that worker's web
  server (its address from the consumer group's assignment, as Faust's router knows
  it), signed with the API key rather than carrying it
  (:func:`~flagstream.streams.api_service.forward_signature`); if that worker does not
  answer, the transaction goes to ``transactions`` and its answer is read back
  (:class:`~flagstream.streams.scores_follower.ScoresFollower`, one consumer for all);
- past the deadline the fallback is recorded on ``scores`` exactly as ``flagstream api``
  records it, and the first record there is the answer. While this worker holds the
  partition that is known without reading: a transaction its scorer has already staged
  is answered with its decision (no fallback); otherwise the scorer holds back the
  decision of a transaction that fell back until the fallback is acknowledged, so the
  fallback is first. After a rebalance the partition is read back instead.

So the records on ``scores`` are the same as with ``flagstream api`` and the learner's
rule for them (:func:`~flagstream.streams.api_answers.first_on_scores`) is unchanged.
What this gives up: answers are remembered per worker (a retry after the worker
restarted, or a transaction the stream decided first, gets 409 ``duplicate_transaction``
instead of the first answer), and the API stops while its worker restarts.

>>> calls = ApiCalls()
>>> calls.expecting.add("t-1")  # (a call of this worker's; t-2 came on the stream)
>>> calls.staging([{"transaction_id": "t-1", "origin": "api"}, {"transaction_id": "t-2"}])
([{'transaction_id': 't-1', 'origin': 'api'}, {'transaction_id': 't-2'}], [])
>>> sorted(calls.staged)
['t-1']
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from flagstream.codec import dumps, loads
from flagstream.errors import ConfigurationError
from flagstream.sinks.metrics import ApiCallCounts
from flagstream.sinks.review.views import Route
from flagstream.streams.api_answers import AnswerBook, Request
from flagstream.streams.api_service import FORWARDED, ScoringApi, forward_signature
from flagstream.streams.app import Pipeline
from flagstream.streams.coalesced_sends import CoalescedSends, Sent
from flagstream.streams.compat.internals import kafka_producer
from flagstream.streams.config import Settings
from flagstream.streams.review_page import serve_on_faust
from flagstream.streams.scorer_agent import NotScoring, Scorer
from flagstream.streams.scores_follower import ScoresFollower
from flagstream.streams.topics import partition_for

log = logging.getLogger(__name__)

#: Answers of the worker holding an account that are passed on as they are (any other
#: hands the call to the stream path: the caller's key was good, whatever it said).
RELAYED = frozenset({200, 400, 409, 413})
#: Largest answer read from another worker, bytes.
MAX_FORWARDED_ANSWER_BYTES = 65_536
#: A transaction whose partition is in no one's hands this many deadlines goes to Kafka.
HAND_OVER_DEADLINES = 4


class ApiCalls:
    """What the scorer and the API share about API transactions in one worker.

    The scorer calls :meth:`staging` (synchronously, while it builds a step's outputs)
    and :meth:`delivered` (once the step's outputs are acknowledged); the API marks a
    transaction as fallen back (:meth:`falling_back`) only when its scorer has not
    staged it, in one synchronous step too, so the two never race.
    """

    def __init__(self, book: AnswerBook | None = None) -> None:
        self.book = book if book is not None else AnswerBook()
        #: transactions of this worker's calls that this worker's scorer may decide
        self.expecting: set[str] = set()
        #: those decided (or refused) whose outputs are not acknowledged yet
        self.staged: set[str] = set()
        #: transactions whose fallback is being recorded: True once acknowledged
        self.fallen_back: dict[str, asyncio.Future] = {}

    def staging(self, decisions: list[dict], refused: Sequence[str] = ()) -> tuple[list[dict], list[dict]]:
        """Split a step's decisions into those to send now and those to hold back (this
        worker's calls whose fallback is being recorded); marks this worker's other calls
        among them, and those the step refused, as staged: their answers are on the way.
        (:meth:`held_back`, then :meth:`mark_staged`: a step that may still fail between
        the two marks nothing.)"""
        send, held = self.held_back(decisions)
        self.mark_staged(send, refused)
        return send, held

    def held_back(self, decisions: list[dict]) -> tuple[list[dict], list[dict]]:
        """The decisions to send now, and those to hold back (this worker's calls whose
        fallback is being recorded); changes nothing."""
        expecting, fallen_back = self.expecting, self.fallen_back
        held = [d for d in decisions if (tx := d["transaction_id"]) in expecting and tx in fallen_back]
        if not held:
            return decisions, held
        return [d for d in decisions if not any(d is h for h in held)], held

    def mark_staged(self, sent: list[dict], refused: Sequence[str] = ()) -> None:
        """This worker's calls among the decisions ``sent`` (none held back) and among the
        transactions refused, as staged: their answers are on the way."""
        expecting = self.expecting
        # (a transaction falling back is answered by its fallback, not by a refused copy)
        self.staged.update(tx for tx in refused if tx in expecting and tx not in self.fallen_back)
        self.staged.update(tx for d in sent if (tx := d["transaction_id"]) in expecting)

    async def release(self, decision: dict, send: Any) -> None:
        """Send a held-back decision once its transaction's fallback is settled (it then
        lands after the fallback, and the learner ignores it, as with ``flagstream api``)."""
        settled = self.fallen_back.get(decision["transaction_id"])
        if settled is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(settled)
        await send(decision)

    def delivered(self, decisions: Sequence[dict], refused: Sequence[tuple[str, str, str]]) -> None:
        """A step's API decisions and refusals are on Kafka: answer the calls waiting."""
        staged = self.staged
        if not staged:
            return self._refused(refused)
        for d in decisions:
            tx = d["transaction_id"]
            if tx in staged:  # (an API transaction's, not held back)
                staged.discard(tx)
                self.book.record(tx.encode(), dumps(d))
        self._refused(refused)

    def _refused(self, refused: Sequence[tuple[str, str, str]]) -> None:
        for tx, reason, detail in refused:
            if tx in self.staged:
                self.staged.discard(tx)
                self.book.dead_lettered(tx, reason, detail)

    def falling_back(self, transaction_id: str) -> asyncio.Future | None:
        """Mark a transaction as falling back; None when the scorer has already decided it."""
        if transaction_id in self.staged:
            return None
        settled = asyncio.get_running_loop().create_future()
        self.fallen_back[transaction_id] = settled
        return settled

    def settled(self, transaction_id: str, recorded: bool) -> None:
        settled = self.fallen_back.pop(transaction_id, None)
        if settled is not None and not settled.done():
            settled.set_result(recorded)


class WorkerLink:
    """The :class:`~flagstream.streams.api_service.Link` of an API served by a scoring worker.

    Parameters
    ----------
    settings
        The worker's settings (topics, partitions, deadline, security).
    calls
        Shared with the worker's scorer.
    decide
        The scorer's :meth:`~flagstream.streams.scorer_agent.Scorer.decide_now`.
    producer
        A callable returning the worker's ``AIOKafkaProducer`` (available once it started).
    """

    def __init__(self, settings: Settings, calls: ApiCalls, decide: Any, producer: Any) -> None:
        self.settings = settings
        self.calls = calls
        self.book = calls.book
        self._decide = decide
        self.sends = CoalescedSends(producer)
        #: reads ``scores`` back for the calls that were not decided here (one consumer)
        self.follower = ScoresFollower(settings, self.book)
        self.transactions = settings.topic("transactions")
        self.scores = settings.topic("scores")
        #: always set: calls come through the worker's web server, which Faust starts after
        #: the producer and stops before it (until an assignment is current, at start as in
        #: a rebalance, calls wait for one in ``assignment``, then hand over)
        self.ready = asyncio.Event()
        self.ready.set()
        #: set while an assignment is current, clear during a rebalance
        self.assignment = asyncio.Event()
        #: ``transactions`` partitions this worker holds, and a count of assignments
        self.owned: frozenset[int] = frozenset()
        self.generation = 0
        #: calls in flight: transaction id -> (generation, call start in epoch ms, decided here)
        self.in_flight: dict[str, tuple[int, int, bool]] = {}
        #: fallbacks recorded while the partition changed hands (until read back)
        self.fallbacks: dict[str, bytes] = {}
        #: calls not ended yet
        self.active: set[str] = set()
        #: read-backs of calls handed over to the stream path
        self.following: dict[str, asyncio.Future] = {}
        #: owner URL of each partition another worker holds (from the group's assignment)
        self.owners: dict[int, str] = {}

    def assigned(self, owned: set[int], owners: dict[int, str]) -> None:
        """The group's assignment changed: what this worker holds, who holds the rest."""
        self.owned = frozenset(owned)
        self.owners = {part: url for part, url in owners.items() if part not in owned}
        self.generation += 1
        self.assignment.set()

    def revoked(self) -> None:
        """A rebalance began: nothing is held until the next assignment."""
        self.owned, self.owners = frozenset(), {}
        self.generation += 1
        self.assignment.clear()

    def owner_of(self, account_id: str) -> str | None:
        """None when this worker holds the account's partition, else the holder's URL
        (``""`` when no worker holds it now)."""
        part = partition_for(account_id, self.settings.partitions)
        if part in self.owned:
            return None
        return self.owners.get(part, "")

    # --- the Link protocol ---------------------------------------------------------------------
    async def send_transaction(self, transaction_id: str, account_id: str, value: bytes) -> None:
        """Produce a transaction to its ``transactions`` partition and have it decided.

        Held here (assignment current, tables recovered): produced, then handed to this
        worker's scorer, which decides it at once if its turn has come on the partition,
        else when the agent reads it. Held by another worker (the holder moved since the
        call was routed, or did not answer): :meth:`hand_over`. While no worker holds it (a
        rebalance) the call waits for the assignment, at most a few deadlines.
        """
        loop = asyncio.get_running_loop()
        self.active.add(transaction_id)
        self.follower.expect(transaction_id)  # (should its answer have to be read back)
        part = partition_for(account_id, self.settings.partitions)
        key = account_id.encode()
        give_up = loop.time() + HAND_OVER_DEADLINES * self.settings.api_deadline_ms / 1000
        if part not in self.owned:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.assignment.wait(), max(give_up - loop.time(), 0.0))
        if part not in self.owned:
            await self.hand_over(transaction_id, part, key, value)
            return
        if transaction_id in self.active:  # (a call that ended meanwhile: produced all the same)
            self.in_flight[transaction_id] = (self.generation, int(time.time() * 1000), True)
            self.calls.expecting.add(transaction_id)
        meta = await self._send_now(self.transactions, part, key, value)
        # (not awaited by the call: its answer comes when the decision is written, whichever
        # path decides it; on its partition already, whoever holds that decides it)
        decide = asyncio.ensure_future(self._decide(part, meta.offset, key, value, self.holds))
        decide.add_done_callback(_decided)

    async def hand_over(self, transaction_id: str, partition: int, key: bytes, value: bytes) -> None:
        """The stream path: the transaction to ``transactions``; whichever worker holds the
        partition decides it, and its first record on ``scores`` is read back for the call."""
        if transaction_id in self.active:
            self.in_flight[transaction_id] = (-1, int(time.time() * 1000), False)
            self.calls.expecting.add(transaction_id)  # (should this worker come to hold it)
        await self._send_now(self.transactions, partition, key, value)
        if transaction_id not in self.active:  # (its call has ended: nobody to tell)
            return
        scores_partition = partition_for(transaction_id, self.settings.partitions)
        follow = asyncio.ensure_future(
            asyncio.wait_for(
                self.follower.first(transaction_id, scores_partition, self._started_ms(transaction_id)),
                2 * self.settings.api_deadline_ms / 1000,
            )
        )
        self.following[transaction_id] = follow
        follow.add_done_callback(_retrieved)

    def finished(self, transaction_id: str) -> None:
        """A call ended: forget it (and stop reading back for it)."""
        self.active.discard(transaction_id)
        self.follower.release(transaction_id)
        self.calls.expecting.discard(transaction_id)
        self.in_flight.pop(transaction_id, None)
        follow = self.following.pop(transaction_id, None)
        if follow is not None:
            follow.cancel()

    def holds(self, partition: int) -> bool:
        """Whether this worker holds ``partition`` of ``transactions`` now."""
        return partition in self.owned

    async def send_fallback(self, transaction_id: str, record: dict) -> tuple[int, int]:
        settled = self.calls.falling_back(transaction_id)
        if settled is None:  # decided already; its delivery is under way
            return -1, -1
        part = partition_for(transaction_id, self.settings.partitions)
        value = dumps(record)
        try:
            meta = await self._send_now(self.scores, part, transaction_id.encode(), value)
        except BaseException:
            self.calls.settled(transaction_id, False)
            raise
        if self._exact(transaction_id):
            self.book.record(transaction_id.encode(), value)
        else:  # (what the caller is told if scores cannot be read back)
            self.fallbacks[transaction_id] = value
            # (the read-back answers it: never this scorer's decision from memory)
            self.calls.expecting.discard(transaction_id)
        self.calls.settled(transaction_id, True)
        return meta.partition, meta.offset

    async def passed(self, transaction_id: str, partition: int, offset: int, timeout_s: float) -> bool:
        """Whether the first record of ``transaction_id`` on ``scores`` is known (in the book)."""
        try:
            if partition < 0:  # decided before its deadline: wait for its delivery
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.book.expect(transaction_id)), timeout_s)
                return self.book.first(transaction_id) is not None
            if self._exact(transaction_id):
                return True
            return await asyncio.wait_for(
                self.follower.past(transaction_id, partition, offset, self._started_ms(transaction_id)),
                timeout_s,
            )
        except TimeoutError:
            return False
        except Exception as exc:  # (Kafka unreachable: answered with the fallback, said once)
            log.warning("could not read scores back: %s", type(exc).__name__)
            return False
        finally:
            fallback = self.fallbacks.pop(transaction_id, None)
            if fallback is not None and self.book.first(transaction_id) is None:
                # not read back: the caller is told the fallback, and so is a retry
                self.book.record(transaction_id.encode(), fallback)

    async def _send_now(self, topic: str, partition: int, key: bytes, value: bytes) -> Sent:
        """One record, sent at once with whatever else this worker's API sends to that
        partition meanwhile (not lingering as the worker's own records do, 5 ms)."""
        return await self.sends.send(topic, partition, key, value)

    def _exact(self, transaction_id: str) -> bool:
        """Whether this worker's scorer alone can have decided the transaction since its call
        began: its partition held all along (no assignment since)."""
        started = self.in_flight.get(transaction_id)
        return started is not None and started[2] and started[0] == self.generation

    def _started_ms(self, transaction_id: str) -> int:
        """When the call began (epoch ms): nothing of its transaction is on ``scores`` before."""
        started = self.in_flight.get(transaction_id)
        return started[1] if started is not None else int(time.time() * 1000)


class WorkerApi(ScoringApi):
    """:class:`ScoringApi` on a scoring worker: calls for accounts another worker holds
    are forwarded to it once (with the caller's key)."""

    link: WorkerLink

    def __init__(self, settings: Settings, link: WorkerLink) -> None:
        super().__init__(settings, link.book, link)
        self.session: Any = None
        #: calls forwarded to the worker holding the account, and calls whose forwarding
        #: failed, decided through ``transactions`` instead
        self.counts.update(forwarded=0, handed_over=0)

    async def route(self, req: Request, forwarded: bool) -> tuple[int, dict] | None:
        """Forward the call to the worker holding the account; None to handle it here
        (held here; or held by no one now, a rebalance: the call waits for the next
        assignment; or forwarded already: the holder moved, the stream path decides it)."""
        owner = self.link.owner_of(req.account_id)
        if owner is None or owner == "" or forwarded:
            return None
        try:
            status, answer = await forward(
                self._session(), owner, req, self.settings.api_key.reveal(), self.deadline_s * 2
            )
        except Exception as exc:  # (the holder is gone or stuck: the stream path decides it)
            log.warning(
                "forwarding a call to %s failed (%s): handed to the stream", owner, type(exc).__name__
            )
            self.counts["handed_over"] += 1
            return None
        if status not in RELAYED:  # (it cannot say: a rebalance, another key, a failure)
            log.warning("the worker at %s answered %d: handed to the stream", owner, status)
            self.counts["handed_over"] += 1
            return None
        self.counts["forwarded"] += 1
        return status, answer

    def health(self) -> dict[str, Any]:
        """Whether an assignment is current (calls are decided or forwarded at once, not
        waiting for one) and how many ``transactions`` partitions are decided here."""
        return {"assigned": self.link.assignment.is_set(), "decided_here": len(self.link.owned)}

    async def attempt(self, req: Request) -> tuple[int, dict]:
        try:
            return await super().attempt(req)
        finally:
            self.link.finished(req.transaction_id)

    def _session(self) -> Any:
        if self.session is None:
            import aiohttp

            self.session = aiohttp.ClientSession()
        return self.session

    async def close(self) -> None:
        await self.link.follower.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None


class WorkerApiRuntime:
    """The API on a scoring worker: its routes on the worker's web server, its link
    following the group's assignment (``register()``/``stop()`` as every runtime piece).

    Parameters
    ----------
    p
        A pipeline whose role scores; ``FLAGSTREAM_API_KEY`` must be set.
    """

    def __init__(self, p: Pipeline) -> None:
        s = p.settings
        if not s.api_key:
            raise ConfigurationError("FLAGSTREAM_WORKER_API needs FLAGSTREAM_API_KEY")
        self.p = p
        self.calls = ApiCalls(AnswerBook(s.api_answers))
        assert isinstance(p.scorer, Scorer)
        self.scorer = p.scorer
        self.link = WorkerLink(s, self.calls, p.scorer.decide_now, lambda: kafka_producer(p.app))
        self.api = WorkerApi(s, self.link)
        self.settling: asyncio.Future | None = None

    def register(self) -> None:
        api = self.api
        serve_on_faust(
            self.p.app,
            [
                Route("/v1/score", "POST", cast(Any, api.guarded(api.score))),
                Route("/v1/score/batch", "POST", cast(Any, api.guarded(api.score_batch))),
            ],
        )
        # (first thing at a revocation, before the scorer waits for its steps)
        self.scorer.revoke_hooks.append(self.link.revoked)
        # (after the tables recovered: only then are the rows current)
        self.p.app.on_rebalance_complete.connect(self._assigned)
        self.p.metrics.registry.register(ApiCallCounts(lambda: api.counts))

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says of the API (:meth:`WorkerApi.health`)."""
        return self.api.health()

    async def _assigned(self, *_args: Any, **_kwargs: Any) -> None:
        """Recovery is complete: once the rebalance has ended (and no other began since),
        take the assignment."""
        generation = self.link.generation
        if self.settling is not None:
            self.settling.cancel()
        self.settling = asyncio.ensure_future(self._settle(generation))
        self.settling.add_done_callback(_retrieved)

    async def _settle(self, generation: int) -> None:
        app = self.p.app
        while app.rebalancing and self.link.generation == generation:
            await asyncio.sleep(0.01)
        if self.link.generation != generation:  # revoked again meanwhile: wait for the next
            return
        transactions = self.link.transactions
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == transactions}
        changelog = self.p.tables["accounts"].changelog_topic.get_topic_name()
        owners = {
            part: str(url)
            for url, topics in app.router.tables_metadata().items()
            for part in topics.get(changelog, ())
        }
        self.link.assigned(owned, owners)
        log.info("scoring API: %d partitions decided here, %d forwarded", len(owned), len(self.link.owners))

    async def stop(self) -> None:
        if self.settling is not None:
            self.settling.cancel()
        await self.api.close()


async def forward(session: Any, url: str, req: Request, key: str, timeout_s: float) -> tuple[int, dict]:
    """One transaction of a call, forwarded to the worker at ``url`` that holds its account.

    The call is signed with the API key (:func:`forward_signature`), not given it: a
    worker never hands the key itself to an address it learned from the group."""
    import aiohttp

    headers = {FORWARDED: forward_signature(key, req.value), "Content-Type": "application/json"}
    async with session.post(
        f"{url.rstrip('/')}/v1/score",
        data=req.value,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as r:
        body = await r.content.read(MAX_FORWARDED_ANSWER_BYTES + 1)
    answer = None
    if len(body) <= MAX_FORWARDED_ANSWER_BYTES:
        with contextlib.suppress(ValueError):
            answer = loads(body)
    if not isinstance(answer, dict):
        return 502, {"error": "bad_gateway", "detail": "the worker holding this account answered badly"}
    return r.status, answer


def _decided(task: asyncio.Future) -> None:
    """(A hand-over to the scorer that it refused: the transaction is on Kafka, fine.)"""
    if not task.cancelled() and not isinstance(task.exception(), NotScoring | type(None)):
        log.warning("scoring API: handing a call to the scorer failed: %s", type(task.exception()).__name__)


def _retrieved(task: asyncio.Future) -> None:
    """(A background task that failed: said in the log, never raised.)"""
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "scoring API: %s failed: %s",
            getattr(task, "get_name", lambda: "a task")(),
            type(task.exception()).__name__,
        )
