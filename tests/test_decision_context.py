"""``copy_context`` (streams/core.py) against ``copy_context_reference``, the per-record rule it
replaced: a context field is copied onto a decision only when it is a string of its allowed
shape, in ``CONTEXT_SHAPES`` order, so the decision's bytes are the same."""

from __future__ import annotations

import hostile_corpus as hc
import orjson
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import FUZZ, TEXT

from flagstream.codec import dumps
from flagstream.streams.core import CONTEXT_SHAPES, ScoringCore, copy_context, copy_context_reference

CONTEXT_VALUE = st.one_of(
    st.sampled_from(["USD", "EUR", "usd", "card", "web_shop", "FR", "api", "API", "US\n", "USDX", hc.PAN]),
    TEXT, st.none(), st.integers(), st.lists(st.just("USD"), max_size=2),
    st.dictionaries(TEXT, st.none(), max_size=2),
)
RECORD = st.dictionaries(st.sampled_from([*CONTEXT_SHAPES, "amount"]), CONTEXT_VALUE, max_size=5)


@FUZZ
@given(records=st.lists(RECORD, max_size=30))
def test_copy_context_gives_the_per_record_rule_s_bytes(records):
    batch = [{"transaction_id": f"t-{i}"} for i in range(len(records))]
    reference = [dict(d) for d in batch]
    copy_context(batch, records)
    copy_context_reference(reference, records)
    assert [dumps(d) for d in batch] == [dumps(d) for d in reference]


def test_decisions_carry_only_well_shaped_context():
    base = {"account_id": "c-1", "merchant_id": "m-1", "amount": 5.0, "timestamp": 1522540800000}
    contexts = [{"currency": "USD", "channel": "card", "country": "FR"}, {"currency": "usd", "channel": 7},
                {"country": ["FR"], "origin": "api"}]
    values = [orjson.dumps({**base, "transaction_id": f"t-{i}", **c}) for i, c in enumerate(contexts)]
    out = ScoringCore().process(values)
    assert [{k: d[k] for k in CONTEXT_SHAPES if k in d} for d in out.decisions] == [
        {"currency": "USD", "channel": "card", "country": "FR"}, {}, {"origin": "api"}]
