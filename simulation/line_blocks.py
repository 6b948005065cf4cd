"""The lines of a binary file, read in large blocks: what iterating the file gives (every
line with its ``\\n``, the last one as it is), in about half the time on a gzip stream,
where each line read through :class:`gzip.GzipFile` is a call through Python.

>>> import io
>>> data = b'{"a": 1}\\n\\n{"b": 2}\\r\\n{"c": \\r3}\\nlast'
>>> list(lines_of(io.BytesIO(data), block=4)) == list(io.BytesIO(data))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

#: Bytes read at a time.
BLOCK = 1 << 20


class Readable(Protocol):
    """A binary file: a plain one, a :class:`gzip.GzipFile`, a :class:`io.BytesIO`."""

    def read(self, size: int, /) -> bytes: ...


def lines_of(fh: Readable, block: int = BLOCK) -> Iterator[bytes]:
    """Every line of ``fh`` in order, each ending in ``b"\\n"`` but a last one without.

    A line longer than a block is gathered from its pieces once (never copied again for
    every block it spans).
    """
    if block < 1:
        raise ValueError("block must be at least 1")
    pending: list[bytes] = []  # the start of a line that has not ended yet
    read = fh.read
    while chunk := read(block):
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        parts = chunk.split(b"\n")
        if pending:
            parts[0] = b"".join([*pending, parts[0]])
        tail = parts.pop()
        pending = [tail] if tail else []
        for line in parts:
            yield line + b"\n"
    if pending:
        yield b"".join(pending)
