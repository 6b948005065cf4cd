"""Who may use the review page: one shared token, reviewer sessions, CSRF tokens.

A reviewer signs in with the token and a name and gets a server-side session (an
HttpOnly, SameSite=Strict cookie holds only its random id) with its own CSRF
token, which every write must echo. Scripts may instead send
``Authorization: Bearer <token>`` (no cookie, so no CSRF risk). Repeated wrong
tokens from one address are refused for a while.

>>> auth = ReviewAuth("s3cret", clock=lambda: 0.0)
>>> auth.login("wrong", "ana") is None, auth.login("s3cret", "ana").reviewer
(True, 'ana')
>>> s = auth.login("s3cret", "ben")
>>> auth.session(s.session_id) is s, auth.csrf_ok(s, s.csrf), auth.csrf_ok(s, "forged")
(True, True, False)
>>> auth.bearer_ok("Bearer s3cret"), auth.bearer_ok("Bearer nope"), auth.bearer_ok(None)
(True, False, False)
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

SESSION_COOKIE = "flagstream_review"
LOGIN_COOKIE = "flagstream_review_login"


@dataclass
class Session:
    """A signed-in reviewer."""

    session_id: str
    reviewer: str
    csrf: str
    created: float
    last_seen: float


class ReviewAuth:
    """Token check, sessions with idle expiry, CSRF check and a failed-login throttle.

    Parameters
    ----------
    token
        The shared review token; must not be empty (see :meth:`from_setting`).
    idle_seconds
        A session unused this long is gone.
    max_sessions
        The most sessions held (oldest dropped first).
    max_failures, failure_window
        Wrong tokens allowed per address within the window before it is refused.
    """

    def __init__(
        self,
        token: str,
        idle_seconds: float = 8 * 3_600,
        max_sessions: int = 1_000,
        max_failures: int = 10,
        failure_window: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("the review token must not be empty")
        self._token = token.encode()
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: dict[str, deque[float]] = {}

    @classmethod
    def from_setting(cls, token: str, **kwargs) -> ReviewAuth:
        """Use the configured token, or generate one and log it once."""
        if not token:
            token = secrets.token_urlsafe(24)
            log.warning(
                "FLAGSTREAM_REVIEW_TOKEN is not set; the review page token for this run is %s", token
            )
        return cls(token, **kwargs)

    def token_ok(self, candidate: object) -> bool:
        """Constant-time comparison with the review token."""
        if not isinstance(candidate, str) or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def bearer_ok(self, header: str | None) -> bool:
        """Is ``header`` an ``Authorization: Bearer <token>`` with the right token?"""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def login(self, token: object, reviewer: str) -> Session | None:
        """A new session for ``reviewer`` if the token is right."""
        if not self.token_ok(token):
            return None
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), reviewer, secrets.token_urlsafe(32), now, now)
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
        if now - session.last_seen > self.idle_seconds:
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
        failures = self._failures.get(address)
        if not failures:
            return False
        cutoff = self.clock() - self.failure_window
        while failures and failures[0] < cutoff:
            failures.popleft()
        return len(failures) >= self.max_failures

    def failed(self, address: str) -> None:
        """Count a wrong token from ``address``."""
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(address, deque(maxlen=self.max_failures)).append(self.clock())
