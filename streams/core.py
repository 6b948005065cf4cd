"""The batched scoring core shared by the worker, the backtest and the benchmarks.

One call takes a batch of raw transaction values and returns everything the batch
produces: decisions, flagged records, dead letters, and the state it changed. It
does no I/O, so the Faust worker, a plain aiokafka loop and the in-process backtest
all run exactly the same code.

>>> core = ScoringCore()
>>> out = core.process([
...     b'{"transaction_id":"t-1","account_id":"c-1","merchant_id":"m-1",'
...     b'"amount":10.0,"timestamp":"2018-04-01T10:00:00Z"}',
...     b'{"transaction_id":"t-1","account_id":"c-1","merchant_id":"m-1",'
...     b'"amount":10.0,"timestamp":"2018-04-01T10:00:00Z"}',
... ], offsets=[0, 1])
>>> [d["transaction_id"] for d in out.decisions], [r.reason for r in out.rejections]
(['t-1'], ['duplicate_transaction'])
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from flagstream.errors import Rejection
from flagstream.features.arena import Arena
from flagstream.features.kernels import update_accounts
from flagstream.features.kernels import warm_up as warm_up_features
from flagstream.features.layout import (
    ALREADY_APPLIED,
    APPLIED,
    DUPLICATE,
    FEATURE_NAMES,
    IS_NEW_MERCHANT,
    N_FEATURES,
    new_account_row,
)
from flagstream.features.merchants import MerchantActivity, MerchantState, count_activity
from flagstream.scoring.binned_kernel import warm_up as warm_up_scoring
from flagstream.scoring.handle import ModelHandle
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.policy import DecisionPolicy, FixedThreshold, UndoablePolicy
from flagstream.scoring.reasons import explain_rows
from flagstream.streams.coordinates import places_of
from flagstream.streams.schema import MAX_LEAD_MS, refuse_future, validate_transactions
from flagstream.streams.topics import partition_for

#: Context fields copied from a transaction onto its decision, each only when it is a string
#: of its allowed shape (a currency code, a country code, a channel token); a value of any
#: other type or shape is dropped (the transaction is still scored): no card number, no
#: blob, no markup reaches a decision or a reviewer through them.
CONTEXT_SHAPES = {
    "currency": re.compile(r"[A-Z]{3}"),
    "channel": re.compile(r"[a-z_]{1,16}"),
    "country": re.compile(r"[A-Z]{2}"),
    # set by the scoring API on what it produces (flagstream.streams.api_answers.ORIGIN)
    "origin": re.compile(r"api"),
}
CONTEXT_FIELDS = tuple(CONTEXT_SHAPES)


def copy_context(decisions: Sequence[dict], records: Sequence[dict]) -> None:
    """Copy each record's context fields of their allowed shape onto its decision, in
    :data:`CONTEXT_SHAPES` order: each distinct text is matched once per batch, not once per
    record (a stream has a handful of currencies and channels).

    >>> decisions = [{}, {}, {}]
    >>> copy_context(decisions, [{"currency": "USD", "channel": "card"}, {"currency": "usd"},
    ...                          {"currency": ["USD"], "country": "FR"}])
    >>> decisions
    [{'currency': 'USD', 'channel': 'card'}, {}, {'country': 'FR'}]
    """
    for name, shape in CONTEXT_SHAPES.items():
        values = [r.get(name) for r in records]
        texts = {v for v in values if type(v) is str}
        if not texts:
            continue
        allowed = {v for v in texts if shape.fullmatch(v)}
        for decision, value in zip(decisions, values, strict=True):
            if type(value) is str and value in allowed:
                decision[name] = value


def copy_context_reference(decisions: Sequence[dict], records: Sequence[dict]) -> None:
    """:func:`copy_context` one record and field at a time: the rule it is held to."""
    for decision, record in zip(decisions, records, strict=True):
        for name, shape in CONTEXT_SHAPES.items():
            value = record.get(name)
            if isinstance(value, str) and shape.fullmatch(value):
                decision[name] = value


@njit(cache=True)
def _murmur2_partitions(buf, ends, partitions, out):  # pragma: no cover - compiled
    """Kafka's murmur2 (as ``aiokafka.partitioner.murmur2``) of each key, mod partitions."""
    m = np.int64(0x5BD1E995)
    mask = np.int64(0xFFFFFFFF)
    start = 0
    for i in range(ends.shape[0]):
        end = ends[i]
        length = end - start
        h = (np.int64(0x9747B28C) ^ length) & mask
        for j in range(length // 4):
            p = start + 4 * j
            k = (np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16)
                 | (np.int64(buf[p + 3]) << 24))
            k = (k * m) & mask
            k ^= k >> 24
            k = (k * m) & mask
            h = (h * m) & mask
            h ^= k
        extra = length % 4
        tail = start + length - extra
        if extra >= 3:
            h ^= np.int64(buf[tail + 2]) << 16
        if extra >= 2:
            h ^= np.int64(buf[tail + 1]) << 8
        if extra >= 1:
            h ^= np.int64(buf[tail])
            h = (h * m) & mask
        h ^= h >> 13
        h = (h * m) & mask
        h ^= h >> 15
        out[i] = (h & 0x7FFFFFFF) % partitions
        start = end


#: Up to this many keys, :func:`partitions_for` hashes them one by one in Python.
SMALL_BATCH = 4


def partitions_for(keys: Sequence[str], partitions: int) -> np.ndarray:
    """:func:`flagstream.streams.topics.partition_for` of many keys at once (one Numba call,
    past :data:`SMALL_BATCH` keys).

    >>> from flagstream.streams.topics import partition_for
    >>> keys = ["c-42", "t-000000001", "", "m-7", "é-ü"]
    >>> partitions_for(keys, 4).tolist() == [partition_for(k, 4) for k in keys]
    True
    >>> partitions_for(keys[:2], 4).tolist() == [partition_for(k, 4) for k in keys[:2]]
    True
    """
    if len(keys) <= SMALL_BATCH:  # (a kernel call's fixed cost is more than a few keys' own)
        return np.array([partition_for(k, partitions) for k in keys], np.int64)
    encoded = [k.encode() for k in keys]
    ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
    buf = np.frombuffer(b"".join(encoded), np.uint8)
    out = np.empty(len(encoded), np.int64)
    _murmur2_partitions(buf, ends, partitions, out)
    return out


def warm_up() -> None:
    """Compile every Numba kernel of the hot path now (the features', the model's, the
    partitioner's): a worker calls it before its first step, so that none pays for it."""
    warm_up_features()
    warm_up_scoring()
    partitions_for([str(i) for i in range(SMALL_BATCH + 1)], 1)  # (past the keys hashed in Python)


def id_hash(transaction_id: str) -> float:
    """A stable 48-bit hash of a transaction id, exact in a float64."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=6).digest()
    return float(int.from_bytes(digest, "big"))


def id_hashes(transaction_ids: Sequence[str]) -> np.ndarray:
    """:func:`id_hash` of every id, as one array.

    >>> bool(id_hashes(["t-1"])[0] == id_hash("t-1"))
    True
    """
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    return np.array(
        [from_bytes(blake2b(t.encode(), digest_size=6).digest(), "big") for t in transaction_ids],
        dtype=np.float64,
    )


@dataclass
class BatchOutcome:
    """What one batch produced. ``decisions[i]`` is for input ``indices[i]``."""

    indices: list[int] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    flagged: list[dict] = field(default_factory=list)
    #: decisions declined automatically (the policy's third route; not sent to review)
    declined: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    replayed: int = 0
    misrouted: list[tuple[int, str]] = field(default_factory=list)
    features: np.ndarray = field(default_factory=lambda: np.empty((0, N_FEATURES)))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    #: per score: its route (``approve``/``review``/``decline``) and event time
    routes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    times_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    activity: MerchantActivity = field(default_factory=MerchantActivity)


class ScoringCore:
    """Validate, update state, compute features, score and decide — per batch.

    Parameters
    ----------
    handle
        The champion model and its version.
    policy
        Decides which scores are flagged for review.
    accounts
        Account rows (an :class:`Arena`, optionally backed by a durable table).
    merchants
        Merchant state to read features from; the caller applies ``outcome.activity``.
    max_lead_ms
        A transaction stamped further than this after this machine's clock is refused
        (``timestamp_in_future``).
    """

    def __init__(
        self,
        handle: ModelHandle | None = None,
        policy: DecisionPolicy | None = None,
        accounts: Arena | None = None,
        merchants: MerchantState | None = None,
        max_record_bytes: int = 16_384,
        max_nesting: int = 8,
        max_lead_ms: float = MAX_LEAD_MS,
    ) -> None:
        # (``is None``, not ``or``: an empty arena is falsy, and the one given has the loader)
        self.handle = handle if handle is not None else ModelHandle(LinearChampion())
        self.policy = policy if policy is not None else FixedThreshold()
        self.accounts = accounts if accounts is not None else Arena(new_account_row)
        self.merchants = merchants if merchants is not None else MerchantState()
        self.max_record_bytes = max_record_bytes
        self.max_nesting = max_nesting
        #: how far after this machine's clock a transaction may be stamped (``refuse_future``)
        self.max_lead_ms = max_lead_ms

    @contextlib.contextmanager
    def undo_on_error(self) -> Iterator[None]:
        """Run a block whose changes to the account rows and to the policy's review room are
        undone if it raises (a failed attempt at a batch that is then decided in halves:
        no row keeps a change, no flag is granted twice). Blocks do not nest."""
        policy = self.policy if isinstance(self.policy, UndoablePolicy) else None
        with self.accounts.undo_on_error():  # (first: it refuses to nest before any mark is taken)
            mark = policy.checkpoint() if policy is not None else None
            try:
                yield
            except BaseException:
                if policy is not None:
                    policy.rollback(mark)
                raise
            if policy is not None:
                policy.commit(mark)

    def process(
        self,
        values: Sequence[bytes | None],
        offsets: Sequence[int] | None = None,
        partition: int | Sequence[int] | None = None,
        partitions: int | None = None,
    ) -> BatchOutcome:
        """Run one batch of records, from one partition or several.

        ``offsets`` (source offsets; each account lives on one partition) make replays
        after a restart idempotent; without them every event is applied. With
        ``partition`` (the records' source partition, or each record's) and
        ``partitions``, valid records whose account belongs to another partition are
        returned in ``misrouted`` instead of being applied. The records of several
        partitions go through in one call (one step's fixed cost, not one per
        partition); each partition's keep their order.
        """
        batch = validate_transactions(values, self.max_record_bytes, self.max_nesting)
        batch = refuse_future(batch, time.time() * 1000, self.max_lead_ms)
        outcome = BatchOutcome(rejections=list(batch.rejections))
        if partitions is not None and len(batch):
            home = partitions_for(batch.account_ids, partitions)
            expected = partition if partition is None or np.ndim(partition) == 0 else (  # (or each's)
                np.asarray(partition, dtype=np.int64)[np.asarray(batch.indices)])
            wrong = np.flatnonzero(home != expected)
            outcome.misrouted = [(batch.indices[i], batch.account_ids[i]) for i in wrong]
            if len(wrong):
                batch = batch.select(np.flatnonzero(home == expected))
        n = len(batch)
        if n == 0:
            return outcome
        rows = self.accounts.indices(batch.account_ids)
        if offsets is None:
            offs = np.full(n, -1, np.int64)
        else:
            offs = np.asarray(offsets, dtype=np.int64)[batch.indices]
        hashes = id_hashes(batch.transaction_ids)
        features = np.zeros((n, N_FEATURES))
        status = np.zeros(n, np.int8)
        update_accounts(
            self.accounts.rows, rows, offs, batch.timestamps_ms, batch.amounts, hashes,
            id_hashes(batch.merchant_ids), places_of(batch.records), features, status,
        )
        self.merchants.fill_features(batch.merchant_ids, batch.timestamps_ms, features)
        applied = np.flatnonzero(status == APPLIED)
        self.accounts.touch(rows[applied].tolist())
        times_ms, merchant_ids = batch.timestamps_ms, batch.merchant_ids
        if len(applied) < n:  # (replays and duplicates: the usual step has neither)
            outcome.replayed = int(np.count_nonzero(status == ALREADY_APPLIED))
            for i in np.flatnonzero(status == DUPLICATE).tolist():
                outcome.rejections.append(
                    Rejection(
                        batch.indices[i],
                        "duplicate_transaction",
                        f"transaction_id {batch.transaction_ids[i]!r} already seen for this account",
                    )
                )
            features, times_ms = features[applied], times_ms[applied]
            merchant_ids = [merchant_ids[i] for i in applied.tolist()]
        model = self.handle.model
        scores = model.score_batch(features)
        routes = self.policy.routes(scores, times_ms)
        outcome.features, outcome.scores = features, scores
        outcome.routes, outcome.times_ms = routes, times_ms
        outcome.activity = count_activity(merchant_ids, times_ms, features[:, IS_NEW_MERCHANT])
        self._decide(batch, applied, features, scores, routes, outcome)
        return outcome

    def _decide(self, batch, applied, features, scores, routes, outcome: BatchOutcome) -> None:
        """Decision records for the applied events: columns turned into lists once, then
        one dict per event (the part that has to be per event: the output is per event)."""
        version = self.handle.version
        threshold = float(self.policy.threshold)
        scored_at = int(time.time() * 1000)
        rows = applied.tolist()
        tx, acc, mer, recs = batch.transaction_ids, batch.account_ids, batch.merchant_ids, batch.records
        amounts = batch.amounts[applied].tolist()
        stamps = batch.timestamps_ms[applied].tolist()
        rounded = [round(x, 6) for x in scores.tolist()]
        route_list = routes.tolist()
        feature_lists = features.round(6).tolist()
        decisions = [
            {
                "transaction_id": tx[i],
                "account_id": acc[i],
                "merchant_id": mer[i],
                "amount": amount,
                "event_time": recs[i]["timestamp"],
                "event_time_ms": stamp,
                "score": score,
                "threshold": threshold,
                "decision": route,
                "model_version": version,
                "scored_at_ms": scored_at,
                "features": feats,
            }
            for i, amount, stamp, score, route, feats in zip(
                rows, amounts, stamps, rounded, route_list, feature_lists, strict=True
            )
        ]
        copy_context(decisions, [recs[i] for i in rows])
        outcome.indices.extend([batch.indices[i] for i in rows])
        outcome.decisions.extend(decisions)
        outcome.declined += route_list.count("decline")
        # reasons for every decision that is not an approval (the API answers with them);
        # only reviews are flagged (declines need nobody's review)
        explained = [j for j, route in enumerate(route_list) if route != "approve"]
        if explained:
            chosen = features[explained]
            for j, reasons in zip(explained, explain_rows(chosen, self.handle.model.contributions(chosen)),
                                  strict=True):
                decisions[j]["reasons"] = reasons
                if route_list[j] != "review":
                    continue
                flagged = dict(decisions[j])
                flagged["reasons"] = reasons
                flagged["features"] = dict(zip(FEATURE_NAMES, feature_lists[j], strict=True))
                outcome.flagged.append(flagged)
