"""Assembles a worker: the pipeline of its role and the runtime pieces that role runs.

>>> from flagstream.streams.config import Settings
>>> import tempfile
>>> p = build_app(Settings(data_dir=tempfile.mkdtemp()), "scorer")
>>> sorted(p.app.agents), p.learner is None, p.review is None
(['score'], True, True)
>>> import asyncio; asyncio.run(p.stop())
"""

from __future__ import annotations

from flagstream.streams.api_worker import WorkerApiRuntime
from flagstream.streams.app import Pipeline, create_pipeline
from flagstream.streams.config import Settings
from flagstream.streams.learner_agents import learner
from flagstream.streams.pages import register_pages
from flagstream.streams.review_page import ReviewRuntime
from flagstream.streams.scorer_agent import Scorer


def build_app(settings: Settings, role: str = "all") -> Pipeline:
    """The Faust app for ``role`` with its agents, timers and pages registered."""
    p = create_pipeline(settings, role)
    if p.scores:
        scorer = p.scorer = Scorer(p)
        if settings.worker_api:  # the scoring API on this worker's web server
            api = p.api = WorkerApiRuntime(p)
            scorer.api_calls = api.calls
    if p.learns:
        learning = p.learner = learner(p)
        p.review = ReviewRuntime(p, health=learning.health.report, decision_of_record=learning.lookup)
    for runtime in p.runtimes():
        runtime.register()

    @p.app.timer(0.5)
    async def model_sync() -> None:
        p.models.sync()

    @p.app.on_before_shutdown.connect
    async def _stop(*_args: object, **_kwargs: object) -> None:
        await p.stop()

    register_pages(p)
    _ = model_sync, _stop
    return p
