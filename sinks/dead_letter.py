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
>>> len(big["original"]), len(big["original_b64"]), big["original_length"], big["original_truncated"]
(4096, 21848, 5000000, True)
"""

from __future__ import annotations

import base64
import hashlib
import time

from flagstream.cards import mask_bytes, mask_text

#: Bytes of the original record kept in a dead letter (base64), and of them, how many are
#: also shown as text (escaped control bytes take six characters each in JSON).
MAX_ORIGINAL = 16_384
MAX_ORIGINAL_TEXT = 4_096
#: Characters of the detail sentence kept.
MAX_DETAIL = 500


def dead_letter(
    original: bytes | None, reason: str, detail: str, topic: str, partition: int, offset: int
) -> dict:
    """A JSON-ready dead letter (see the module docstring for its bounds)."""
    original = original or b""
    kept = mask_bytes(original[:MAX_ORIGINAL])  # cut first: a cut can never leave a card number
    return {
        "reason": reason,
        "detail": mask_text(detail[:MAX_DETAIL]),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "original": mask_text(kept[:MAX_ORIGINAL_TEXT].decode("utf-8", errors="replace")),
        "original_b64": base64.b64encode(kept).decode(),
        "original_length": len(original),
        "original_truncated": len(original) > MAX_ORIGINAL,
        "original_sha256": hashlib.sha256(mask_bytes(original)).hexdigest(),
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
