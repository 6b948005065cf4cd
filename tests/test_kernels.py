"""Numba kernels agree with the pure-Python references on random batches (Hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import ACCOUNT_COLUMNS, START

from flagstream.features.kernels import merchant_features, update_accounts, update_merchants
from flagstream.features.layout import (
    ACCOUNT_WIDTH,
    APPLIED,
    DAY_MS,
    FEATURE_NAMES,
    MERCHANT_NOVELTY,
    N_FEATURES,
    new_account_row,
    new_merchant_row,
)
from flagstream.features.reference import ReferenceAccounts, ReferenceMerchants

events = st.lists(
    st.tuples(
        st.integers(0, 3),  # account
        st.integers(0, 45 * DAY_MS),  # time offset (random order: tests ring eviction)
        st.floats(0.01, 5_000, allow_nan=False),  # amount
        st.integers(0, 12),  # id hash: small range makes duplicates likely
        st.booleans(),  # carries an offset?
        st.integers(0, 6),  # merchant hash
        st.sampled_from([None, (3.0, 4.0), (-50.5, 20.25)]),  # location: absent or one of two
        st.sampled_from([None, (0.0, 0.0)]),  # holder's address
    ),
    max_size=60,
)


def place(event) -> tuple[float, float, float, float]:
    """(x, y, home x, home y) of a generated event, NaN where absent."""
    nan = (float("nan"),) * 2
    return (*(event[6] or nan), *(event[7] or nan))


@settings(max_examples=150, deadline=None)
@given(events, st.booleans())
def test_account_kernel_matches_reference(batch, sort_by_time):
    if sort_by_time:
        batch = sorted(batch, key=lambda e: e[1])
    n = len(batch)
    rows = np.stack([new_account_row() for _ in range(4)]) if n else np.zeros((0, ACCOUNT_WIDTH))
    if n == 0:
        return
    row_of = np.array([e[0] for e in batch], dtype=np.int64)
    ts = np.array([START + e[1] for e in batch], dtype=np.int64)
    amounts = np.array([e[2] for e in batch])
    hashes = np.array([float(e[3]) for e in batch])
    offsets = np.array([i if e[4] else -1 for i, e in enumerate(batch)], dtype=np.int64)
    # replay the first few offsets again at the end: they must be recognised
    out = np.zeros((n, N_FEATURES))
    status = np.zeros(n, np.int8)
    merchants = np.array([float(e[5]) for e in batch])
    places = np.array([place(e) for e in batch])
    update_accounts(rows, row_of, offsets, ts, amounts, hashes, merchants, places, out, status)

    ref = ReferenceAccounts()
    for i, e in enumerate(batch):
        feats, ref_status = ref.apply(
            str(e[0]), int(offsets[i]), int(ts[i]), e[2], float(e[3]), float(e[5]), place(e)
        )
        assert status[i] == ref_status, i
        if ref_status == APPLIED:
            expected = [feats[FEATURE_NAMES[c]] for c in ACCOUNT_COLUMNS]
            np.testing.assert_allclose(out[i, ACCOUNT_COLUMNS], expected, rtol=1e-9, atol=1e-9)


def test_replayed_offsets_are_not_applied_twice():
    rows = np.stack([new_account_row()])
    n = 5
    args = (
        np.zeros(n, np.int64),
        np.arange(n, dtype=np.int64),
        START + np.arange(n, dtype=np.int64) * 1000,
        np.ones(n),
        np.arange(n, dtype=np.float64),
        np.full(n, 3.0),
        np.tile([1.0, 2.0, 0.0, 0.0], (n, 1)),
    )
    out, status = np.zeros((n, N_FEATURES)), np.zeros(n, np.int8)
    update_accounts(rows, *args, out, status)
    before = rows.copy()
    update_accounts(rows, *args, out, status)
    assert (status == 1).all()
    np.testing.assert_array_equal(rows, before)


merchant_updates = st.lists(  # merchant, day, count, frauds, cards new to it
    st.tuples(st.integers(0, 2), st.integers(0, 90), st.integers(0, 5), st.integers(0, 2),
              st.integers(0, 5)),
    max_size=50,
)


@settings(max_examples=150, deadline=None)
@given(merchant_updates, st.integers(0, 80), st.integers(0, 10))
def test_merchant_kernels_match_reference(updates, query_day, delay):
    rows = np.stack([new_merchant_row() for _ in range(3)])
    ref = ReferenceMerchants()
    if updates:
        update_merchants(
            rows,
            np.array([u[0] for u in updates], np.int64),
            np.array([START // DAY_MS + u[1] for u in updates], np.int64),
            np.array([float(u[2]) for u in updates]),
            np.array([float(u[3]) for u in updates]),
            np.array([float(u[4]) for u in updates]),
        )
    for m, day, count, frauds, new in updates:
        ref.add(str(m), START // DAY_MS + day, count, frauds, new)
    ts = START + query_day * DAY_MS + 5
    out = np.zeros((3, N_FEATURES))
    merchant_features(rows, np.arange(3, dtype=np.int64), np.full(3, ts, np.int64), delay, out)
    for m in range(3):
        expected = ref.features(str(m), ts, delay)
        merchant_columns = [*range(9, 15), MERCHANT_NOVELTY, MERCHANT_NOVELTY + 1]
        got = {FEATURE_NAMES[c]: out[m, c] for c in merchant_columns}
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert abs(got[name] - value) < 1e-9, (m, name, got[name], value)


def test_the_warm_up_compiles_every_kernel_a_step_and_the_learner_call():
    """After :func:`flagstream.streams.core.warm_up` (what a worker runs before its first
    step), scoring, explaining and learning compile nothing more: no step pays for a compile
    (a kernel called with other types than the warm-up's, e.g. a read-only buffer, would)."""
    from flagstream.scoring import binned_kernel
    from flagstream.scoring.binned import BinnedLogistic
    from flagstream.scoring.handle import ModelHandle
    from flagstream.scoring.policy import FixedThreshold
    from flagstream.streams import core

    core.warm_up()
    dispatchers = [update_accounts, merchant_features, update_merchants, core._murmur2_partitions,
                   binned_kernel.score_rows, binned_kernel.contribute_rows, binned_kernel.learn_rows]
    compiled = {d: len(d.signatures) for d in dispatchers}
    assert all(compiled.values()), "every kernel is compiled by the warm-up"
    model = BinnedLogistic()
    scorer = core.ScoringCore(ModelHandle(model), FixedThreshold(0.0))  # (every one explained)
    values = [b'{"transaction_id":"t-%d","account_id":"c-%d","merchant_id":"m-%d","amount":%d.5,'
              b'"timestamp":"2018-04-01T10:%02d:00Z"}' % (i, i % 7, i % 3, i, i) for i in range(12)]
    for size in (1, 12):  # (a step of a few records, and one past the keys hashed in Python)
        out = scorer.process(values[:size], list(range(size)), 0, 1)
        scorer.merchants.apply(out.activity)
        model.learn_many(out.features, np.ones(len(out.features)))
    assert len(out.flagged) == 11  # (the first record was decided in the first step)
    assert {d: len(d.signatures) for d in dispatchers} == compiled


def test_the_kernels_carry_the_digest_of_what_they_compile_in():
    """Numba keys its disk cache on kernels.py alone: the digest of the layout and the
    inlined helpers kept there is what makes a change to them a change to kernels.py."""
    from flagstream.features import kernels

    assert kernels.compiled_in_digest() == kernels.COMPILED_IN_DIGEST, (
        "layout.py, location.py or velocity.py changed: set kernels.COMPILED_IN_DIGEST to "
        f"{kernels.compiled_in_digest()!r}")
    assert kernels.CACHED


def test_any_change_to_what_the_kernels_compile_in_changes_the_digest(tmp_path):
    import shutil
    from pathlib import Path

    from flagstream.features import kernels

    here = Path(kernels.__file__).parent
    for name in kernels.COMPILED_IN:
        shutil.copy(here / name, tmp_path / name)
    assert kernels.compiled_in_digest(tmp_path) == kernels.COMPILED_IN_DIGEST
    for name in kernels.COMPILED_IN:
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original.replace(b"=", b"= ", 1))
        assert kernels.compiled_in_digest(tmp_path) != kernels.COMPILED_IN_DIGEST, name
        (tmp_path / name).write_bytes(original)
    (tmp_path / "velocity.py").unlink()
    assert kernels.compiled_in_digest(tmp_path) == "", "unreadable: never the cache"


def test_a_second_process_reads_the_kernels_from_the_cache():
    """A worker starts without compiling them again (the first run may compile)."""
    import subprocess
    import sys

    probe = ("from flagstream.features import kernels as k; k.warm_up(); "
             "print(*(sum(f.stats.cache_hits.values()) for f in "
             "(k.update_accounts, k.merchant_features, k.update_merchants)))")
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert [int(n) for n in run.stdout.split()] == [1, 1, 1], run.stdout + run.stderr
