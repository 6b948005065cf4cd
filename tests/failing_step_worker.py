"""A flagstream worker whose scorer fails once, part-way: one step's send is refused.

``python tests/failing_step_worker.py worker --role scorer`` runs the real worker with one
fault injected: the scorer's fifth step fails as a send Kafka refused would (its records
staged, nothing of it delivered). The records before it are decided and acknowledged, the
ones after it keep coming; a worker started afterwards must decide every record once.
"""

from __future__ import annotations

import sys
from typing import Any

from flagstream.cli import main
from flagstream.streams.scorer_agent import Scorer

FAULT = "injected fault: a send of this step was refused"
FAILING_STEP = 5

_step = Scorer._step
_steps = 0


async def step_failing_once(self: Scorer, groups: Any, events: list[Any], finish: Any) -> None:
    global _steps
    _steps += 1
    if _steps == FAILING_STEP:
        raise ConnectionError(FAULT)
    await _step(self, groups, events, finish)


if __name__ == "__main__":  # (only in the worker: tests import FAULT from here)
    Scorer._step = step_failing_once  # type: ignore[method-assign]
    sys.exit(main())
