"""The review page on a learning worker: its queue fed from Kafka, its routes on Faust's web server.

A worker that learns (role ``all`` or ``learner``) runs one :class:`ReviewRuntime`; a
scorer-only worker serves no review page, so there is exactly one review queue per
learner group:

- an agent on the ``review`` topic queues each flagged transaction in memory
  (bounded, highest scores kept), acknowledging it at once;
- when the worker gains review partitions (start, restart, rebalance) the queue is
  rebuilt from Kafka: the flags of the last 7 days that have no label on the
  ``feedback`` topic yet (:mod:`flagstream.streams.review_restore`); partitions it
  loses are dropped from the queue;
- :class:`flagstream.sinks.review.ReviewRoutes` answer under ``/review``, to reviewers
  with their own tokens (:mod:`flagstream.streams.review_access`);
- a reviewer's label goes to ``feedback`` (key: transaction id) and the item leaves
  the queue for everyone; the learner agent learns from it;
- a label from anywhere else (another tool, a chargeback, another worker's page) leaves
  the queue as soon as this worker's learner has admitted it (:meth:`ReviewRuntime.admitted`):
  the review and feedback topics are both keyed by transaction id, have the same
  partitions and the same subscribers, so Faust assigns a worker feedback partition *k*
  with review partition *k* — the labels its learner sees are those of its own queue.
  A reviewer who then submits such an item is told who labelled it; nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from faust.web import View

from flagstream.codec import loads
from flagstream.sinks.review import ReviewAuth, ReviewQueue, ReviewRoutes, ReviewService
from flagstream.sinks.review.service import model_flagged
from flagstream.sinks.review.views import Route
from flagstream.streams.app import Pipeline
from flagstream.streams.review_access import ensure_a_reviewer, reviewer_tokens
from flagstream.streams.review_restore import LOOKBACK_S, rebuild

log = logging.getLogger(__name__)


class ReviewRuntime:
    """The review queue, its feed from the ``review`` topic and its page, on one worker.

    Parameters
    ----------
    p
        A pipeline whose role learns.
    max_items, claim_seconds, lookback_s
        Queue bound, how long a claim lasts, how far back a rebuild looks.
    health
        The learner's model-health report, for the page's model-health view.
    decision_of_record
        The learner's recorded decision of a transaction: a flag whose decision of record
        is the scoring API's fallback is not queued (its label would be refused).
    """

    def __init__(self, p: Pipeline, max_items: int = 10_000, claim_seconds: float = 120.0,
                 lookback_s: float = LOOKBACK_S,
                 health: Callable[[], dict] | None = None,
                 decision_of_record: Callable[[str], dict | None] | None = None) -> None:
        self.p = p
        #: The learner's model-health report (``/review/api/health``), None: not served.
        self.health = health
        self.lookback_s = lookback_s
        self.review_topic = p.topics["review"].get_topic_name()
        self.feedback_topic = p.topics["feedback"].get_topic_name()
        tokens = reviewer_tokens(p.settings)
        ensure_a_reviewer(tokens)
        self.auth = ReviewAuth(tokens, lifetime_seconds=p.settings.review_session_lifetime_s)
        self.service = ReviewService(
            self.publish, p.metrics.registry,
            ReviewQueue(max_items=max_items, claim_seconds=claim_seconds),
            decision_of_record=decision_of_record,
        )
        self.owned: set[int] = set()
        self.tasks: set[asyncio.Task] = set()

    async def publish(self, key: bytes, value: bytes) -> None:
        """Send one label to ``feedback`` and wait for the broker."""
        sent = await self.p.app.producer.send(self.feedback_topic, key, value, None, None, None)
        await sent

    def register(self) -> None:
        app = self.p.app

        @app.agent(self.p.topics["review"], name="review-queue")
        async def review_queue(stream: Any) -> None:
            async for event in stream.events():
                self.ingest(event.message.value, event.message.partition)

        app.on_partitions_assigned.connect(self.on_assigned)
        routes = ReviewRoutes(self.service, self.auth, secure_cookies=self.p.settings.web_secure_cookies,
                              health=self.health)
        serve_on_faust(app, routes.routes())
        _ = review_queue

    def ingest(self, value: bytes | None, partition: int) -> None:
        """Queue one record from ``review``; a malformed one is counted and skipped, never raised."""
        try:
            record = loads(value) if value is not None else None
            self.service.ingest(record, partition)
        except Exception as exc:  # the review topic is as hostile as any other
            log.warning("skipped a review record that cannot be queued: %s", type(exc).__name__)
            self.service.metrics.ingested.labels(outcome="invalid").inc()

    def admitted(self, labelled: list[tuple[dict, int, dict]]) -> int:
        """Labels the learner admitted (``(decision, label, feedback)``, its ledger's effective
        labels, never a refused one): their flagged transactions leave the queue, and are not
        queued if their flag comes later. Returns how many items left the queue."""
        removed = 0
        for decision, _label, feedback in labelled:
            if isinstance(decision, dict) and model_flagged(decision):
                removed += self.service.labelled_elsewhere(None, feedback)
        if removed:
            log.debug("%d review items were labelled elsewhere", removed)
        return removed

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def on_assigned(self, *args: Any, **kwargs: Any) -> None:
        """Faust sends ``(app, assigned)``: the worker's whole new assignment, every topic."""
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", ())
        now = {tp.partition for tp in assigned if tp.topic == self.review_topic}
        labels = {tp.partition for tp in assigned if tp.topic == self.feedback_topic}
        if now != labels:  # not co-partitioned (a topic resized by hand?): see the module doc
            log.warning("review partitions %s but feedback partitions %s: labels from elsewhere "
                        "for the others leave this queue only at its next rebuild",
                        sorted(now), sorted(labels))
        lost, gained = self.owned - now, now - self.owned
        self.owned.clear()
        self.owned.update(now)
        if lost:
            log.info("review partitions %s moved away; dropped %d items", sorted(lost),
                     self.service.queue.drop_partitions(lost))
        if gained:
            task = asyncio.ensure_future(
                rebuild(self.p.settings, self.service, self.review_topic, self.feedback_topic,
                        gained, self.owned.__contains__, self.lookback_s)
            )
            self.tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("rebuilding the review queue failed", exc_info=task.exception())


def serve_on_faust(app: Any, routes: list[Route]) -> None:
    """Serve routes on a Faust app's web server: one Faust view per path, a method per route."""
    by_path: dict[str, dict[str, Any]] = {}
    for route in routes:
        by_path.setdefault(route.path, {})[route.method.lower()] = _method(route)
    for number, (path, methods) in enumerate(by_path.items()):
        app.page(path)(type(f"ReviewView{number}", (View,), methods))


def _method(route: Route) -> Any:
    handler = route.handler

    async def answer(self: View, request: Any, **params: Any) -> Any:
        return await handler(request, **params)

    return answer
