"""The synchronous scoring API: ``POST /v1/score`` and ``POST /v1/score/batch``.

A call is answered by the stream path itself (request-reply through Kafka): the
transaction is validated with the stream's validator, produced to ``transactions``
keyed by its account, decided once by the worker that owns the account's partition
(its state read and updated once, as for any event), and the answer is that decision,
read back from ``scores`` (:mod:`flagstream.streams.api_kafka`). So the API and the
stream give the same answer and share one copy of each account's state.

- **Idempotent**: the answer is always the transaction id's first record on
  ``scores``. A retry is answered from memory; a transaction the stream already decided
  is dead-lettered there as ``duplicate_transaction`` and the call gets the first
  decision (409 ``duplicate_transaction`` if it is older than the API's memory).
  Concurrent calls for one id share one attempt.
- **Deadline**: no decision within ``FLAGSTREAM_API_DEADLINE_MS``: a fallback record
  (``FLAGSTREAM_API_FALLBACK``, ``"fallback": true``) is written to the transaction's
  ``scores`` partition; once the API has read that partition past it, the first record
  there is the decision of record and is the answer. A real decision that comes later
  does not count (the learner ignores it; see the README).
- **Authentication**: ``Authorization: Bearer <FLAGSTREAM_API_KEY>``, compared in
  constant time; 401 otherwise, and 429 for every call from an address that sent too
  many wrong keys lately (:class:`~flagstream.throttle.FailureThrottle`).
- **Limits**: bodies above ``FLAGSTREAM_API_MAX_BODY_BYTES`` (and single transactions
  above ``FLAGSTREAM_MAX_RECORD_BYTES``) get 413.

Status codes: 200 answer; 400 invalid (``{"error": reason, "detail": ...}``, the
stream's reasons); 401; 429; 409 duplicate without a remembered first answer; 413; 503
Kafka unavailable (nothing decided: retry). A batch answers 200 with one result per
transaction, in order, each with its own ``status``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from flagstream.codec import dumps
from flagstream.streams.api_answers import AnswerBook, Request, fallback_record, requests
from flagstream.streams.config import Settings
from flagstream.throttle import FailureThrottle

#: Marks a call one API forwarded to another (the worker holding the account); its value
#: is the call's signature (:func:`forward_signature`).
FORWARDED = "X-Flagstream-Forwarded"
#: A forwarded call's signature is accepted this long (seconds; clocks of the hosts apart).
FORWARD_MAX_AGE_S = 60

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Link(Protocol):
    """What the API needs from Kafka (:class:`flagstream.streams.api_kafka.KafkaLink`)."""

    ready: asyncio.Event

    async def send_transaction(self, transaction_id: str, account_id: str, value: bytes) -> None: ...

    async def send_fallback(self, transaction_id: str, record: dict) -> tuple[int, int]:
        """Record a fallback; its ``(partition, offset)``, or ``(-1, -1)`` when none was
        recorded because the transaction is decided already (its answer is coming)."""
        ...

    async def passed(self, transaction_id: str, partition: int, offset: int, timeout_s: float) -> bool: ...


class ScoringApi:
    """The API's handlers over a :class:`Link` and an :class:`AnswerBook`.

    Parameters
    ----------
    settings
        Key, deadline, fallback and limits.
    book, link
        Answers read from ``scores``; the Kafka side.
    """

    def __init__(self, settings: Settings, book: AnswerBook, link: Link,
                 throttle: FailureThrottle | None = None) -> None:
        if not settings.api_key:
            raise ValueError("FLAGSTREAM_API_KEY is not set: the scoring API needs a key")
        self.settings = settings
        self.book = book
        self.link = link
        self.key = f"Bearer {settings.api_key.reveal()}".encode()
        self.deadline_s = settings.api_deadline_ms / 1000.0
        #: one attempt per transaction id in flight, shared by concurrent calls
        self.attempts: dict[str, asyncio.Task] = {}
        self.counts = {"answered": 0, "fallback": 0, "refused": 0, "throttled": 0}
        #: wrong keys per client address: after 10 in 5 minutes, every key waits
        self.throttle = throttle or FailureThrottle()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.api_max_body_bytes,
                              middlewares=[self._guard])
        app.router.add_post("/v1/score", self.score)
        app.router.add_post("/v1/score/batch", self.score_batch)
        return app

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the same checks as :meth:`application`'s (served elsewhere)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            return await self._guard(request, handler)

        return checked

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """401 without the key, 429 after too many wrong keys from the address; 413 for
        large bodies; no exception escapes as a traceback."""
        address = request.remote or "?"
        wait = self.throttle.retry_after(address)
        if wait > 0:
            self.counts["throttled"] += 1
            return reply(429, {"error": "too_many_wrong_keys",
                               "detail": f"too many wrong keys from this address; retry in {wait:.0f} s"},
                         {"Retry-After": str(max(1, round(wait)))})
        size = request.content_length
        if size is not None and size > self.settings.api_max_body_bytes:
            return too_large(self.settings)
        try:
            if not await self._authorized(request):
                self.throttle.failed(address)
                return reply(401, {"error": "unauthorized", "detail": "send Authorization: Bearer <key>"},
                             {"WWW-Authenticate": "Bearer"})
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return too_large(self.settings)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("the scoring API failed a call")
            return reply(500, {"error": "internal_error", "detail": "the call failed"})

    async def _authorized(self, request: web.Request) -> bool:
        """The key, or (a call another worker forwarded) a fresh signature of the body by it."""
        signed = request.headers.get(FORWARDED)
        if signed is not None:
            return forward_signature_ok(self.settings.api_key.reveal(), signed, await request.read())
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self.key)

    async def score(self, request: web.Request) -> web.Response:
        [req] = requests(await request.read(), self.settings, batch=False)
        status, body = await self.answer(req, forwarded(request))
        return reply(status, body)

    async def score_batch(self, request: web.Request) -> web.Response:
        reqs = requests(await request.read(), self.settings, batch=True)
        if len(reqs) == 1 and reqs[0].error is not None and reqs[0].error["error"] in (
                "invalid_json", "invalid_batch", "too_many"):
            return reply(reqs[0].status, reqs[0].error)
        results = await asyncio.gather(*(self.answer(r, forwarded(request)) for r in reqs))
        return reply(200, {"results": [{"status": status, **body} for status, body in results]})

    # --- one transaction -----------------------------------------------------------------------
    async def answer(self, req: Request, forwarded: bool = False) -> tuple[int, dict]:
        """``(status, body)`` for one transaction of a call (``forwarded``: by another API)."""
        if req.error is not None:
            self.counts["refused"] += 1
            return req.status, req.error
        if not self.link.ready.is_set():
            return 503, {"error": "unavailable", "detail": "not connected to Kafka yet"}
        first = self.book.first(req.transaction_id)
        if first is not None:  # a retry, or decided on the stream already
            return 200, first
        elsewhere = await self.route(req, forwarded)
        if elsewhere is not None:
            return elsewhere
        attempt = self.attempts.get(req.transaction_id)
        if attempt is None:
            attempt = asyncio.ensure_future(self.attempt(req))
            self.attempts[req.transaction_id] = attempt
            attempt.add_done_callback(lambda _t: self.attempts.pop(req.transaction_id, None))
        return await asyncio.shield(attempt)

    async def route(self, req: Request, forwarded: bool) -> tuple[int, dict] | None:
        """The answer from elsewhere, or None to answer here (here: always; an API served by
        the workers forwards to the worker holding the account)."""
        return None

    async def attempt(self, req: Request) -> tuple[int, dict]:
        """Decide one accepted transaction (the one attempt concurrent calls for it share)."""
        started = time.monotonic()
        tx = req.transaction_id
        waiter = self.book.expect(tx)
        # the send is never cancelled: once handed to the producer the transaction may
        # reach the topic whatever the call does, so past the deadline the fallback is
        # recorded and the first record on scores decides
        send = asyncio.ensure_future(self.link.send_transaction(tx, req.account_id, req.value))
        send.add_done_callback(_retrieved)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(send), self.deadline_s)
            except TimeoutError:
                return await self._fall_back(req, waiter)
            except Exception as exc:
                log.warning("could not produce a transaction for the API: %s", type(exc).__name__)
                return 503, {"error": "unavailable", "detail": "Kafka did not take the transaction"}
            left = max(self.deadline_s - (time.monotonic() - started), 0.0)
            try:
                outcome = await asyncio.wait_for(asyncio.shield(waiter), left)
            except TimeoutError:
                return await self._fall_back(req, waiter)
            return self._outcome(tx, outcome)
        finally:
            self.book.done(tx)

    async def _fall_back(self, req: Request, waiter: asyncio.Future) -> tuple[int, dict]:
        """Record the fallback on ``scores``; answer with whatever came first there."""
        tx = req.transaction_id
        record = fallback_record(req.record or {}, self.settings.api_fallback)
        try:
            partition, offset = await self.link.send_fallback(tx, record)
        except Exception as exc:  # neither recorded nor decided yet: the stream will decide
            log.warning("could not record a fallback: %s", type(exc).__name__)
            return 503, {"error": "unavailable", "detail": "no decision in time, fallback not recorded"}
        if not await self.link.passed(tx, partition, offset, self.deadline_s):
            log.warning("answers lag: fallback for a call returned before it was read back")
        if waiter.done():
            return self._outcome(tx, waiter.result())
        if partition < 0:  # decided, not delivered within a second deadline: nothing to say yet
            return 503, {"error": "unavailable", "detail": "decided, but the decision was not "
                                                           "recorded in time: retry for it"}
        self.counts["fallback"] += 1
        first = self.book.first(tx)
        return self._outcome(tx, first if first is not None else {
            name: record[name] for name in ("transaction_id", "decision", "score", "threshold",
                                            "model_version", "reasons", "fallback")})

    def _outcome(self, tx: str, outcome: dict) -> tuple[int, dict]:
        if "error" not in outcome:
            self.counts["answered"] += 1
            return 200, outcome
        if outcome["error"] == "duplicate_transaction":
            first = self.book.first(tx)
            if first is not None:
                return 200, first
            return 409, {"error": "duplicate_transaction",
                         "detail": "already decided, and the first decision is older than this "
                                   "API remembers: read it from the scores topic"}
        return 500, outcome


def forwarded(request: web.Request) -> bool:
    """Whether another API forwarded the call (it is never forwarded again; a call gets
    this far with the header only when its signature was checked)."""
    return FORWARDED in request.headers


def forward_signature(key: str, body: bytes, now_s: float | None = None) -> str:
    """``<unix seconds>:<hex HMAC-SHA256>`` of a forwarded call's body under the API key.

    >>> sig = forward_signature("k" * 16, b"{}", now_s=1_000.0)
    >>> forward_signature_ok("k" * 16, sig, b"{}", now_s=1_030.0)
    True
    >>> forward_signature_ok("k" * 16, sig, b"{ }", now_s=1_030.0), forward_signature_ok(
    ...     "k" * 16, sig, b"{}", now_s=1_000.0 + FORWARD_MAX_AGE_S + 1)
    (False, False)
    >>> forward_signature_ok("k" * 16, "\u00b2:" + sig.partition(":")[2], b"{}", now_s=1_000.0)
    False
    """
    stamp = str(int(time.time() if now_s is None else now_s))
    mac = hmac.new(key.encode(), b"flagstream-forward\n" + stamp.encode() + b"\n" + body, "sha256")
    return f"{stamp}:{mac.hexdigest()}"


def forward_signature_ok(key: str, signed: str, body: bytes, now_s: float | None = None) -> bool:
    """Whether ``signed`` is :func:`forward_signature` of ``body`` from the last minute."""
    stamp, _, _ = signed.partition(":")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - int(stamp)) > FORWARD_MAX_AGE_S:
        return False
    want = forward_signature(key, body, int(stamp)).encode()
    return hmac.compare_digest(signed.encode("utf-8", "replace"), want)


def _retrieved(task: asyncio.Future) -> None:
    """(A send that failed after its call fell back: said once in the log, never raised.)"""
    if not task.cancelled() and task.exception() is not None:
        log.warning("a transaction send failed after its call ended: %s",
                    type(task.exception()).__name__)


def reply(status: int, body: dict, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def too_large(s: Settings) -> web.Response:
    return reply(413, {"error": "too_large", "detail": f"a call is at most {s.api_max_body_bytes} bytes"})
