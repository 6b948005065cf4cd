"""Reviewer tokens: one per reviewer, so a token says who is acting; only hashes are kept.

A token is 32 random bytes (URL-safe text). The file ``reviewers.json`` in the data
directory (owner-only permissions) maps each reviewer's name to the SHA-256 of their
token; the token itself is shown once, when it is made, and stored nowhere. A token
that random needs no slow hash: nobody can search 2²⁵⁶ candidates against a digest.
The file is written whole and renamed into place, and re-read whenever it changes, so
``flagstream review-tokens add NAME`` takes effect on a running worker at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

REVIEWERS_FILE = "reviewers.json"
MAX_NAME = 64


class BadReviewerName(ValueError):
    """A reviewer name that is empty, too long or not printable."""


def reviewer_name(name: object) -> str:
    """The name as stored: 1–64 printable characters, surrounding spaces removed.

    >>> reviewer_name("  Ana Ruiz ")
    'Ana Ruiz'
    >>> reviewer_name("a\\nb")
    Traceback (most recent call last):
    ...
    flagstream.sinks.review.credentials.BadReviewerName: a reviewer name is 1-64 printable characters
    """
    text = str(name or "").strip()
    if not text or len(text) > MAX_NAME or not text.isprintable():
        raise BadReviewerName(f"a reviewer name is 1-{MAX_NAME} printable characters")
    return text


def digest(token: str) -> str:
    """The hex SHA-256 of a token: what is stored and compared, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Credential:
    """Whose a token is: the reviewer and the digest of the token they used."""

    reviewer: str
    digest: str


class ReviewerTokens:
    """Reviewer → token digest, kept in ``path`` (None: in memory only).

    Parameters
    ----------
    path
        The ``reviewers.json`` file (created on the first :meth:`add`).

    Examples
    --------
    >>> tokens = ReviewerTokens(None)
    >>> ana = tokens.add("ana")
    >>> tokens.allow("ops", "a-token-from-configuration")
    >>> tokens.match(ana).reviewer, tokens.match("a-token-from-configuration").reviewer
    ('ana', 'ops')
    >>> tokens.match("guess") is None, tokens.names()
    (True, ['ana', 'ops'])
    >>> again = tokens.add("ana")  # a new token for ana; the old one stops working
    >>> tokens.match(ana) is None, tokens.match(again).reviewer
    (True, 'ana')
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stored: dict[str, str] = {}  # reviewer → digest, as in the file
        self._updated: dict[str, str] = {}  # reviewer → when their token was made
        self._configured: dict[str, str] = {}  # reviewer → digest, from settings (never written)
        self._seen: tuple[int, int, int] | None = None

    # --- reading ---------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Re-read the file if it changed since the last look (a missing file is no one)."""
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stored, self._updated, self._seen = {}, {}, None
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        try:
            entries = json.loads(self.path.read_text())["reviewers"]
            stored = {reviewer_name(name): str(entry["sha256"]) for name, entry in entries.items()}
            updated = {reviewer_name(name): str(entry.get("updated", "")) for name, entry in entries.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # keep the last good set: a half-edited file must not lock everyone out or in
            log.error("cannot read reviewer tokens from %s (%s); keeping the last good set",
                      self.path, type(exc).__name__)
            return
        self._stored, self._updated, self._seen = stored, updated, seen

    def _all(self) -> list[tuple[str, str]]:
        self._refresh()
        return [*self._stored.items(), *self._configured.items()]

    def match(self, token: object) -> Credential | None:
        """The credential ``token`` is, or None (every digest compared in constant time)."""
        if not isinstance(token, str) or not token:
            return None
        candidate = digest(token).encode()
        found = None
        for reviewer, known in self._all():
            if hmac.compare_digest(candidate, known.encode()):
                found = Credential(reviewer, known)
        return found

    def holds(self, credential: Credential) -> bool:
        """Is ``credential`` still valid (not removed, not replaced by a new token)?"""
        return any(reviewer == credential.reviewer and hmac.compare_digest(known, credential.digest)
                   for reviewer, known in self._all())

    def names(self) -> list[str]:
        """Every reviewer with a token, sorted."""
        return sorted({reviewer for reviewer, _ in self._all()})

    def __len__(self) -> int:
        return len(self._all())

    # --- changing -----------------------------------------------------------------------------
    def allow(self, reviewer: str, token: str) -> None:
        """Accept ``token`` as ``reviewer``'s for this process (a configured token; not stored)."""
        if not token:
            raise ValueError("an empty token is no credential")
        self._configured[reviewer_name(reviewer)] = digest(token)

    def add(self, reviewer: str) -> str:
        """A new token for ``reviewer`` (replacing any they had); returned once, stored as a hash."""
        name = reviewer_name(reviewer)
        token = secrets.token_urlsafe(32)
        self._refresh()
        self._updated[name] = datetime.now(UTC).isoformat(timespec="seconds")
        self._write({**self._stored, name: digest(token)})
        return token

    def remove(self, reviewer: str) -> bool:
        """Withdraw ``reviewer``'s token (their sessions end too); False if they had none."""
        try:
            name = reviewer_name(reviewer)
        except BadReviewerName:
            return False
        self._refresh()
        if name not in self._stored:
            return False
        self._write({other: d for other, d in self._stored.items() if other != name})
        return True

    def _write(self, stored: dict[str, str]) -> None:
        if self.path is not None:
            body = {"reviewers": {name: {"sha256": d, "updated": self._updated.get(name, "")}
                                  for name, d in stored.items()}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(body, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, self.path)
            self._seen = None
        self._stored = dict(stored)
