"""Rows of entity state in one growable numpy array, looked up by key.

An arena is the in-memory working set; a durable store (a Faust table) sits behind
it through ``loader``: a key the arena has not seen is read from the store once.
``touched`` collects the keys changed since the last ``take_touched()`` so a batch
writes each changed row once.

>>> from flagstream.features.layout import new_account_row, TOTAL_COUNT
>>> arena = Arena(new_account_row)
>>> idx = arena.indices(["c-1", "c-2", "c-1"])
>>> idx.tolist(), len(arena)
([0, 1, 0], 2)
>>> arena.rows[0, TOTAL_COUNT] = 3
>>> arena.touch(idx); sorted(arena.take_touched())
['c-1', 'c-2']
>>> float(Arena(new_account_row, loader=lambda k: arena.row_bytes("c-1")).row("x")[TOTAL_COUNT])
3.0
>>> hostile = Arena(new_account_row, loader=lambda k: b"not a row")
>>> float(hostile.row("x")[TOTAL_COUNT]), hostile.refused
(0.0, 1)

A failed step leaves no trace: rows changed inside :meth:`Arena.undo_on_error` get their
earlier values back when the block raises.

>>> try:
...     with arena.undo_on_error():
...         arena.rows[arena.indices(["c-1"]), TOTAL_COUNT] += 100
...         raise ValueError("a poison record")
... except ValueError:
...     pass
>>> float(arena.row("c-1")[TOTAL_COUNT])
3.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np


class Arena:
    """Key → row index over a float64 matrix that doubles when full."""

    def __init__(
        self,
        new_row: Callable[[], np.ndarray],
        loader: Callable[[str], bytes | None] | None = None,
        capacity: int = 1024,
        prefix_widths: tuple[int, ...] = (),
    ) -> None:
        self.new_row = new_row
        self.loader = loader
        self.capacity = capacity
        #: Widths of earlier layouts whose fields are a prefix of this one: a stored row of
        #: such a width is adopted, the fields it lacks taken from a new row.
        self.prefix_widths = prefix_widths
        #: Stored rows refused because they were not a row of this arena.
        self.refused = 0
        self._template = new_row()
        self.reset()

    def reset(self) -> None:
        """Forget every row (they are read again through ``loader`` when next used)."""
        self.rows = np.tile(self._template, (self.capacity, 1))
        self.index: dict[str, int] = {}
        self.keys: list[str] = []
        self._touched: set[int] = set()
        self._before: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def _add(self, key: str) -> int:
        i = len(self.keys)
        if i == len(self.rows):
            grown = np.tile(self._template, (len(self.rows), 1))
            self.rows = np.concatenate([self.rows, grown])
        stored = self._adopt(self.loader(key) if self.loader is not None else None)
        if stored is not None:
            self.rows[i] = stored
        self.index[key] = i
        self.keys.append(key)
        return i

    def indices(self, keys: Sequence[str]) -> np.ndarray:
        """Row index of every key, adding (or loading) unseen keys."""
        index = self.index
        out = np.empty(len(keys), dtype=np.int64)
        for n, key in enumerate(keys):
            i = index.get(key)
            out[n] = self._add(key) if i is None else i
        before = self._before
        if before is not None:  # keep each row's value from before the guarded block
            fresh = [i for i in np.unique(out).tolist() if i not in before]
            if fresh:
                before.update(zip(fresh, self.rows[fresh].copy(), strict=True))
        return out

    @contextmanager
    def undo_on_error(self) -> Iterator[None]:
        """Run a block whose row changes are undone if it raises (rows reached through
        :meth:`indices`, which every kernel call uses). Blocks do not nest."""
        if self._before is not None:
            raise RuntimeError("undo_on_error blocks do not nest")
        self._before, touched = {}, set(self._touched)
        try:
            yield
        except BaseException:
            for i, row in self._before.items():
                self.rows[i] = row
            self._touched = touched
            raise
        finally:
            self._before = None

    def row(self, key: str) -> np.ndarray:
        """The row of one key (a view; loads or creates it)."""
        return self.rows[self.indices([key])[0]]

    def row_bytes(self, key: str) -> bytes | None:
        i = self.index.get(key)
        return None if i is None else self.rows[i].tobytes()

    def put(self, key: str, data: bytes) -> None:
        """Replace a key's row with stored bytes (e.g. a replicated table update)."""
        row = self._adopt(data)
        if row is None:
            self.refused += 1
            return
        i = self.index.get(key)
        if i is None:
            i = self._add(key)
        self.rows[i] = row

    def _adopt(self, stored: bytes | None) -> np.ndarray | None:
        """Stored bytes as a row of this arena, or None (a replicated row can be hostile).

        A row of the wrong size is never adopted: the key keeps a fresh row and
        ``refused`` counts it. A row of an earlier, prefix layout (``prefix_widths``) is
        extended with the fields of a new row.

        >>> arena = Arena(lambda: np.full(3, 7.0), prefix_widths=(2,))
        >>> arena._adopt(np.array([1.0, 2.0]).tobytes()).tolist(), arena._adopt(b"x"), arena.refused
        ([1.0, 2.0, 7.0], None, 1)
        """
        if stored is None:
            return None
        size = len(stored)
        if size == self._template.nbytes:
            return np.frombuffer(stored, dtype=np.float64)
        if size % 8 == 0 and size // 8 in self.prefix_widths:
            row = self._template.copy()
            row[: size // 8] = np.frombuffer(stored, dtype=np.float64)
            return row
        self.refused += 1
        return None

    def touch(self, indices: Iterable[int]) -> None:
        self._touched.update(int(i) for i in indices)

    def take_touched(self) -> dict[str, bytes]:
        """Changed rows since the last call, as key → bytes, and forget them."""
        keys = self.keys
        changed = {keys[i]: self.rows[i].tobytes() for i in self._touched}
        self._touched.clear()
        return changed
