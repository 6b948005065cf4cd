"""The review page's routes on the worker's Faust web server (aiohttp underneath).

``/review/login`` signs a reviewer in; ``/review/`` is the page; ``/review/api/*`` is
the JSON API the page polls. Every route but the login form and the static files
needs a session cookie or ``Authorization: Bearer <token>`` (401 otherwise); every
write made with a session cookie needs the session's CSRF token in an
``X-CSRF-Token`` header or a ``csrf_token`` form field (403 otherwise).
"""

from __future__ import annotations

import hmac
import html
import logging
import re
import secrets
from importlib import resources
from typing import Any

from aiohttp import web
from faust.web import View

from sinks.review.auth import LOGIN_COOKIE, SESSION_COOKIE, ReviewAuth, Session
from sinks.review.queue import SORTS, ClaimConflict, NotQueued
from sinks.review.service import InvalidDecision, ReviewService, clean_reviewer
from streams.codec import dumps

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
    folder = resources.files("sinks.review") / "static"
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
    """Who is calling: a signed-in reviewer (``session``) or a script with the bearer token."""

    def __init__(self, session: Session | None, reviewer: str) -> None:
        self.session = session
        self.reviewer = reviewer


def register_views(p, service: ReviewService, auth: ReviewAuth) -> None:
    """Add the review routes to ``p.app``'s web server."""
    static = _static_files()

    def caller(request: web.Request) -> Caller | None:
        """An explicit Authorization header wins over a cookie (and must be right)."""
        header = request.headers.get("Authorization")
        if header is not None:
            if not auth.bearer_ok(header):
                return None
            try:
                return Caller(None, clean_reviewer(request.headers.get("X-Reviewer") or "api"))
            except InvalidDecision:
                return Caller(None, "api")
        session = auth.session(request.cookies.get(SESSION_COOKIE))
        return Caller(session, session.reviewer) if session is not None else None

    async def read_form(request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        if request.content_type == "application/json":
            body = await request.json()
            return body if isinstance(body, dict) else {}
        return dict(await request.post())

    async def writer(request: web.Request) -> tuple[Caller | None, dict, web.Response | None]:
        """Authenticate a write, read its body, check its CSRF token."""
        who = caller(request)
        if who is None:
            return None, {}, _error(401, "sign in at /review/login or send a bearer token")
        try:
            form = await read_form(request)
        except web.HTTPRequestEntityTooLarge:
            return who, {}, _error(413, "request body too large")
        except Exception:
            return who, {}, _error(400, "unreadable request body")
        if who.session is not None:
            candidate = request.headers.get("X-CSRF-Token") or form.get("csrf_token")
            if not auth.csrf_ok(who.session, candidate):
                log.warning("review write refused: missing or wrong CSRF token from %s", request.remote)
                return who, form, _error(403, "missing or wrong CSRF token")
        return who, form, None

    def login_page(
        request: web.Request, status: int = 200, error: str = "", reviewer: str = ""
    ) -> web.Response:
        nonce = secrets.token_urlsafe(24)
        values = {"csrf": nonce, "error": error, "reviewer": reviewer,
                  "error_class": "error" if error else "error hidden"}
        page = re.sub(r"\{\{(\w+)\}\}", lambda m: html.escape(values[m.group(1)], quote=True),
                      static["login.html"][0].decode())
        response = _respond(page.encode(), "text/html", status)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=900, path="/review/login", httponly=True,
                            samesite="Strict", secure=request.secure or None)
        return response

    @p.app.page("/review")
    class ReviewRoot(View):
        async def get(self, request: web.Request) -> web.Response:
            return _redirect("/review/")

    @p.app.page("/review/")
    class ReviewPage(View):
        async def get(self, request: web.Request) -> web.Response:
            if caller(request) is None:
                return _respond(static["unauthorized.html"][0], "text/html", 401)
            return _respond(static["review.html"][0], "text/html")

    @p.app.page("/review/login")
    class ReviewLogin(View):
        async def get(self, request: web.Request) -> web.Response:
            if auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
                return _redirect("/review/")
            return login_page(request)

        async def post(self, request: web.Request) -> web.Response:
            address = request.remote or "?"
            if auth.throttled(address):
                return login_page(request, 429, "Too many wrong tokens; wait a few minutes.")
            try:
                form = await read_form(request)
            except Exception:
                return login_page(request, 400, "Unreadable form.")
            cookie, nonce = request.cookies.get(LOGIN_COOKIE, ""), str(form.get("csrf_token", ""))
            if not cookie or not nonce or not hmac.compare_digest(cookie.encode(), nonce.encode()):
                return login_page(request, 403, "The form expired or did not come from this page; try again.")
            name = str(form.get("reviewer", ""))
            try:
                reviewer = clean_reviewer(name)
            except InvalidDecision:
                return login_page(request, 400, "Enter your name.", name)
            session = auth.login(str(form.get("token", "")), reviewer)
            if session is None:
                auth.failed(address)
                log.warning("review sign-in with a wrong token from %s", address)
                return login_page(request, 401, "Wrong token.", reviewer)
            log.info("reviewer %r signed in from %s", reviewer, address)
            response = _redirect("/review/")
            response.set_cookie(SESSION_COOKIE, session.session_id, path="/review", httponly=True,
                                samesite="Strict", secure=request.secure or None)
            response.del_cookie(LOGIN_COOKIE, path="/review/login")
            return response

    @p.app.page("/review/logout")
    class ReviewLogout(View):
        async def post(self, request: web.Request) -> web.Response:
            who, _form, refused = await writer(request)
            if refused is not None:
                return refused
            if who is not None and who.session is not None:
                auth.logout(who.session.session_id)
            response = _redirect("/review/login")
            response.del_cookie(SESSION_COOKIE, path="/review")
            return response

    @p.app.page("/review/static/{name}")
    class ReviewStatic(View):
        async def get(self, request: web.Request, name: str) -> web.Response:
            found = static.get(name)
            if found is None or name.endswith(".html"):
                return _error(404, "no such file")
            return _respond(found[0], found[1], cache=True)

    @p.app.page("/review/api/session")
    class ReviewSession(View):
        async def get(self, request: web.Request) -> web.Response:
            who = caller(request)
            if who is None:
                return _error(401, "not signed in")
            return _json({
                "reviewer": who.reviewer,
                "csrf_token": who.session.csrf if who.session else None,
                "claim_seconds": service.queue.claim_seconds,
            })

    @p.app.page("/review/api/queue")
    class ReviewQueueApi(View):
        async def get(self, request: web.Request) -> web.Response:
            who = caller(request)
            if who is None:
                return _error(401, "not signed in")
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

    @p.app.page("/review/api/items/{item_id}")
    class ReviewItemApi(View):
        async def get(self, request: web.Request, item_id: str) -> web.Response:
            if caller(request) is None:
                return _error(401, "not signed in")
            detail = service.detail(item_id)
            if detail is None:
                return _error(404, "this item is no longer in the queue")
            return _json(detail)

    @p.app.page("/review/api/items/{item_id}/claim")
    class ReviewClaim(View):
        async def post(self, request: web.Request, item_id: str) -> web.Response:
            who, _form, refused = await writer(request)
            if refused is not None or who is None:
                return refused or _error(401, "not signed in")
            try:
                claim = service.queue.claim(item_id, who.reviewer)
            except NotQueued:
                service.metrics.claims.labels(outcome="gone").inc()
                return _error(404, "this item is no longer in the queue")
            except ClaimConflict as exc:
                service.metrics.claims.labels(outcome="conflict").inc()
                return _error(409, str(exc), claimed_by=exc.claim.reviewer,
                              expires_in=round(exc.remaining))
            service.metrics.claims.labels(outcome="claimed").inc()
            return _json({"claimed_by": claim.reviewer,
                          "expires_in": round(claim.expires_at - service.clock())})

    @p.app.page("/review/api/items/{item_id}/release")
    class ReviewRelease(View):
        async def post(self, request: web.Request, item_id: str) -> web.Response:
            who, _form, refused = await writer(request)
            if refused is not None or who is None:
                return refused or _error(401, "not signed in")
            try:
                released = service.queue.release(item_id, who.reviewer)
            except NotQueued:
                return _error(404, "this item is no longer in the queue")
            return _json({"released": released})

    @p.app.page("/review/api/items/{item_id}/decision")
    class ReviewDecision(View):
        async def post(self, request: web.Request, item_id: str) -> web.Response:
            who, form, refused = await writer(request)
            if refused is not None or who is None:
                return refused or _error(401, "not signed in")
            try:
                feedback = await service.decide(
                    item_id, who.reviewer, str(form.get("label", "")), str(form.get("note", ""))
                )
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

    _ = (ReviewRoot, ReviewPage, ReviewLogin, ReviewLogout, ReviewStatic, ReviewSession,
         ReviewQueueApi, ReviewItemApi, ReviewClaim, ReviewRelease, ReviewDecision)
