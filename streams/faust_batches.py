"""Helpers for handling Faust events a batch at a time.

``noack_take`` hands an agent a list of events that are acknowledged only when we
say so; these helpers group such a list by partition, point Faust's "current event"
at the right partition while table rows are written, and ack after the work is durable.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from faust.streams import _current_event
from faust.types import EventT


def by_partition(events: Sequence[EventT]) -> dict[int, list[EventT]]:
    """Events grouped by source partition, each group in offset order."""
    groups: dict[int, list[EventT]] = defaultdict(list)
    for event in events:
        groups[event.message.partition].append(event)
    return groups


@contextmanager
def current_event(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event, so table writes go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def ack_all(events: Sequence[EventT]) -> None:
    """Acknowledge events whose effects are durable (sent, and table rows written)."""
    for event in events:
        event.ack()
