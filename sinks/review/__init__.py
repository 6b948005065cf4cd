"""Human in the loop: the review queue, the review page and the labels it publishes.

- :class:`ReviewQueue` holds flagged transactions waiting for a person (bounded,
  highest scores kept, claims that expire);
- :class:`ReviewService` ingests flags, serves details and turns a reviewer's
  decision into a feedback record;
- :class:`ReviewRoutes` is the page and its JSON API; :class:`ReviewAuth` its
  sessions, CSRF and throttling; :class:`ReviewerTokens` the reviewers' own tokens
  (stored as hashes), which say who is acting.

The worker feeds and serves them (:mod:`flagstream.streams.review_page`): nothing here
talks to Kafka or Faust.
"""

from __future__ import annotations

from flagstream.sinks.review.auth import ReviewAuth
from flagstream.sinks.review.credentials import ReviewerTokens
from flagstream.sinks.review.queue import ReviewQueue
from flagstream.sinks.review.service import ReviewService
from flagstream.sinks.review.views import ReviewRoutes

__all__ = ["ReviewAuth", "ReviewQueue", "ReviewRoutes", "ReviewService", "ReviewerTokens"]
