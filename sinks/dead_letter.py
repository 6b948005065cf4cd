"""Dead letters: the original record (masked, capped), why it was refused, and where it came from.

An envelope is bounded whatever the record: at most :data:`MAX_ORIGINAL` bytes of the
original are kept (with its full length and the SHA-256 of the masked bytes), and
the detail sentence is capped, so a dead letter always fits a producer request.
Card-number-like digit runs are masked in the original, the detail and the key.

>>> rec = dead_letter(b'{"pan": "4111 1111 1111 1111"}', "invalid_json", "bad", "tx", 0, 7)
>>> rec["original"], rec["source"]["offset"], rec["original_length"]
('{"pan": "****MASKED****"}', 7, 30)
>>> import base64; base64.b64decode(rec["original_b64"])
b'{"pan": "****MASKED****"}'
>>> big = dead_letter(b"x" * 5_000_000, "too_large", "record is 5000000 bytes", "tx", 0, 8)
>>> len(big["original"]), big["original_length"], big["original_truncated"]
(16384, 5000000, True)
"""

from __future__ import annotations

import base64
import hashlib
import time

from flagstream.cards import mask_bytes, mask_text

#: Bytes of the original record kept in a dead letter.
MAX_ORIGINAL = 16_384
#: Characters of the detail sentence kept.
MAX_DETAIL = 500


def dead_letter(
    original: bytes | None, reason: str, detail: str, topic: str, partition: int, offset: int
) -> dict:
    """A JSON-ready dead letter (see the module docstring for its bounds)."""
    raw = mask_bytes(original) if original else b""
    kept = raw[:MAX_ORIGINAL]
    return {
        "reason": reason,
        "detail": mask_text(detail[:MAX_DETAIL]),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "original": kept.decode("utf-8", errors="replace"),
        "original_b64": base64.b64encode(kept).decode(),
        "original_length": len(original) if original else 0,
        "original_truncated": len(raw) > MAX_ORIGINAL,
        "original_sha256": hashlib.sha256(raw).hexdigest(),
        "rejected_at_ms": int(time.time() * 1000),
    }


def dead_letter_key(key: bytes | None) -> bytes | None:
    """A record key fit for a dead letter: masked and capped like the original."""
    if key is None:
        return None
    return mask_bytes(key[:256])


def headers(reason: str) -> list[tuple[str, bytes]]:
    """Kafka headers that let tools filter dead letters without decoding them."""
    return [("flagstream.reason", reason.encode())]
