"""The review page's routes: aiohttp handlers, served by the worker's Faust web server.

:class:`ReviewRoutes` holds every handler; :meth:`ReviewRoutes.routes` lists them
(path, method, handler) for whichever server serves them — the worker registers
them on Faust's web server (:mod:`flagstream.streams.review_page`), tests serve
:meth:`ReviewRoutes.application` directly.

``/review/login`` signs a reviewer in with their own token; ``/review/`` is the page;
``/review/api/*`` is the JSON API the page polls. Every route but the login form and
the static files needs a session cookie or ``Authorization: Bearer <token>`` (401
otherwise); the reviewer is the one the token belongs to (an ``X-Reviewer`` header
naming anyone else is refused, 403). Every write made with a session cookie needs the
session's CSRF token in an ``X-CSRF-Token`` header or a ``csrf_token`` form field (403
otherwise). Too many wrong tokens from one address, in the form or a header: 429.
"""

from __future__ import annotations

import hmac
import html
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from flagstream.codec import dumps
from flagstream.sinks.review.auth import LOGIN_COOKIE, SESSION_COOKIE, ReviewAuth, Session
from flagstream.sinks.review.queue import SORTS, AlreadyLabelled, ClaimConflict, NotQueued
from flagstream.sinks.review.service import InvalidDecision, ReviewService

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
MAX_BODY = 16_384


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("flagstream.sinks.review") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def _respond(body: bytes, content_type: str, status: int = 200, cache: bool = False) -> web.Response:
    response = web.Response(body=body, status=status, content_type=content_type, charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-cache" if cache else "no-store"
    return response


def _json(value: Any, status: int = 200) -> web.Response:
    return _respond(dumps(value), "application/json", status)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def _redirect(location: str) -> web.Response:
    response = web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})
    response.headers["Cache-Control"] = "no-store"
    return response


class Caller:
    """Who is calling: a signed-in reviewer (``session``) or a script with a reviewer's token."""

    def __init__(self, session: Session | None, reviewer: str) -> None:
        self.session = session
        self.reviewer = reviewer


@dataclass(frozen=True)
class Route:
    """One route: ``handler(request, **path_parameters)`` answers ``method`` on ``path``."""

    path: str
    method: str
    handler: Callable[..., Awaitable[web.Response]]


class ReviewRoutes:
    """Every route of the review page and its JSON API.

    Parameters
    ----------
    service
        The review queue and the labels it publishes.
    auth
        Tokens, sessions, CSRF and throttling.
    secure_cookies
        Mark cookies ``Secure`` (sent over HTTPS only) even when the request came in
        over plain HTTP: behind a proxy that terminates TLS. Requests that arrive over
        TLS always get ``Secure`` cookies.
    health
        The model-health report (``/review/api/health``; 404 when None).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> from flagstream.sinks.review.credentials import ReviewerTokens
    >>> from flagstream.sinks.review.queue import ReviewQueue
    >>> async def publish(key, value): pass
    >>> service = ReviewService(publish, CollectorRegistry(), ReviewQueue())
    >>> routes = ReviewRoutes(service, ReviewAuth(ReviewerTokens(None)))
    >>> sorted({r.path for r in routes.routes()})[:3]
    ['/review', '/review/', '/review/api/health']
    """

    def __init__(self, service: ReviewService, auth: ReviewAuth, secure_cookies: bool = False,
                 health: Callable[[], dict] | None = None) -> None:
        self.service = service
        self.health_report = health
        self.auth = auth
        self.secure_cookies = secure_cookies
        self.static = _static_files()

    def routes(self) -> list[Route]:
        return [
            Route("/review", "GET", self.root),
            Route("/review/", "GET", self.page),
            Route("/review/login", "GET", self.login_form),
            Route("/review/login", "POST", self.login),
            Route("/review/logout", "POST", self.logout),
            Route("/review/static/{name}", "GET", self.static_file),
            Route("/review/api/session", "GET", self.session),
            Route("/review/api/queue", "GET", self.queue),
            Route("/review/api/health", "GET", self.health),
            Route("/review/api/items/{item_id}", "GET", self.item),
            Route("/review/api/items/{item_id}/claim", "POST", self.claim),
            Route("/review/api/items/{item_id}/release", "POST", self.release),
            Route("/review/api/items/{item_id}/decision", "POST", self.decision),
        ]

    def application(self) -> web.Application:
        """A plain aiohttp application serving these routes (for tests and embedding)."""
        app = web.Application()
        for route in self.routes():
            app.router.add_route(route.method, route.path, _with_path_parameters(route.handler))
        return app

    # --- who is calling ------------------------------------------------------------------------
    def caller(self, request: web.Request) -> Caller | web.Response:
        """The caller, or the refusal to send (401, 403 or 429).

        An explicit Authorization header wins over a cookie (and must be right). The
        reviewer is the credential's; an ``X-Reviewer`` header naming anyone else is refused.
        """
        header = request.headers.get("Authorization")
        if header is None:
            session = self.auth.session(request.cookies.get(SESSION_COOKIE))
            if session is None:
                return _error(401, "sign in at /review/login or send a bearer token")
            who = Caller(session, session.reviewer)
        else:
            throttled = self.throttled(request)
            if throttled is not None:
                return throttled
            credential = self.auth.bearer(header)
            if credential is None:
                self.wrong_token(request, "bearer token")
                return _error(401, "wrong bearer token")
            who = Caller(None, credential.reviewer)
        claimed = request.headers.get("X-Reviewer")
        if claimed is not None and claimed.strip() != who.reviewer:
            log.warning("refused a request whose X-Reviewer header is not its credential's "
                        "reviewer, from %s", request.remote)
            return _error(403, "the reviewer is the credential's owner; X-Reviewer cannot change it")
        return who

    def throttled(self, request: web.Request) -> web.Response | None:
        """429 when the caller's address sent too many wrong tokens lately, else None."""
        wait = self.auth.retry_after(request.remote or "?")
        if wait <= 0:
            return None
        response = _error(429, "too many wrong tokens from this address; try again later",
                          retry_after=round(wait))
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response

    def wrong_token(self, request: web.Request, what: str) -> None:
        address = request.remote or "?"
        self.auth.failed(address)
        if self.auth.throttled(address):
            log.warning("too many wrong review tokens from %s; refusing its tokens for a while",
                        address)
        else:
            log.info("wrong review %s from %s", what, address)

    def set_cookie(self, request: web.Request, response: web.Response, name: str, value: str,
                   path: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                            samesite="Strict", secure=self.secure_cookies or request.secure or None)

    async def read_form(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        if request.content_type == "application/json":
            body = await request.json()
            return body if isinstance(body, dict) else {}
        return dict(await request.post())

    async def writer(self, request: web.Request) -> tuple[Caller | None, dict, web.Response | None]:
        """Authenticate a write, read its body, check its CSRF token."""
        who = self.caller(request)
        if isinstance(who, web.Response):
            return None, {}, who
        try:
            form = await self.read_form(request)
        except web.HTTPRequestEntityTooLarge:
            return who, {}, _error(413, "request body too large")
        except Exception:
            return who, {}, _error(400, "unreadable request body")
        if who.session is not None:
            candidate = request.headers.get("X-CSRF-Token") or form.get("csrf_token")
            if not self.auth.csrf_ok(who.session, candidate):
                log.warning("review write refused: missing or wrong CSRF token from %s", request.remote)
                return who, form, _error(403, "missing or wrong CSRF token")
        return who, form, None

    def login_page(self, request: web.Request, status: int = 200, error: str = "") -> web.Response:
        nonce = secrets.token_urlsafe(24)
        values = {"csrf": nonce, "error": error, "error_class": "error" if error else "error hidden"}
        page = re.sub(r"\{\{(\w+)\}\}", lambda m: html.escape(values[m.group(1)], quote=True),
                      self.static["login.html"][0].decode())
        response = _respond(page.encode(), "text/html", status)
        self.set_cookie(request, response, LOGIN_COOKIE, nonce, "/review/login", 900)
        return response

    # --- pages -----------------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return _redirect("/review/")

    async def page(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if isinstance(who, web.Response):
            if who.status == 401:
                return _respond(self.static["unauthorized.html"][0], "text/html", 401)
            return who
        return _respond(self.static["review.html"][0], "text/html")

    async def login_form(self, request: web.Request) -> web.Response:
        if self.auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
            return _redirect("/review/")
        return self.login_page(request)

    async def login(self, request: web.Request) -> web.Response:
        auth, address = self.auth, request.remote or "?"
        if auth.throttled(address):
            return self.login_page(request, 429, "Too many wrong tokens; wait a few minutes.")
        try:
            form = await self.read_form(request)
        except Exception:
            return self.login_page(request, 400, "Unreadable form.")
        cookie, nonce = request.cookies.get(LOGIN_COOKIE, ""), str(form.get("csrf_token", ""))
        if not cookie or not nonce or not hmac.compare_digest(cookie.encode(), nonce.encode()):
            return self.login_page(request, 403,
                                   "The form expired or did not come from this page; try again.")
        session = auth.login(str(form.get("token", "")).strip())
        if session is None:
            self.wrong_token(request, "sign-in token")
            return self.login_page(request, 401, "Wrong token.")
        log.info("reviewer %r signed in from %s", session.reviewer, address)
        response = _redirect("/review/")
        self.set_cookie(request, response, SESSION_COOKIE, session.session_id, "/review",
                        int(auth.lifetime_seconds))
        response.del_cookie(LOGIN_COOKIE, path="/review/login")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        who, _form, refused = await self.writer(request)
        if refused is not None:
            return refused
        if who is not None and who.session is not None:
            self.auth.logout(who.session.session_id)
        response = _redirect("/review/login")
        response.del_cookie(SESSION_COOKIE, path="/review")
        return response

    async def static_file(self, request: web.Request, name: str) -> web.Response:
        found = self.static.get(name)
        if found is None or name.endswith(".html"):
            return _error(404, "no such file")
        return _respond(found[0], found[1], cache=True)

    # --- the JSON API ------------------------------------------------------------------------------
    async def session(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if isinstance(who, web.Response):
            return who
        return _json({
            "reviewer": who.reviewer,
            "csrf_token": who.session.csrf if who.session else None,
            "claim_seconds": self.service.queue.claim_seconds,
        })

    async def queue(self, request: web.Request) -> web.Response:
        service = self.service
        who = self.caller(request)
        if isinstance(who, web.Response):
            return who
        try:
            offset = max(0, int(request.query.get("offset", 0)))
            limit = min(200, max(1, int(request.query.get("limit", 50))))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        sort = request.query.get("sort", "score")
        if sort not in SORTS:
            return _error(400, f"sort must be one of {list(SORTS)}")
        total, items = service.queue.page(offset, limit, sort)
        now = service.clock()
        return _json({
            "total": total, "offset": offset, "limit": limit, "sort": sort,
            "items": [i.summary(now) for i in items],
            "stats": {**service.queue.stats(), "decided": service.decided,
                      "overturn_rate": round(service.overturn_rate(), 4),
                      "mine": service.by_reviewer.get(who.reviewer, 0)},
            "reviewer": who.reviewer,
        })

    async def health(self, request: web.Request) -> web.Response:
        """The model-health view's numbers (same sign-in as the queue)."""
        who = self.caller(request)
        if isinstance(who, web.Response):
            return who
        if self.health_report is None:
            return _error(404, "model health is not served here")
        return _json(self.health_report())

    async def item(self, request: web.Request, item_id: str) -> web.Response:
        who = self.caller(request)
        if isinstance(who, web.Response):
            return who
        detail = self.service.detail(item_id)
        if detail is None:
            return _error(404, self.service.queue.gone_because(item_id)
                          or "this item is no longer in the queue")
        return _json(detail)

    async def claim(self, request: web.Request, item_id: str) -> web.Response:
        service = self.service
        who, _form, refused = await self.writer(request)
        if refused is not None or who is None:
            return refused or _error(401, "not signed in")
        try:
            claim = service.queue.claim(item_id, who.reviewer)
        except NotQueued as exc:
            service.metrics.claims.labels(outcome="gone").inc()
            return _error(404, str(exc) if isinstance(exc, AlreadyLabelled)
                          else "this item is no longer in the queue")
        except ClaimConflict as exc:
            service.metrics.claims.labels(outcome="conflict").inc()
            return _error(409, str(exc), claimed_by=exc.claim.reviewer,
                          expires_in=round(exc.remaining))
        service.metrics.claims.labels(outcome="claimed").inc()
        return _json({"claimed_by": claim.reviewer,
                      "expires_in": round(claim.expires_at - service.clock())})

    async def release(self, request: web.Request, item_id: str) -> web.Response:
        who, _form, refused = await self.writer(request)
        if refused is not None or who is None:
            return refused or _error(401, "not signed in")
        try:
            released = self.service.queue.release(item_id, who.reviewer)
        except NotQueued as exc:
            return _error(404, str(exc) if isinstance(exc, AlreadyLabelled)
                          else "this item is no longer in the queue")
        return _json({"released": released})

    async def decision(self, request: web.Request, item_id: str) -> web.Response:
        who, form, refused = await self.writer(request)
        if refused is not None or who is None:
            return refused or _error(401, "not signed in")
        try:
            feedback = await self.service.decide(
                item_id, who.reviewer, str(form.get("label", "")), str(form.get("note", ""))
            )
        except AlreadyLabelled as exc:  # labelled elsewhere meanwhile: no second label
            log.info("reviewer %r submitted an item labelled elsewhere meanwhile", who.reviewer)
            return _error(409, str(exc), labelled_elsewhere=True)
        except NotQueued:
            return _error(404, "this item is no longer in the queue")
        except ClaimConflict as exc:
            return _error(409, str(exc), claimed_by=exc.claim.reviewer,
                          expires_in=round(exc.remaining))
        except InvalidDecision as exc:
            return _error(400, str(exc))
        except Exception:
            log.exception("could not publish a review decision")
            return _error(503, "the decision could not be published; try again")
        log.info("reviewer %r labelled an item %s", who.reviewer, feedback["label"])
        return _json({"feedback": feedback})


def _with_path_parameters(
    handler: Callable[..., Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler that passes the route's path parameters as keyword arguments."""

    async def handle(request: web.Request) -> web.Response:
        return await handler(request, **request.match_info)

    return handle
