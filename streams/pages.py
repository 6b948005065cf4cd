"""Web pages served by every worker: Prometheus metrics and health.

(The review page is served by a learning worker: :mod:`flagstream.streams.review_page`.)
"""

from __future__ import annotations

from faust.web import Request, Response, View

from flagstream.streams.app import Pipeline


def register_pages(p: Pipeline) -> None:
    """``/metrics`` (Prometheus text format) and ``/healthz`` on ``p.app``'s web server."""

    @p.app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            p.metrics.threshold.set(p.core.policy.threshold)
            return self.bytes(p.metrics.render(), content_type="text/plain; version=0.0.4")

    @p.app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(health(p))

    _ = Metrics, Health


def health(p: Pipeline) -> dict:
    """What ``/healthz`` says: the role, the model version scored with, whether the consumer
    group is rebalancing (partitions being handed over or recovered), and with the scoring
    API on the worker (``FLAGSTREAM_WORKER_API``) whether its assignment is current."""
    out = {"role": p.role, "model_version": p.handle.version, "rebalancing": bool(p.app.rebalancing)}
    api_health = getattr(p.api, "health", None)
    if api_health is not None:
        out["api"] = api_health()
    return out
