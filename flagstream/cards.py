"""Card numbers never reach a reviewer's screen: mask anything that looks like one.

A digit run of 13–19 digits (spaces or dashes allowed between digits) inside any
string is replaced by asterisks and its last four digits. Integers of that length
are masked too, except in time fields (epoch milliseconds are 13 digits long).

>>> mask_card_numbers({"note": "card 4111 1111 1111 1111 declined", "amount": 12.5,
...                    "pan": 4111111111111111, "event_time_ms": 1522540800000})
{'note': 'card ****1111 declined', 'amount': 12.5, 'pan': '****1111', 'event_time_ms': 1522540800000}
"""

from __future__ import annotations

import re
from typing import Any

_PAN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PAN_BYTES = re.compile(rb"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_TIME_KEYS = ("_ms", "_s", "time", "timestamp", "_at")


def _mask_match(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "****" + digits[-4:]


def mask_text(text: str) -> str:
    """Mask card-number-like digit runs in one string.

    >>> mask_text("t-000001"), mask_text("5500-0000-0000-0004")
    ('t-000001', '****0004')
    """
    return _PAN.sub(_mask_match, text)


def mask_card_numbers(value: Any, key: str = "") -> Any:
    """A copy of ``value`` (JSON-like) with every card-number-like value masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if 13 <= len(str(abs(value))) <= 19 and not key.lower().endswith(_TIME_KEYS):
            return "****" + str(abs(value))[-4:]
        return value
    if isinstance(value, dict):
        return {mask_text(str(k)): mask_card_numbers(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_card_numbers(v, key) for v in value]
    return value


def mask_bytes(raw: bytes) -> bytes:
    """Replace digit runs that look like card numbers, so dead letters never carry a PAN.

    >>> mask_bytes(b'{"pan": "4111 1111 1111 1111", "amount": 12}')
    b'{"pan": "****MASKED****", "amount": 12}'
    """
    return _PAN_BYTES.sub(b"****MASKED****", raw)
