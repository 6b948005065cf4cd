"""The key that signs model records and learner snapshots: configured, or generated once.

Model records on the ``models`` topic and learner snapshots are always signed
(HMAC-SHA256, :mod:`flagstream.scoring.snapshots`) unless the operator opts out
explicitly. The key comes from configuration (``FLAGSTREAM_MODEL_HMAC_KEY``, which
wins) or from a key file in the data directory: the learner creates it at its first
start (:func:`secrets.token_bytes`, created whole with mode 0600), and a scorer that
shares the data directory reads it from there. A key file that group or others can
read is refused: a key anyone on the host can read signs anything.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     path = Path(d) / KEY_FILE
...     learner = ModelKey(path=path, create=True)
...     scorer = ModelKey(path=path)
...     made = learner.get()
...     oct(path.stat().st_mode & 0o777), len(made) >= MIN_KEY_BYTES, scorer.get() == made
('0o600', True, True)
>>> ModelKey(b"configured").get(), ModelKey(unsigned=True).get()
(b'configured', None)
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from flagstream.errors import ConfigurationError

#: Name of the generated key file, directly in the data directory (shared by every role).
KEY_FILE = "model-signing.key"
#: Length of a generated key, and the shortest key file accepted, bytes.
MIN_KEY_BYTES = 32


def read_key_file(path: Path) -> bytes | None:
    """The key in ``path``; None if there is no such file.

    Raises :class:`ConfigurationError` if group or others may read or write it, or if
    it is too short to be a key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"model signing key {path} is readable or writable by group/others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`, or set "
                f"FLAGSTREAM_MODEL_HMAC_KEY")
        key = fh.read()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"model signing key {path} holds {len(key)} bytes; a key has at "
                                 f"least {MIN_KEY_BYTES} (delete it to have the learner make one)")
    return key


def create_key_file(path: Path) -> bytes:
    """Make a new random key in ``path`` (mode 0600 from creation) unless one is there; the key.

    The key is written to a private temporary file, made durable, then linked to
    ``path``: a reader never sees a partial key, and of two learners starting at once
    the first link wins and the other reads it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read_key_file(path)
    if existing is not None:
        return existing
    key = secrets.token_bytes(MIN_KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another learner made it first: use theirs
            theirs = read_key_file(path)
            assert theirs is not None, f"{path} vanished while linking"
            return theirs
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


class ModelKey:
    """Where the model-signing key comes from, resolved when it is first needed.

    Parameters
    ----------
    configured
        A key from configuration; it wins over the file.
    path
        The key file (in the data directory).
    create
        Make the key file if it is missing (the learner does; scorers and the CLI only read).
    unsigned
        The operator's explicit opt-out: nothing is signed or verified beyond a checksum.

    :meth:`get` returns None when ``unsigned`` or when the key file does not exist yet
    (a scorer started before the learner); :attr:`pending` tells the two apart.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     scorer = ModelKey(path=Path(d) / KEY_FILE)
    ...     before = scorer.get(), scorer.pending
    ...     _ = ModelKey(path=Path(d) / KEY_FILE, create=True).get()
    ...     before, scorer.get() is not None, scorer.pending
    ((None, True), True, False)
    """

    def __init__(self, configured: bytes | None = None, path: Path | None = None,
                 create: bool = False, unsigned: bool = False) -> None:
        if unsigned and configured:
            raise ConfigurationError("FLAGSTREAM_ALLOW_UNSIGNED_MODELS and FLAGSTREAM_MODEL_HMAC_KEY "
                                     "are both set: choose one")
        self.configured = configured
        self.path = path
        self.create = create
        self.unsigned = unsigned
        self._key = configured

    @property
    def source(self) -> str:
        """Where the key comes from, for the start-up log line (never the key itself)."""
        if self.unsigned:
            return "none (FLAGSTREAM_ALLOW_UNSIGNED_MODELS)"
        return "FLAGSTREAM_MODEL_HMAC_KEY" if self.configured else f"key file {self.path}"

    @property
    def pending(self) -> bool:
        """Signing is on but the key is not available yet."""
        return not self.unsigned and self.get() is None

    def get(self) -> bytes | None:
        """The key; None when running unsigned or while the key file does not exist."""
        if self._key is None and not self.unsigned and self.path is not None:
            self._key = create_key_file(self.path) if self.create else read_key_file(self.path)
        return self._key
