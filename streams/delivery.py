"""Sending a batch's outputs and waiting until the broker has them all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import numpy as np

from streams.app import Pipeline
from streams.codec import dumps
from streams.core import MerchantActivity
from streams.topics import partition_for


async def deliver(pending: Sequence[Awaitable]) -> None:
    """Wait until every send of a batch is acknowledged by the broker."""
    if pending:
        await asyncio.gather(*pending)


async def send_activity(p: Pipeline, activity: MerchantActivity) -> list[Awaitable]:
    """Send merchant counts/labels, one record per merchant-state partition."""
    n = p.settings.partitions
    home = np.fromiter((partition_for(m, n) for m in activity.merchant_ids), np.int64)
    topic = p.topics["merchant_activity"].get_topic_name()
    pending = []
    for part in np.unique(home):
        sel = np.flatnonzero(home == part)
        piece = MerchantActivity(
            [activity.merchant_ids[i] for i in sel], activity.days[sel], activity.counts[sel],
            activity.frauds[sel],
        )
        pending.append(
            await p.app.producer.send(topic, None, dumps(piece.to_wire()), int(part), None, None)
        )
    return pending


