"""The policy's trailing day of granted reviews: bounded, O(1) per step, close to exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from flagstream.scoring.operating_point import OperatingPoint
from flagstream.scoring.review_grants import ReviewGrants

GRANTS = st.lists(st.tuples(st.floats(0, 500), st.integers(0, 5), st.integers(1, 50)), max_size=60)


@given(grants=GRANTS, cut=st.floats(0, 30_000))
def test_the_day_kept_errs_by_at_most_one_slot_on_the_side_of_more_reviews(grants, cut):
    """Against one entry per grant (what it replaces): every grant at or after the cut is
    counted, and of those before it only the ones in the cut's own slot."""
    book, at, entries = ReviewGrants(slot_s=60.0), 0.0, []
    for gap, reviews, decisions in grants:
        at += gap
        book.add(at, reviews, decisions)
        entries.append((at, reviews, decisions))
    book.trim(cut)
    kept = [e for e in entries if e[0] >= cut]
    near = [e for e in entries if cut - 60.0 <= e[0] < cut]
    assert sum(r for _, r, _ in kept) <= book.reviews <= sum(r for _, r, _ in kept + near)
    assert sum(n for _, _, n in kept) <= book.decisions <= sum(n for _, _, n in kept + near)
    assert book.reviews == sum(s[3] for s in book.slots) and book.decisions == sum(s[4] for s in book.slots)
    if kept:
        assert book.first_s is not None and book.first_s <= kept[0][0]


def test_a_real_time_worker_keeps_a_day_of_grants_in_bounded_slots():
    """A worker deciding in real event time, 100 steps a second for a day and a half: what
    the policy keeps stays at a day of minute slots (it was one entry per step, millions
    after a day, summed at every step)."""
    policy = OperatingPoint(capacity_per_day=300.0)
    rng = np.random.default_rng(0)
    start = 1_522_540_800.0
    for hour in range(25):  # a day of traffic heard back: a rate to earn room by
        policy.observe_traffic(rng.uniform(0, 1, 1000), np.zeros(1000, bool), start + hour * 3600)
    now = start + 25 * 3600
    for second in range(0, 36 * 3600, 5):  # (one step per 5 s of event time: the test's pace)
        policy.routes(rng.uniform(0, 1, 20), np.full(20, (now + second) * 1000.0))
    assert len(policy.granted) <= 24 * 60 + 1
    assert policy.granted.decisions <= 20 * (24 * 3600 / 5 + 60 / 5)


STEPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.floats(0, 500), st.integers(0, 5), st.integers(1, 50)),
    st.tuples(st.just("trim"), st.floats(0, 3_000), st.just(0), st.just(0))), max_size=30)


def replay(book: ReviewGrants, steps, at: float) -> float:
    for kind, gap, reviews, decisions in steps:
        at += gap
        if kind == "add":
            book.add(at, reviews, decisions)
        else:
            book.trim(at - gap)  # (trims what is older than a moment ago)
    return at


@given(before=STEPS, attempt=STEPS, after=STEPS)
def test_a_failed_attempt_rolled_back_leaves_the_grants_as_if_it_never_ran(before, attempt, after):
    """What a batch that fails part-way granted (and trimmed) is undone: the book then goes
    on exactly as one that never saw the attempt (a committed attempt is kept)."""
    tried, clean = ReviewGrants(slot_s=60.0), ReviewGrants(slot_s=60.0)
    at = replay(tried, before, 0.0)
    replay(clean, before, 0.0)
    mark = tried.checkpoint()
    replay(tried, attempt, at)
    tried.rollback(mark)
    for book in (tried, clean):
        replay(book, after, at)
    assert list(tried.slots) == list(clean.slots)
    assert (tried.reviews, tried.decisions) == (clean.reviews, clean.decisions)
    kept = ReviewGrants(slot_s=60.0)
    replay(kept, before, 0.0)
    mark = kept.checkpoint()
    end = replay(kept, attempt, at)
    kept.commit()
    replay(kept, after, end)
    assert kept.reviews == sum(s[3] for s in kept.slots) and kept._trimmed is None
