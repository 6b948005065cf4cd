"""Human in the loop: the review queue, the review page and the labels it publishes.

``register_review(p)`` wires it all onto a worker that learns (role ``all`` or
``learner``; a scorer-only worker serves no review page, so there is exactly one
review queue per learner group):

- an agent on the ``review`` topic queues each flagged transaction in memory
  (bounded, highest scores kept), acknowledging it at once;
- when the worker gains review partitions (start, restart, rebalance) the queue
  is rebuilt from Kafka: the flags of the last 7 days that have no label on the
  ``feedback`` topic yet (see :mod:`sinks.review.restore`); partitions it loses
  are dropped from the queue;
- routes under ``/review`` on the worker's web server (see :mod:`sinks.review.views`);
- a reviewer's label goes to ``feedback`` (key: transaction id) and the item
  leaves the queue for everyone; the learner agent learns from it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from sinks.review.auth import ReviewAuth
from sinks.review.queue import ReviewQueue
from sinks.review.restore import LOOKBACK_S, rebuild
from sinks.review.service import ReviewService
from streams.codec import loads

if TYPE_CHECKING:
    from streams.app import Pipeline

log = logging.getLogger(__name__)

__all__ = ["register_review", "ReviewQueue", "ReviewService"]


def register_review(
    p: Pipeline, max_items: int = 10_000, claim_seconds: float = 120.0, lookback_s: float = LOOKBACK_S
) -> ReviewService | None:
    """Serve the review page and feed its queue on ``p``; None on a scorer-only worker."""
    if not p.learns:
        log.info("the review page is served by the learner, not by a %s worker", p.role)
        return None
    from sinks.review.views import register_views  # noqa: PLC0415 - needs faust.web

    app = p.app
    review_topic = p.topics["review"].get_topic_name()
    feedback_topic = p.topics["feedback"].get_topic_name()

    async def publish(key: bytes, value: bytes) -> None:
        sent = await app.producer.send(feedback_topic, key, value, None, None, None)
        await sent

    token = p.settings.review_token
    auth = ReviewAuth.from_setting(token.reveal() if hasattr(token, "reveal") else str(token))
    service = ReviewService(
        publish, p.metrics.registry, ReviewQueue(max_items=max_items, claim_seconds=claim_seconds)
    )
    owned: set[int] = set()
    tasks: set[asyncio.Task] = set()

    @app.agent(p.topics["review"], name="review-queue")
    async def review_queue(stream):
        async for event in stream.events():
            try:
                record = loads(event.message.value)
            except Exception:  # malformed flags are counted and skipped
                record = None
            service.ingest(record, event.message.partition)

    async def _review_partitions(_sender: Any, assigned: Any = (), **_kwargs: Any) -> None:
        """``assigned`` is the worker's whole new assignment, every topic."""
        now = {tp.partition for tp in assigned if tp.topic == review_topic}
        lost, gained = owned - now, now - owned
        owned.clear()
        owned.update(now)
        if lost:
            log.info("review partitions %s moved away; dropped %d items", sorted(lost),
                     service.queue.drop_partitions(lost))
        if gained:
            task = asyncio.ensure_future(
                rebuild(p.settings, service, review_topic, feedback_topic, gained,
                        owned.__contains__, lookback_s)
            )
            tasks.add(task)
            task.add_done_callback(_finished)

    def _finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("rebuilding the review queue failed", exc_info=task.exception())

    app.on_partitions_assigned.connect(cast(Any, _review_partitions))
    register_views(p, service, auth)
    _ = review_queue
    return service
