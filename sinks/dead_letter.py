"""Dead-letter records: the original bytes, why they were refused, and where they came from.

>>> rec = dead_letter(b'{"amount": -1}', "invalid_amount", "amount must be > 0", "transactions", 2, 17)
>>> rec["reason"], rec["source"], rec["original"]
('invalid_amount', {'topic': 'transactions', 'partition': 2, 'offset': 17}, '{"amount": -1}')
>>> import base64; base64.b64decode(rec["original_b64"])
b'{"amount": -1}'
"""

from __future__ import annotations

import base64
import time

from flagstream.cards import mask_bytes


def dead_letter(
    original: bytes | None, reason: str, detail: str, topic: str, partition: int, offset: int
) -> dict:
    """A JSON-ready dead letter. Card-number-like digit runs are masked first."""
    raw = mask_bytes(original) if original else b""
    return {
        "reason": reason,
        "detail": detail,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "original": raw.decode("utf-8", errors="replace"),
        "original_b64": base64.b64encode(raw).decode(),
        "rejected_at_ms": int(time.time() * 1000),
    }


def headers(reason: str) -> list[tuple[str, bytes]]:
    """Kafka headers that let tools filter dead letters without decoding them."""
    return [("flagstream.reason", reason.encode())]
