"""Where each transaction took place, read from optional wire fields, a batch at a time.

A transaction may carry the merchant's location (``merchant_x``, ``merchant_y``) and its
holder's address (``customer_x``, ``customer_y``), as planar coordinates in one unit. They
are optional: a record without them, or with a value that is not a finite number within
±``MAX_COORDINATE``, is still a valid transaction, scored with that pair unknown (NaN), so
a bad coordinate never costs a decision. A pair is used whole or not at all.

>>> places_of([{"merchant_x": 3, "merchant_y": 4.5, "customer_x": 1.0, "customer_y": 2.0},
...            {"merchant_x": "3", "merchant_y": 4, "customer_x": 1e300, "customer_y": 2.0},
...            {}]).tolist()
[[3.0, 4.5, 1.0, 2.0], [nan, nan, nan, nan], [nan, nan, nan, nan]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from flagstream.features.layout import MAX_COORDINATE

#: The fields read, in the order of ``places_of``'s columns: location, then address.
COORDINATE_FIELDS = ("merchant_x", "merchant_y", "customer_x", "customer_y")
_PLAIN = frozenset({float, int, type(None)})


def coordinate(value: object) -> float:
    """A wire value as a coordinate, NaN unless it is a finite number within range.

    >>> coordinate(12), coordinate(True), coordinate(float("inf")), coordinate(2e6)
    (12.0, nan, nan, nan)
    """
    if type(value) not in (float, int):  # (not bool, not a subclass of either)
        return math.nan
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # (an integer beyond a float)
        return math.nan
    return number if abs(number) <= MAX_COORDINATE else math.nan  # (NaN > anything: False)


def places_of_reference(records: Sequence[dict]) -> np.ndarray:
    """``places_of``, one value at a time: the definition the fast path is held to (and
    the fast path itself for a handful of records)."""
    rows = []
    for r in records:
        row = [coordinate(r.get(name)) for name in COORDINATE_FIELDS]
        for first in (0, 2):  # a pair with one coordinate unknown is unknown whole
            if math.isnan(row[first]) or math.isnan(row[first + 1]):
                row[first] = row[first + 1] = math.nan
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(records), len(COORDINATE_FIELDS))


#: Up to this many records, reading value by value in Python beats the column calls.
FEW = 4


def places_of(records: Sequence[dict]) -> np.ndarray:
    """Shape ``(len(records), 4)``: each record's ``COORDINATE_FIELDS``, NaN where absent or
    not a coordinate. A column of plain numbers and gaps converts in one numpy call; any
    other column goes value by value (and up to :data:`FEW` records, every value does)."""
    if len(records) <= FEW:
        return places_of_reference(records)
    out = np.empty((len(records), len(COORDINATE_FIELDS)), dtype=np.float64)
    for k, name in enumerate(COORDINATE_FIELDS):
        values = [r.get(name) for r in records]
        if set(map(type, values)) <= _PLAIN:
            try:
                column = np.array(values, dtype=np.float64)  # (None becomes NaN)
            except OverflowError:
                column = np.array(list(map(coordinate, values)), dtype=np.float64)
            with np.errstate(invalid="ignore"):
                column[~(np.abs(column) <= MAX_COORDINATE)] = np.nan
            out[:, k] = column
        else:
            out[:, k] = list(map(coordinate, values))
    _pairs_whole(out)
    return out


def _pairs_whole(out: np.ndarray) -> None:
    """A pair with one coordinate unknown is unknown whole."""
    for first in (0, 2):
        half = np.isnan(out[:, first]) | np.isnan(out[:, first + 1])
        out[half, first : first + 2] = np.nan
