"""The reviews a decision policy granted over the trailing event day, kept in time slots.

A worker with a review capacity decides a few events at a time, a hundred steps a second
or more, and the policy needs what it granted over the last day of event time at every
step. One entry per step made that a list of millions after a real day, summed at every
step; slots of a minute keep it to at most 1,441 entries and O(1) per step, with running
totals. A slot leaves the day once its last grant is older than a day, so the day's
count errs by at most one slot's grants, on the side of fewer reviews.
"""

from __future__ import annotations

import math
from collections import deque

#: Event seconds per slot.
SLOT_S = 60.0


class ReviewGrants:
    """Reviews granted and decisions made per slot of event time, with running totals.

    Grants are added in event-time order (the policy's clock never goes back).

    >>> g = ReviewGrants(slot_s=60.0)
    >>> g.add(0.0, 2, 10); g.add(30.0, 1, 5); g.add(90.0, 0, 4)
    >>> g.reviews, g.decisions, g.first_s, len(g)
    (3, 19, 0.0, 2)
    >>> g.trim(before_s=45.0)  # the first slot's last grant (30 s) is older: it leaves
    >>> g.reviews, g.decisions, g.first_s, len(g)
    (0, 4, 90.0, 1)
    """

    def __init__(self, slot_s: float = SLOT_S) -> None:
        self.slot_s = slot_s
        #: [slot number, first grant's second, last grant's second, reviews, decisions]
        self.slots: deque[list] = deque()
        self.reviews = 0
        self.decisions = 0
        #: slots trimmed since :meth:`checkpoint` (None: no checkpoint open)
        self._trimmed: list[list] | None = None

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def first_s(self) -> float | None:
        """Event second of the oldest grant kept (None when none is)."""
        return self.slots[0][1] if self.slots else None

    def add(self, at_s: float, reviews: int, decisions: int) -> None:
        """``reviews`` granted to a batch of ``decisions`` decided at event second ``at_s``."""
        slot = at_s // self.slot_s if math.isfinite(at_s) else at_s  # (no event time yet: its own slot)
        if self.slots and self.slots[-1][0] == slot:
            last = self.slots[-1]
            last[2] = at_s
            last[3] += reviews
            last[4] += decisions
        else:
            self.slots.append([slot, at_s, at_s, reviews, decisions])
        self.reviews += reviews
        self.decisions += decisions

    def trim(self, before_s: float) -> None:
        """Forget the slots whose every grant is older than ``before_s``."""
        while self.slots and self.slots[0][2] < before_s:
            slot = self.slots.popleft()
            self.reviews -= slot[3]
            self.decisions -= slot[4]
            if self._trimmed is not None:
                self._trimmed.append(slot)

    def checkpoint(self) -> tuple:
        """A mark to go back to (:meth:`rollback`) should what follows fail; what follows is
        kept by :meth:`commit`. Grants only ever change the newest slot or add slots after
        it, and trimming takes the oldest: the mark is the count, a copy of the newest
        slot and the totals, plus the slots trimmed meanwhile.

        >>> g = ReviewGrants(slot_s=60.0)
        >>> g.add(0.0, 2, 10)
        >>> mark = g.checkpoint()
        >>> g.add(30.0, 1, 5); g.add(90.0, 4, 4); g.trim(before_s=200.0)
        >>> g.rollback(mark)
        >>> g.reviews, g.decisions, g.slots
        (2, 10, deque([[0.0, 0.0, 0.0, 2, 10]]))
        """
        if self._trimmed is not None:
            raise RuntimeError("a checkpoint is open already (checkpoints do not nest)")
        self._trimmed = []
        return len(self.slots), list(self.slots[-1]) if self.slots else None, self.reviews, self.decisions

    def rollback(self, mark: tuple) -> None:
        """Back to :meth:`checkpoint`'s ``mark``."""
        count, newest, self.reviews, self.decisions = mark
        self.slots.extendleft(reversed(self._trimmed or []))
        while len(self.slots) > count:
            self.slots.pop()
        if newest is not None:
            self.slots[-1] = newest
        self._trimmed = None

    def commit(self) -> None:
        """Keep what followed :meth:`checkpoint`."""
        self._trimmed = None
