"""The read-back of ``scores`` without a broker: what one fetch costs once a partition's
remembered first records are at their bound (every new key then forgets the oldest)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from types import SimpleNamespace

from flagstream.streams.api_answers import AnswerBook
from flagstream.streams.config import Settings
from flagstream.streams.scores_follower import ScoresFollower, _Waiter


class Counting(ScoresFollower):
    """Counts how often the waiters of a partition are looked through."""

    looked = 0

    def _earliest_waiting(self, p: int) -> int | None:
        self.looked += 1
        return super()._earliest_waiting(p)


def test_a_fetch_past_the_bound_looks_through_the_waiters_once_not_per_record():
    """With 2,000 calls waiting on a partition, every record past the bound looked through
    all of them (287 µs a record at 5,000 waiters); the earliest time they need is the same
    for the whole fetch. The records forgotten are the same either way."""
    async def go() -> None:
        follower = Counting(Settings(), AnswerBook(), seen_per_partition=100)
        follower.covered[0], follower.positions[0] = 0, 0
        follower.seen[0] = OrderedDict((b"old-%d" % i, (None, i)) for i in range(100))
        waiters = [_Waiter(b"w-%d" % i, 0, None, 5) for i in range(2_000)]  # need records from 5 ms on
        follower.waiters[0] = waiters
        records = [SimpleNamespace(offset=k, key=b"new-%d" % k, value=b"{}", timestamp=1_000 + k)
                   for k in range(500)]
        follower._take(0, records)
        assert follower.looked == 1
        # the oldest five (times 0..4, before the calls' 5 ms) went at once; the rest were
        # kept for the calls up to twice the bound, then forgotten all the same
        seen = follower.seen[0]
        assert len(seen) == 200 and next(iter(seen)) == b"new-300"
        assert follower.covered[0] == 1_300 and follower.positions[0] == 500 and follower.warned
        for w in waiters:
            w.done.cancel()

    asyncio.run(go())
