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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np


class Arena:
    """Key → row index over a float64 matrix that doubles when full."""

    def __init__(
        self,
        new_row: Callable[[], np.ndarray],
        loader: Callable[[str], bytes | None] | None = None,
        capacity: int = 1024,
    ) -> None:
        self.new_row = new_row
        self.loader = loader
        self.capacity = capacity
        self._template = new_row()
        self.reset()

    def reset(self) -> None:
        """Forget every row (they are read again through ``loader`` when next used)."""
        self.rows = np.tile(self._template, (self.capacity, 1))
        self.index: dict[str, int] = {}
        self.keys: list[str] = []
        self._touched: set[int] = set()

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def _add(self, key: str) -> int:
        i = len(self.keys)
        if i == len(self.rows):
            grown = np.tile(self._template, (len(self.rows), 1))
            self.rows = np.concatenate([self.rows, grown])
        stored = self.loader(key) if self.loader is not None else None
        if stored is not None:
            self.rows[i] = np.frombuffer(stored, dtype=np.float64)
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
        return out

    def row(self, key: str) -> np.ndarray:
        """The row of one key (a view; loads or creates it)."""
        return self.rows[self.indices([key])[0]]

    def row_bytes(self, key: str) -> bytes | None:
        i = self.index.get(key)
        return None if i is None else self.rows[i].tobytes()

    def put(self, key: str, data: bytes) -> None:
        """Replace a key's row with stored bytes (e.g. a replicated table update)."""
        i = self.index.get(key)
        if i is None:
            i = self._add(key)
        self.rows[i] = np.frombuffer(data, dtype=np.float64)

    def touch(self, indices: Iterable[int]) -> None:
        self._touched.update(int(i) for i in indices)

    def take_touched(self) -> dict[str, bytes]:
        """Changed rows since the last call, as key → bytes, and forget them."""
        keys = self.keys
        changed = {keys[i]: self.rows[i].tobytes() for i in self._touched}
        self._touched.clear()
        return changed
