"""Integrity-checked JSON: a SHA-256 checksum, an optional HMAC-SHA256, atomic snapshot files.

Every model record on the ``models`` topic and every learner snapshot on disk is
*sealed*: the payload travels inside an envelope carrying the SHA-256 of its
canonical JSON (sorted keys) and, when ``FLAGSTREAM_MODEL_HMAC_KEY`` is set, an
HMAC-SHA256 of the same bytes. Nothing is ever unpickled: payloads are plain JSON.
A record that fails a check raises :class:`IntegrityError` with the reason, and the
caller keeps the previous good version.

>>> sealed = seal({"version": "lr-000001", "weights": {"amount": 0.5}}, key=b"k")
>>> unseal(sealed, key=b"k")["version"]
'lr-000001'
>>> unseal(sealed.replace(b"0.5", b"9.5"), key=b"k")
Traceback (most recent call last):
...
flagstream.scoring.snapshots.IntegrityError: record: checksum mismatch (content corrupt or altered)
>>> unseal(sealed, key=b"other")
Traceback (most recent call last):
...
flagstream.scoring.snapshots.IntegrityError: record: HMAC mismatch (signed with another key, or tampered with)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from flagstream.codec import dumps, loads
from flagstream.errors import FlagstreamError

log = logging.getLogger(__name__)

#: The envelope's format tag; a record without it is not sealed.
FORMAT = "flagstream-sealed/1"


class IntegrityError(FlagstreamError, ValueError):
    """A sealed record is unreadable, unsealed, corrupt, or fails its signature check.

    ``reason`` is a short metric label: ``unreadable``, ``not_sealed``, ``corrupt``,
    ``unsigned`` or ``bad_signature``.
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


def canonical(payload: Any) -> bytes:
    """The bytes that are hashed and signed: JSON with sorted keys, string keys only."""
    return orjson.dumps(loads(dumps(payload)), option=orjson.OPT_SORT_KEYS)


def _digests(body: bytes, key: bytes | None) -> tuple[str, str | None]:
    mac = hmac.new(key, body, hashlib.sha256).hexdigest() if key else None
    return hashlib.sha256(body).hexdigest(), mac


def seal(payload: dict, key: bytes | None = None) -> bytes:
    """Wrap ``payload`` in an envelope with its checksum (and HMAC when ``key`` is given)."""
    body = canonical(payload)
    digest, mac = _digests(body, key)
    return dumps({"format": FORMAT, "sha256": digest, "hmac": mac, "payload": loads(body)})


def unseal(data: bytes | bytearray | memoryview | None, key: bytes | None = None,
           what: str = "record") -> dict:
    """The payload of a sealed record, after checking it; raises :class:`IntegrityError`.

    With a key configured, an unsigned record is refused. Without one, a signed record
    is accepted on its checksum alone (there is nothing to verify the signature with).
    """
    if data is None:
        raise IntegrityError(f"{what}: empty", "unreadable")
    try:
        envelope = loads(data)
    except Exception as exc:  # orjson raises its own JSONDecodeError subclass
        raise IntegrityError(f"{what}: not valid JSON ({exc})", "unreadable") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise IntegrityError(f"{what}: not a sealed record (expected format {FORMAT!r})",
                             "not_sealed")
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise IntegrityError(f"{what}: sealed payload is not a JSON object", "not_sealed")
    digest, mac = _digests(canonical(payload), key)
    if not hmac.compare_digest(str(envelope.get("sha256", "")), digest):
        raise IntegrityError(f"{what}: checksum mismatch (content corrupt or altered)")
    if key is not None:
        given = envelope.get("hmac")
        if not given:
            raise IntegrityError(f"{what}: unsigned, but a signing key is configured", "unsigned")
        if not hmac.compare_digest(str(given), mac or ""):
            raise IntegrityError(f"{what}: HMAC mismatch (signed with another key, or tampered with)",
                                 "bad_signature")
    return payload


def refusal_reason(message: str) -> str:
    """The metric label for a refusal message (see :class:`IntegrityError`).

    >>> refusal_reason("s.json: HMAC mismatch (signed with another key, or tampered with)")
    'bad_signature'
    """
    for words, reason in (("unsigned", "unsigned"), ("HMAC mismatch", "bad_signature"),
                          ("checksum mismatch", "corrupt"), ("not a sealed", "not_sealed"),
                          ("not valid JSON", "unreadable"), ("empty", "unreadable")):
        if words in message:
            return reason
    return "malformed"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself is durable
    finally:
        os.close(dir_fd)


class SnapshotStore:
    """Numbered, sealed JSON snapshots in one directory; the newest valid one wins.

    Parameters
    ----------
    directory
        Where the files live (created on first save).
    key
        HMAC key, or None for checksum-only snapshots.
    keep
        How many snapshots to keep; older ones are deleted after each save, so a
        corrupt newest file still leaves earlier good ones to fall back to.
    prefix
        File name prefix: ``<prefix>-<sequence>.json``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = SnapshotStore(d, key=b"k", keep=2)
    ...     for n in (1, 2, 3):
    ...         _ = store.save({"n": n}, sequence=n)
    ...     newest = store.paths()[0]
    ...     _ = newest.write_bytes(newest.read_bytes().replace(b'"n":3', b'"n":4'))
    ...     payload, path = store.load()
    ...     payload, path.name, len(store.refused)
    ({'n': 2}, 'learner-000000000002.json', 1)
    """

    def __init__(self, directory: str | os.PathLike, key: bytes | None = None, keep: int = 3,
                 prefix: str = "learner") -> None:
        self.directory = Path(directory)
        self.key = key
        self.keep = max(1, keep)
        self.prefix = prefix
        self.refused: list[tuple[Path, str]] = []

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{self.prefix}-*.json"), reverse=True)

    def save(self, payload: dict, sequence: int) -> Path:
        """Seal and atomically write one snapshot; prune the oldest beyond ``keep``."""
        path = self.directory / f"{self.prefix}-{sequence:012d}.json"
        atomic_write(path, seal(payload, self.key))
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def load(self, check: Callable[[dict], object] | None = None) -> tuple[dict, Path] | None:
        """The newest snapshot that passes its checks, or None. Refused files are logged.

        ``check`` (optional) validates a payload's content; a ``ValueError`` refuses it.
        """
        for path in self.paths():
            try:
                payload = unseal(path.read_bytes(), self.key, what=str(path))
                if check is not None:
                    check(payload)
                return payload, path
            except (OSError, ValueError) as exc:  # IntegrityError is a ValueError
                log.error("refusing snapshot %s: %s; trying an older one", path, exc)
                self.refused.append((path, str(exc)))
        return None
