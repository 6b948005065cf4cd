"""Keep a replay's long-lived objects out of the cyclic garbage collector's full passes.

A backtest keeps every decision until its label arrives (a week of event time: about
70,000 dicts with their feature lists) and the registry's version records. CPython's
collector walks all of them on every full collection, and a replay allocates so much
that there were 34 of those in a run of the reference stream: 8 of its 72 seconds.

:func:`frozen_between_steps` freezes (:func:`gc.freeze`) what each step leaves behind:
frozen objects are still freed the moment nothing refers to them (reference counting
is untouched), only the collector stops walking them. The replay itself makes almost
no reference cycles (what a run had, 128,000 objects, came from Numba's compiler, which
is why :meth:`~FrozenSteps.step_done` collects once after the first step), and every
object is handed back to the collector at the end. Nothing a replay computes depends on
when the collector runs, so the results are the same with or without it
(``tests/test_long_lived.py`` runs a backtest both ways).

>>> import gc
>>> gc.get_freeze_count()
0
>>> with frozen_between_steps() as steps:
...     kept = [[i] for i in range(1_000)]
...     steps.step_done()
...     gc.get_freeze_count() > 1_000
True
>>> gc.get_freeze_count()
0
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


class FrozenSteps:
    """Said after each step of a replay (:meth:`step_done`); see :func:`frozen_between_steps`."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.steps = 0

    def step_done(self) -> None:
        """Freeze what the step left behind (after collecting once, after the first step:
        the first batch compiles the Numba kernels, whose compiler leaves cycles)."""
        self.steps += 1
        if not self.enabled:
            return
        if self.steps == 1:
            gc.collect()
        gc.freeze()


@contextmanager
def frozen_between_steps(enabled: bool = True) -> Iterator[FrozenSteps]:
    """A replay's steps, each one's survivors frozen (:class:`FrozenSteps`), everything
    unfrozen at the end (also when a step raises). Does nothing when the caller had
    objects frozen already (someone else manages the collector) or ``enabled`` is False."""
    mine = enabled and gc.get_freeze_count() == 0
    try:
        yield FrozenSteps(mine)
    finally:
        if mine:
            gc.unfreeze()
