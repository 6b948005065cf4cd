"""Who may use the review page: per-reviewer tokens, reviewer sessions, CSRF tokens, throttling.

Every reviewer has their own token (:mod:`.credentials`); the token says who is
acting, nothing the caller sends can change that. A reviewer signs in with their
token and gets a server-side session (an HttpOnly, SameSite=Strict cookie holds only
its random id) with its own CSRF token, which every write must echo. A session ends
after ``idle_seconds`` unused, after ``lifetime_seconds`` whatever happens, and when
the reviewer's token is withdrawn or replaced. Scripts may instead send
``Authorization: Bearer <token>`` (no cookie, so no CSRF risk).

Wrong tokens are throttled per client address (:class:`~flagstream.throttle.FailureThrottle`,
the scoring API's too), the same way on the sign-in form and in a bearer header: after
``max_failures`` wrong tokens within ``failure_window`` seconds the address is refused
every token, right or wrong, until the oldest of those failures is ``failure_window`` old.

>>> now = [0.0]
>>> tokens = ReviewerTokens(None)
>>> ana = tokens.add("ana")
>>> auth = ReviewAuth(tokens, lifetime_seconds=3_600, clock=lambda: now[0])
>>> auth.login("wrong") is None, auth.login(ana).reviewer
(True, 'ana')
>>> s = auth.login(ana)
>>> auth.session(s.session_id) is s, auth.csrf_ok(s, s.csrf), auth.csrf_ok(s, "forged")
(True, True, False)
>>> auth.bearer(f"Bearer {ana}").reviewer, auth.bearer("Bearer nope"), auth.bearer(None)
('ana', None, None)
>>> now[0] = 3_601.0  # past the absolute lifetime, however busy the session was
>>> auth.session(s.session_id) is None
True
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from flagstream.sinks.review.credentials import Credential, ReviewerTokens
from flagstream.throttle import FailureThrottle

SESSION_COOKIE = "flagstream_review"
LOGIN_COOKIE = "flagstream_review_login"


@dataclass
class Session:
    """A signed-in reviewer."""

    session_id: str
    credential: Credential
    csrf: str
    created: float
    last_seen: float

    @property
    def reviewer(self) -> str:
        return self.credential.reviewer


class ReviewAuth:
    """Token check, sessions with idle and absolute expiry, CSRF check and a wrong-token throttle.

    Parameters
    ----------
    tokens
        The reviewers and their token digests.
    idle_seconds
        A session unused this long is gone.
    lifetime_seconds
        A session this old is gone, however recently it was used.
    max_sessions
        The most sessions held (oldest dropped first).
    max_failures, failure_window
        Wrong tokens allowed per address within the window before it is refused.
    """

    def __init__(
        self,
        tokens: ReviewerTokens,
        idle_seconds: float = 8 * 3_600,
        lifetime_seconds: float = 12 * 3_600,
        max_sessions: int = 1_000,
        max_failures: int = 10,
        failure_window: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_seconds <= 0 or lifetime_seconds <= 0:
            raise ValueError("session timeouts must be positive")
        self.tokens = tokens
        self.idle_seconds = idle_seconds
        self.lifetime_seconds = lifetime_seconds
        self.max_sessions = max_sessions
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._throttle = FailureThrottle(max_failures, failure_window, clock)

    def identify(self, token: object) -> Credential | None:
        """Whose token this is (None for a wrong one)."""
        return self.tokens.match(token)

    def bearer(self, header: str | None) -> Credential | None:
        """The credential in an ``Authorization: Bearer <token>`` header, or None."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        return self.identify(value.strip()) if scheme.lower() == "bearer" else None

    def login(self, token: object) -> Session | None:
        """A new session for the reviewer whose token this is, or None."""
        credential = self.identify(token)
        if credential is None:
            return None
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), credential, secrets.token_urlsafe(32), now, now)
        self._sessions[session.session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def session(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle timer restarts), or None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if (now - session.last_seen > self.idle_seconds
                or now - session.created > self.lifetime_seconds
                or not self.tokens.holds(session.credential)):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def logout(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    @staticmethod
    def csrf_ok(session: Session, candidate: object) -> bool:
        """Does ``candidate`` match the session's CSRF token (constant time)?"""
        if not isinstance(candidate, str) or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), session.csrf.encode())

    def throttled(self, address: str) -> bool:
        """Has ``address`` sent too many wrong tokens lately?"""
        return self._throttle.throttled(address)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try a token again (0: now)."""
        return self._throttle.retry_after(address)

    def failed(self, address: str) -> None:
        """Count a wrong token from ``address``."""
        self._throttle.failed(address)
