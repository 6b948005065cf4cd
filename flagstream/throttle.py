"""A wrong-credential throttle per client address, for every door that takes a secret.

After ``max_failures`` wrong credentials within ``window`` seconds an address is refused
every credential, right or wrong, until the oldest of those failures is ``window`` old:
guessing a key costs time whatever the door (the review page's tokens, the scoring API's
key). Memory is bounded: at most ``max_failures`` times per address, and the table is
cleared when it holds more than ``max_addresses`` addresses (an attacker with that many
addresses is not slowed by a per-address table anyway).

>>> now = [0.0]
>>> throttle = FailureThrottle(max_failures=2, window=60.0, clock=lambda: now[0])
>>> throttle.failed("10.0.0.1"); throttle.retry_after("10.0.0.1")
0.0
>>> throttle.failed("10.0.0.1"); throttle.retry_after("10.0.0.1"), throttle.throttled("10.0.0.2")
(60.0, False)
>>> now[0] = 61.0
>>> throttle.throttled("10.0.0.1")
False
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class FailureThrottle:
    """Counts wrong credentials per address and says how long an address must wait."""

    def __init__(self, max_failures: int = 10, window: float = 300.0,
                 clock: Callable[[], float] = time.time, max_addresses: int = 10_000) -> None:
        if max_failures < 1 or window <= 0:
            raise ValueError("max_failures must be >= 1 and window positive")
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def throttled(self, address: str) -> bool:
        """Has ``address`` sent too many wrong credentials lately?"""
        return self.retry_after(address) > 0

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: now)."""
        failures = self._failures.get(address)
        if not failures:
            return 0.0
        now = self.clock()
        while failures and failures[0] < now - self.window:
            failures.popleft()
        if len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[0] + self.window - now)

    def failed(self, address: str) -> None:
        """Count a wrong credential from ``address``."""
        if len(self._failures) > self.max_addresses:
            self._failures.clear()
        self._failures.setdefault(address, deque(maxlen=self.max_failures)).append(self.clock())
