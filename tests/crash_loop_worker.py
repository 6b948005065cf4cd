"""A flagstream worker whose scorer fails on every step: a crash loop, for tests only.

``python tests/crash_loop_worker.py worker --role scorer`` runs the real worker with one
fault injected: each step the scorer agent takes raises, so Faust restarts the agent and it
fails again on the next records. Nothing is acknowledged, so a healthy worker started
afterwards decides every record.
"""

from __future__ import annotations

import sys
from typing import Any

from flagstream.cli import main
from flagstream.streams.scorer_agent import Scorer

FAULT = "injected fault: the scorer fails on every step"


async def fail_every_step(self: Scorer, events: list[Any], finish: Any) -> None:
    raise RuntimeError(FAULT)


if __name__ == "__main__":  # (only in the worker: tests import FAULT from here)
    Scorer.score_events = fail_every_step  # type: ignore[method-assign]
    sys.exit(main())
