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
            return self.json({"role": p.role, "model_version": p.handle.version})

    _ = Metrics, Health
