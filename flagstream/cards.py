"""Card numbers never leave flagstream: one rule finds them, in text, in JSON and in raw bytes.

The rule: a *card-number-like run* is 13 or more digits in a row, where up to three
separator characters (space, tab, ``-``, ``.``, ``/``, ``_``, mixed) may stand between
two digits, and a digit may also be written as a JSON escape (``\\u0034``) and a
separator as one (``\\u0020``, ``\\u002d``, ``\\/`` ...), with any number of backslashes
(a repr doubles them). Digits are any Unicode
decimal digits (a full-width ``４`` reads as a 4). Every such run is masked wherever
flagstream writes text: dead letters (original, detail, key), review records, logs.
Masking does not check Luhn: a false mask in a log costs nothing, a missed card costs a
breach.

Identifiers are refused rather than masked (a masked id would merge two accounts):
:func:`card_numbers` finds the runs that *are* card numbers (13–19 digits, Luhn-valid,
any span of whole separator-delimited groups), and the schema rejects a record whose
ids carry one (reason ``card_number_in_field``).

>>> mask_card_numbers({"note": "card 4111.1111/1111-1111 declined", "amount": 12.5,
...                    "pan": 4111111111111111, "event_time_ms": 1522540800000})
{'note': 'card ****1111 declined', 'amount': 12.5, 'pan': '****1111', 'event_time_ms': 1522540800000}
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any

_DIGIT = r"(?:\d|\\+u003[0-9])"  # (escapes escaped again, as in a repr, count too)
_SEPARATOR = r"(?:[ \t\u00a0./_-]|\\+u00(?:20|09|2[dDeEfF]|5[fF])|\\+[/t])"
#: One card-number-like run: 13+ digits with at most three separators between two digits.
RUN = re.compile(rf"(?<!\d)(?:{_DIGIT}{_SEPARATOR}{{0,3}}){{12,}}{_DIGIT}")
#: Plain ASCII digits and separators, all made one character: a run needs 13 of them in a row.
_RUN_CHARACTERS = str.maketrans(dict.fromkeys("0123456789 \t./_-", "\0"))
_ESCAPED_DIGIT = re.compile(r"\\+u003([0-9])")
_GROUP_BREAK = re.compile(_SEPARATOR + "+")
_TIME_KEYS = ("_ms", "_s", "time", "timestamp", "_at")
MASKED_BYTES = b"****MASKED****"


def _digits(run: str) -> str:
    return "".join(ch for ch in _ESCAPED_DIGIT.sub(r"\1", run) if ch.isdecimal())


def _mask_match(match: re.Match[str]) -> str:
    return "****" + _digits(match.group(0))[-4:]


def luhn_ok(digits: str) -> bool:
    """Whether a string of decimal digits passes the Luhn check (as every card number does).

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_numbers(text: str) -> list[str]:
    """The card numbers in ``text``: inside each card-number-like run, every span of whole
    groups (a group is what separators delimit) with 13–19 digits that passes Luhn.

    >>> card_numbers("acct 4111 1111 1111 1111 0000"), card_numbers("t-20180401-0000001")
    (['4111111111111111'], [])
    """
    found = []
    for match in RUN.finditer(text):
        groups = [_digits(g) for g in _GROUP_BREAK.split(match.group(0))]
        for first in range(len(groups)):
            digits = ""
            for group in groups[first:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_ok(digits):
                    found.append(digits)
    return found


def may_carry_card_number(text: str) -> bool:
    """False only when ``text`` holds no card-number-like run; fast (no regex) for ASCII
    text without backslashes, so a whole batch's ids can be checked at once for almost nothing.

    >>> may_carry_card_number("t-000000001\\nc-42"), may_carry_card_number("4111 1111 1111 1111")
    (False, True)
    """
    if "\\" in text or not text.isascii():
        return RUN.search(text) is not None
    return "\0" * 13 in text.translate(_RUN_CHARACTERS)


def mask_text(text: str) -> str:
    """Mask every card-number-like run in one string (keeping its last four digits).

    >>> mask_text("t-000001"), mask_text("5500-0000-0000-0004"), mask_text("4111.1111 1111/1111")
    ('t-000001', '****0004', '****1111')
    >>> mask_text(r"pan \\u0034\\u0031\\u0031\\u00311111111111111 ok")
    'pan ****1111 ok'
    """
    return RUN.sub(_mask_match, text)


def mask_card_numbers(value: Any, key: str = "") -> Any:
    """A copy of ``value`` (JSON-like) with every card-number-like value masked: strings
    (and keys) by :func:`mask_text`, integers of 13 or more digits unless in a time field
    (epoch milliseconds are 13 digits long). Iterative: any nesting depth is fine.

    >>> mask_card_numbers([{"4111111111111111": [5500000000000004, "ok"]}])
    [{'****1111': ['****0004', 'ok']}]
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, str, Any, Any]] = [(value, key, root, 0)]
    while stack:
        node, name, parent, slot = stack.pop()
        if isinstance(node, str):
            parent[slot] = mask_text(node)
        elif isinstance(node, bool) or not isinstance(node, int | dict | list | tuple):
            parent[slot] = node
        elif isinstance(node, int):
            long = 13 <= len(str(abs(node)))
            parent[slot] = "****" + str(abs(node))[-4:] if long and not name.lower().endswith(
                _TIME_KEYS) else node
        elif isinstance(node, dict):
            copy: dict[str, Any] = {}
            parent[slot] = copy
            for k, v in node.items():
                masked = mask_text(str(k))
                copy[masked] = None
                stack.append((v, str(k), copy, masked))
        else:
            items: list[Any] = [None] * len(node)
            parent[slot] = items
            stack.extend((v, name, items, i) for i, v in enumerate(node))
    return root[0]


def mask_bytes(raw: bytes) -> bytes:
    """Replace card-number-like runs in raw bytes (JSON escapes included), so dead letters
    never carry a card number, whatever encoding the producer chose.

    >>> mask_bytes(b'{"pan": "4111 1111 1111 1111", "amount": 12}')
    b'{"pan": "****MASKED****", "amount": 12}'
    >>> mask_bytes(b'{"pan": "\\\\u00344111.1111/1111\\\\u002d111"}')
    b'{"pan": "****MASKED****"}'
    """
    text = raw.decode("utf-8", errors="surrogateescape")
    masked = RUN.sub("****MASKED****", text)
    return raw if masked == text else masked.encode("utf-8", errors="surrogateescape")


class MaskingFilter(logging.Filter):
    """A logging filter that masks card-number-like runs in a record's message (its
    arguments formatted in first), its exception text and its stack text; it never drops
    a record.

    :func:`install_log_masking` applies it to every record as the record is made, whatever
    handlers a framework installs later; it can also be attached to a handler as usual.

    >>> record = logging.LogRecord("x", logging.INFO, __file__, 1, "card %s", ("4111 1111 1111 1111",), None)
    >>> MaskingFilter().filter(record), record.getMessage()
    (True, 'card ****1111')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: keep both, masked
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = mask_text(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None  # (so no formatter renders the raw exception again)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def _masked_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    sys.stderr.write(mask_text("".join(traceback.format_exception(kind, value, tb))))


def install_log_masking() -> None:
    """Mask every log record this process makes from now on (see :class:`MaskingFilter`),
    and the traceback of an exception that ends the process (written to stderr, the log).
    Called by the ``flagstream`` command before anything logs; calling it again does nothing.

    >>> before = logging.getLogRecordFactory()
    >>> install_log_masking(); install_log_masking()
    >>> make = logging.getLogRecordFactory()
    >>> make("x", logging.INFO, "f.py", 1, "pan %s", ("4111111111111111",), None).getMessage()
    'pan ****1111'
    >>> logging.setLogRecordFactory(before); sys.excepthook = sys.__excepthook__
    """
    make = logging.getLogRecordFactory()
    if getattr(make, "masks_card_numbers", False):
        return
    masking = MaskingFilter()

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        masking.filter(record)
        return record

    masked_record.masks_card_numbers = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)
    sys.excepthook = _masked_excepthook
