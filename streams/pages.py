"""Web pages served by every worker: Prometheus metrics, health, and the review page."""

from __future__ import annotations

from streams.app import Pipeline


def register_pages(p: Pipeline) -> None:
    from faust.web import Request, Response, View

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
    try:
        from sinks.review import register_review
    except ImportError:  # the review page is optional in a scorer-only deployment
        return
    register_review(p)
