"""Wires a worker role's agents, timers and pages onto its Faust app."""

from __future__ import annotations

from streams.app import Pipeline


def register(p: Pipeline) -> None:
    """Attach the agents of ``p.role`` to ``p.app``."""
    from streams.learner_agents import register_learner
    from streams.model_sync import register_model_sync
    from streams.pages import register_pages
    from streams.scorer_agent import register_scorer

    if p.scores:
        register_scorer(p)
    if p.learns:
        register_learner(p)
    register_model_sync(p)
    register_pages(p)
