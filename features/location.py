"""Distance from the card's usual area, from the account row's area fields.

A transaction's location is where it took place (the merchant's coordinates), when the
record carries them. The card's usual area is the centre of its earlier locations
(``AREA_X``, ``AREA_Y``: the mean of the first ``AREA_MEMORY``, then a moving mean); a card
with no located transaction yet has its holder's address instead (the customer's
coordinates), when the record carries those. The feature is the straight-line distance
from the location to that centre, in the coordinates' own unit (project latitude and
longitude to a plane first), and 0 when either is unknown: no location scores as "usual".

:func:`card_distance` is inlined into :func:`flagstream.features.kernels.update_accounts`;
``ReferenceAccounts`` in :mod:`flagstream.features.reference` computes the same from the
card's whole list of locations. Three floats per account, whatever its history.

>>> from flagstream.features.layout import AREA_COUNT, AREA_X, AREA_Y, new_account_row
>>> nan = float("nan")
>>> row = new_account_row()
>>> card_distance(row, 3.0, 4.0, 0.0, 0.0)   # first location: from the holder's address
5.0
>>> card_distance(row, 3.0, 8.0, nan, nan)   # then from the centre of (3, 4)
4.0
>>> float(row[AREA_COUNT]), float(row[AREA_X]), float(row[AREA_Y])
(2.0, 3.0, 6.0)
>>> card_distance(row, nan, nan, 0.0, 0.0)   # no location: 0, and the area stays put
0.0
"""

from __future__ import annotations

import math

from numba import njit

from flagstream.features.layout import AREA_COUNT, AREA_MEMORY, AREA_X, AREA_Y


@njit(inline="always")
def area_step(n, centre_x, centre_y, x, y, home_x, home_y):
    """One location against an area of ``n`` located transactions centred at
    ``(centre_x, centre_y)``: ``(distance, n, centre_x, centre_y)`` after it joins. The
    distance is from the centre (from the holder's ``(home_x, home_y)`` while ``n`` is 0),
    0 when unknown. Absent coordinates are NaN (a pair is used whole or not at all). Plain
    Python as ``area_step.py_func`` (the bench's per-event agent calls it so).

    >>> area_step.py_func(0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0)
    (5.0, 1.0, 3.0, 4.0)
    """
    if math.isnan(x) or math.isnan(y):
        return 0.0, n, centre_x, centre_y
    if n > 0:
        dx, dy = x - centre_x, y - centre_y
    elif not (math.isnan(home_x) or math.isnan(home_y)):
        dx, dy = x - home_x, y - home_y
    else:
        dx, dy = 0.0, 0.0
    # (a square root of a sum, not math.hypot: Numba's and Python's hypot can differ in the
    # last bit, and the bench's per-event agent must give the same values; coordinates are
    # within ±1e6, so the squares cannot overflow)
    distance = math.sqrt(dx * dx + dy * dy)
    n += 1.0
    step = 1.0 / min(n, AREA_MEMORY)
    return distance, n, centre_x + (x - centre_x) * step, centre_y + (y - centre_y) * step


@njit(inline="always")
def card_distance(row, x, y, home_x, home_y):
    """:func:`area_step` on the account row's area fields, which it updates; returns the
    distance."""
    distance, n, centre_x, centre_y = area_step(
        row[AREA_COUNT], row[AREA_X], row[AREA_Y], x, y, home_x, home_y)
    row[AREA_COUNT] = n
    row[AREA_X] = centre_x
    row[AREA_Y] = centre_y
    return distance
