"""Distance from the card's usual area: the Numba kernel against the pure-Python reference
(Hypothesis), coordinates read from hostile records, rows of the earlier layout adopted, and
what the feature says about a purchase far from home."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import START

from flagstream.codec import dumps
from flagstream.features.arena import Arena
from flagstream.features.kernels import update_accounts
from flagstream.features.layout import (
    AREA,
    AREA_COUNT,
    AREA_MEMORY,
    DISTANCE,
    EARLIER_ACCOUNT_WIDTHS,
    FEATURE_NAMES,
    LAST_OFFSET,
    MAX_COORDINATE,
    N_FEATURES,
    TOTAL_COUNT,
    new_account_row,
)
from flagstream.features.reference import ReferenceAccounts
from flagstream.streams.coordinates import COORDINATE_FIELDS, places_of, places_of_reference
from flagstream.streams.core import ScoringCore

NAN = math.nan
coordinates = st.floats(-1_000.0, 1_000.0, allow_nan=False)
located = st.one_of(st.just((NAN, NAN)), st.tuples(coordinates, coordinates))


def run_kernel(events):
    """Distances from the kernel for events (account, (x, y), (home x, home y))."""
    n = len(events)
    rows = np.stack([new_account_row() for _ in range(2)])
    out, status = np.zeros((n, N_FEATURES)), np.zeros(n, np.int8)
    update_accounts(
        rows, np.array([e[0] for e in events], np.int64), np.full(n, -1, np.int64),
        START + np.arange(n, dtype=np.int64) * 60_000, np.full(n, 10.0), np.arange(n, dtype=np.float64),
        np.zeros(n), np.array([[*e[1], *e[2]] for e in events]).reshape(n, 4), out, status,
    )
    return out[:, DISTANCE], rows


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), located, located), min_size=1, max_size=2 * AREA_MEMORY + 30))
def test_distance_kernel_matches_reference_over_long_histories(events):
    """Histories longer than AREA_MEMORY (the running mean turns into a moving one), with
    gaps where a record carries no location or no address."""
    distances, _ = run_kernel(events)
    ref = ReferenceAccounts()
    for i, (account, where, home) in enumerate(events):
        feats, _ = ref.apply(str(account), -1, START + i * 60_000, 10.0, float(i), 0.0, (*where, *home))
        assert math.isclose(distances[i], feats["distance_from_usual_area"], rel_tol=1e-9, abs_tol=1e-6), i


def test_a_purchase_far_from_the_usual_area_stands_out():
    home = (20.0, 30.0)
    rng = np.random.default_rng(3)
    near = [(0, (home[0] + dx, home[1] + dy), home) for dx, dy in rng.uniform(-5, 5, (80, 2))]
    far = (0, (home[0] + 50.0, home[1]), home)  # a stolen card used across the map
    distances, rows = run_kernel([*near, far, near[0]])
    assert distances[0] < 8.0  # the first purchase: from the holder's address
    assert distances[1:80].max() < 10.0
    assert distances[80] > 45.0
    assert distances[81] < 10.0  # one trip does not move the area
    assert rows[0, AREA_COUNT] == 82.0


def test_no_location_means_zero_and_leaves_the_area_alone():
    distances, rows = run_kernel([(0, (NAN, NAN), (1.0, 1.0)), (0, (5.0, 5.0), (NAN, NAN)),
                                  (0, (NAN, NAN), (NAN, NAN)), (0, (8.0, 9.0), (NAN, NAN))])
    assert distances.tolist() == [0.0, 0.0, 0.0, 5.0]  # no address yet: the first location is 0
    assert rows[0, AREA_COUNT] == 2.0


wire_value = st.one_of(
    st.none(), st.booleans(), st.integers(-10**400, 10**400), st.integers(-2_000_000, 2_000_000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5), st.lists(st.integers(), max_size=2),
    st.sampled_from([MAX_COORDINATE, -MAX_COORDINATE, MAX_COORDINATE * 1.0000001]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(COORDINATE_FIELDS), wire_value), max_size=12))
def test_coordinates_read_in_columns_match_the_one_by_one_reading(records):
    fast, reference = places_of(records), places_of_reference(records)
    assert fast.shape == (len(records), 4)
    np.testing.assert_array_equal(fast, reference)
    finite = fast[~np.isnan(fast)]
    assert (np.abs(finite) <= MAX_COORDINATE).all()
    for row in fast:  # a pair is whole or absent
        assert np.isnan(row[0]) == np.isnan(row[1]) and np.isnan(row[2]) == np.isnan(row[3])


def test_a_bad_coordinate_costs_no_decision():
    """Coordinates are optional: a record with hostile ones is scored, its location unknown."""
    def record(i: int, **extra) -> bytes:
        return dumps({"transaction_id": f"t-{i}", "account_id": "c-1", "merchant_id": "m-1",
                      "amount": 10.0, "timestamp": START + i * 1000, **extra})

    values = [record(0, merchant_x=1.0, merchant_y=1.0, customer_x=0.0, customer_y=0.0),
              record(1, merchant_x="far", merchant_y=1.0),
              record(2, merchant_x=1e300, merchant_y=1e300),
              record(3, merchant_x=4.0, merchant_y=5.0)]
    outcome = ScoringCore().process(values)
    assert outcome.rejections == [] and len(outcome.decisions) == 4
    distance = [d["features"][DISTANCE] for d in outcome.decisions]
    assert distance == [round(math.sqrt(2.0), 6), 0.0, 0.0, 5.0]
    assert FEATURE_NAMES[DISTANCE] == "distance_from_usual_area"


def test_rows_stored_before_locations_are_adopted_with_no_area():
    rows = np.stack([new_account_row()])
    rows[0, LAST_OFFSET], rows[0, TOTAL_COUNT] = 41.0, 7.0
    old = rows[0, :AREA].tobytes()
    assert AREA in EARLIER_ACCOUNT_WIDTHS
    arena = Arena(new_account_row, loader=lambda key: old, prefix_widths=EARLIER_ACCOUNT_WIDTHS)
    row = arena.row("c-1")
    assert arena.refused == 0 and row[LAST_OFFSET] == 41.0 and row[TOTAL_COUNT] == 7.0
    np.testing.assert_array_equal(row[AREA:], new_account_row()[AREA:])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.just(0), located, located), min_size=1, max_size=AREA_MEMORY + 20))
def test_the_naive_bench_agent_computes_the_same_distance(events):
    """The bench's per-event Faust agent is held to the same decisions: same distances."""
    from flagstream.perf.bench.naive_faust import NaiveAccount

    distances, _ = run_kernel(events)
    account = NaiveAccount()
    naive = [account.apply(START + i * 60_000, 10.0, "m", (*where, *home))[DISTANCE]
             for i, (_, where, home) in enumerate(events)]
    assert naive == distances.tolist()
