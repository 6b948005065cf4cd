"""Epoch milliseconds of many ISO-8601 timestamps at once (numpy over the text's bytes).

:func:`iso_millis` reads the shapes producers write, ``YYYY-MM-DDTHH:MM:SSZ`` and
``YYYY-MM-DDTHH:MM:SS+HH:MM`` (or ``-HH:MM``), as one ``uint8`` matrix per shape: no
Python call per timestamp. It is conservative: a text of any other shape (fractions of a
second, a lower-case ``t``, a space, non-ASCII digits ...) or an impossible date or time is
left to the per-record reference, :func:`flagstream.streams.schema.parse_timestamp_ms`,
and whatever it does accept has the value the reference gives (``tests/test_decode.py``
compares them on random text).

>>> millis, ok = iso_millis(["2018-04-01T00:07:56Z", "2018-04-01T02:07:56+02:00",
...                          "2018-02-30T00:00:00Z", "2018-04-01 00:07:56Z"])
>>> millis[ok].tolist(), ok.tolist()
([1522541276000, 1522541276000], [True, True, False, False])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Byte positions of the digits of ``YYYY-MM-DDTHH:MM:SS`` and of the punctuation between them.
_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_PUNCTUATION = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":"}
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
ZULU_LENGTH, OFFSET_LENGTH = 20, 25


def _pairs(d: np.ndarray, first: int) -> np.ndarray:
    return d[:, first] * 10 + d[:, first + 1]


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's ``days_from_civil``)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _matrix_millis(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Millis and validity of a ``(k, 20)`` or ``(k, 25)`` matrix of timestamp bytes."""
    ok = np.ones(len(rows), bool)
    for position, char in _PUNCTUATION.items():
        ok &= rows[:, position] == char[0]
    d = rows[:, _DIGITS].astype(np.int64) - 48
    ok &= ((d >= 0) & (d <= 9)).all(axis=1)
    year = _pairs(d, 0) * 100 + _pairs(d, 2)
    month, day = _pairs(d, 4), _pairs(d, 6)
    hour, minute, second = _pairs(d, 8), _pairs(d, 10), _pairs(d, 12)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_ok = (month >= 1) & (month <= 12)
    days_in_month = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    ok &= (year >= 1) & month_ok & (day >= 1) & (day <= days_in_month)
    ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
    if rows.shape[1] == ZULU_LENGTH:
        ok &= rows[:, 19] == ord("Z")
    else:
        sign = np.where(rows[:, 19] == ord("-"), -1, 1)
        ok &= ((rows[:, 19] == ord("+")) | (rows[:, 19] == ord("-"))) & (rows[:, 22] == ord(":"))
        z = rows[:, [20, 21, 23, 24]].astype(np.int64) - 48
        ok &= ((z >= 0) & (z <= 9)).all(axis=1)
        off_hours, off_minutes = z[:, 0] * 10 + z[:, 1], z[:, 2] * 10 + z[:, 3]
        ok &= (off_hours <= 23) & (off_minutes <= 59)
        seconds = seconds - sign * (off_hours * 3_600 + off_minutes * 60)
    return np.where(ok, seconds * 1_000, 0), ok


def iso_millis(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(millis, ok)``: epoch milliseconds of each text (int64) and whether it was read;
    where ``ok`` is False the text is for the reference parser and ``millis`` is 0."""
    n = len(texts)
    millis, ok = np.zeros(n, np.int64), np.zeros(n, bool)
    if n == 0:
        return millis, ok
    lengths = np.fromiter(map(len, texts), np.int64, n)
    for length in (ZULU_LENGTH, OFFSET_LENGTH):
        at = np.flatnonzero(lengths == length)
        if len(at) == 0:
            continue
        picked = texts if len(at) == n else [texts[i] for i in at.tolist()]
        joined = "".join(picked)
        if not joined.isascii():  # (a non-ASCII text stays with the reference)
            keep = np.fromiter(map(str.isascii, picked), bool, len(picked))
            at = at[keep]
            joined = "".join(t for t, k in zip(picked, keep.tolist(), strict=True) if k)
        rows = np.frombuffer(joined.encode("ascii"), np.uint8).reshape(len(at), length)
        millis[at], ok[at] = _matrix_millis(rows)
    return millis, ok
