"""``flagstream backtest FILE``: replay a recorded stream through the real pipeline, offline.

The stream is scored in event-time order, a batch at a time, by the same
:class:`streams.core.ScoringCore` the worker runs, and the model learns through the
same :class:`scoring.learner.Learner` from feedback JSON, as it would arrive:

* ground truth (``is_fraud``, ``fraud_scenario``) is stripped from every record before
  it is serialized for the core, and kept aside for the label queue and the metrics;
* a flagged transaction (decision ``review``) gets its true label from a reviewer
  ``review_delay`` after its event time (within an optional daily review capacity);
  every other one gets it ``chargeback_delay`` later: ``chargeback`` when fraud,
  ``auto`` legit otherwise;
* before each batch, every label due at or before the batch's first event time is
  delivered, oldest first (two FIFO queues, each already sorted by reveal time).

Metrics are taken over the test window with the reference benchmark's protocol (see
:func:`evaluate`); the operating point uses the policy's threshold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
import orjson

from features.layout import DAY_MS, HOUR_MS
from perf import metrics
from perf.simulator import MalformedLineError, read_stream
from scoring.handle import ModelHandle
from scoring.learner import Learner
from scoring.linear import LinearChampion
from scoring.policy import FixedThreshold
from streams.core import ScoringCore
from streams.schema import InvalidRecord, parse_timestamp_ms

#: Fields only a recorded stream has; the scorer must never see them.
GROUND_TRUTH = ("is_fraud", "fraud_scenario")
#: The reference protocol: a training week, then a 7-day label delay, then the test week.
REFERENCE_TRAIN_DAYS, REFERENCE_DELAY_DAYS = 7, 7


@dataclass(frozen=True)
class BacktestConfig:
    """Everything a backtest run depends on (defaults: the reference test week)."""

    batch_size: int = 2_000
    review_delay_hours: float = 24.0
    chargeback_delay_days: float = 7.0
    review_capacity_per_day: int | None = None
    test_start: str = "2018-08-08"
    test_end: str = "2018-08-14"
    threshold: float = 0.5
    on_error: str = "skip"
    protocol: str = "reference"
    learning_rate: float = 0.05
    l2: float = 0.0
    fraud_weight: float = 1.0
    prior: float = 0.01
    auto_legit_fraction: float = 1.0
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.on_error not in ("skip", "raise"):
            raise ValueError("on_error must be 'skip' or 'raise'")
        if self.protocol not in ("reference", "all"):
            raise ValueError("protocol must be 'reference' or 'all'")
        if not 0.0 < self.auto_legit_fraction <= 1.0:
            raise ValueError("auto_legit_fraction must be in (0, 1]")
        if self.review_delay_hours < 0 or self.chargeback_delay_days < 0:
            raise ValueError("delays must be >= 0")
        if self.test_end < self.test_start:
            raise ValueError("test_end is before test_start")

    @property
    def window_ms(self) -> tuple[int, int]:
        """[start, end) of the test window in epoch ms (``test_end`` is inclusive)."""
        start = date.fromisoformat(self.test_start).toordinal() - date(1970, 1, 1).toordinal()
        end = date.fromisoformat(self.test_end).toordinal() - date(1970, 1, 1).toordinal() + 1
        return start * DAY_MS, end * DAY_MS


class BacktestInputError(ValueError):
    """A line of the stream was malformed or rejected and ``on_error`` is ``raise``."""


@dataclass
class Stream:
    """A recorded stream up to the end of the test window, ground truth held apart."""

    lines: np.ndarray
    payloads: list[bytes]
    ts_ms: np.ndarray
    is_fraud: np.ndarray
    scenario: np.ndarray
    cards: np.ndarray
    malformed: list[tuple[int, str]] = field(default_factory=list)
    n_after_window: int = 0


def _ground_truth(line: int, record: dict, malformed: list, on_error: str) -> tuple[int, int] | None:
    fraud = record.pop("is_fraud", None)
    scenario = record.pop("fraud_scenario", 0)
    if isinstance(fraud, bool | int | float) and fraud in (0, 1):
        return int(fraud), int(scenario) if isinstance(scenario, int) else -1
    reason = "missing or invalid ground truth 'is_fraud' (need 0 or 1)"
    if on_error == "raise":
        raise MalformedLineError(line, reason)
    malformed.append((line, reason))
    return None


def load_stream(source: str | os.PathLike | Iterable[dict], end_ms: int, on_error: str) -> Stream:
    """Read ``source`` (a JSON Lines path or dict records), strip ground truth, sort by time.

    A line that is not a JSON object or has no 0/1 ``is_fraud`` is reported with its
    (1-based) line number and left out (``on_error="skip"``) or raises
    :class:`perf.simulator.MalformedLineError`. Records at or after ``end_ms`` are
    counted and dropped. A record with a bad timestamp keeps its place and is sent
    on, so the core rejects it exactly as the worker would.
    """
    reader = None
    if isinstance(source, str | os.PathLike):
        reader = read_stream(source, on_error=on_error)
        items: Iterable[tuple[int, Any]] = reader
    else:
        items = enumerate(source, start=1)
    lines, payloads, stamps, labels, scenarios, cards = [], [], [], [], [], []
    codes: dict[str, int] = {}
    malformed: list[tuple[int, str]] = []
    n_after, last_ts = 0, 0
    dumps = orjson.dumps
    for line, raw in items:
        if not isinstance(raw, dict):
            reason = f"expected a JSON object, got {type(raw).__name__}"
            if on_error == "raise":
                raise MalformedLineError(line, reason)
            malformed.append((line, reason))
            continue
        record = raw if reader is not None else dict(raw)
        truth = _ground_truth(line, record, malformed, on_error)
        if truth is None:
            continue
        try:
            last_ts = parse_timestamp_ms(record.get("timestamp"))
        except InvalidRecord:
            pass  # stays after its predecessor; the core rejects it
        if last_ts >= end_ms:
            n_after += 1
            continue
        account = record.get("account_id")
        lines.append(line)
        payloads.append(dumps(record))
        stamps.append(last_ts)
        labels.append(truth[0])
        scenarios.append(truth[1])
        cards.append(codes.setdefault(account if isinstance(account, str) else "", len(codes)))
    if reader is not None:
        malformed.extend(reader.malformed)
    ts = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    if not (order == np.arange(len(order))).all():
        payloads = [payloads[i] for i in order]
    return Stream(
        np.asarray(lines, np.int64)[order], payloads, ts[order],
        np.asarray(labels, np.int8)[order], np.asarray(scenarios, np.int8)[order],
        np.asarray(cards, np.int64)[order], sorted(malformed), n_after,
    )


@dataclass
class _Chunk:
    """Labels scheduled by one batch on one queue, sorted by reveal time."""

    reveal_ms: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    sources: np.ndarray

    def split(self, k: int) -> tuple[_Chunk, _Chunk]:
        a = _Chunk(self.reveal_ms[:k], self.ids[:k], self.labels[:k], self.sources[:k])
        b = _Chunk(self.reveal_ms[k:], self.ids[k:], self.labels[k:], self.sources[k:])
        return a, b


def _take_due(queue: deque[_Chunk], now_ms: int) -> list[_Chunk]:
    due = []
    while queue and queue[0].reveal_ms[0] <= now_ms:
        chunk = queue.popleft()
        k = int(np.searchsorted(chunk.reveal_ms, now_ms, side="right"))
        if k < len(chunk.reveal_ms):
            head, tail = chunk.split(k)
            due.append(head)
            queue.appendleft(tail)
            break
        due.append(chunk)
    return due


@dataclass
class BacktestResult:
    """Metrics (``metrics``, JSON-ready), per-day rows, the test PR curve and bad lines."""

    metrics: dict[str, Any]
    daily: list[dict[str, Any]]
    pr_precision: np.ndarray
    pr_recall: np.ndarray
    malformed: list[tuple[int, str]]


class Backtest:
    """One backtest run; ``core``, ``learner`` and ``now_ms`` are open for instrumentation."""

    def __init__(self, config: BacktestConfig | None = None) -> None:
        self.config = cfg = config or BacktestConfig()
        model = LinearChampion(cfg.learning_rate, cfg.l2, cfg.fraud_weight, cfg.prior, cfg.seed)
        self.handle = ModelHandle(model)
        self.core = ScoringCore(self.handle, FixedThreshold(cfg.threshold))
        self.decisions: dict[str, dict] = {}
        self.now_ms = 0
        retention = int(max(35 * DAY_MS, (cfg.chargeback_delay_days + 1) * DAY_MS))
        self.learner = Learner(self.handle, self.decisions.get, retention, lambda: self.now_ms)
        self.review_queue: deque[_Chunk] = deque()
        self.later_queue: deque[_Chunk] = deque()
        self.reviewed_per_day: dict[int, int] = {}
        self.rng = np.random.default_rng(cfg.seed)
        self.labels_delivered = 0
        self.labels_learned = 0

    # --- labels -----------------------------------------------------------------
    def deliver_due(self) -> int:
        """Learn every label revealed at or before ``now_ms``; returns how many."""
        due = _take_due(self.review_queue, self.now_ms) + _take_due(self.later_queue, self.now_ms)
        if not due:
            return 0
        reveal = np.concatenate([c.reveal_ms for c in due])
        order = np.argsort(reveal, kind="stable")
        ids = np.concatenate([c.ids for c in due])[order].tolist()
        labels = np.concatenate([c.labels for c in due])[order].tolist()
        sources = np.concatenate([c.sources for c in due])[order].tolist()
        dumps = orjson.dumps
        values = [
            dumps({"transaction_id": t, "label": "fraud" if y else "legit", "source": s})
            for t, y, s in zip(ids, labels, sources, strict=True)
        ]
        outcome = self.learner.learn(values)
        self.core.merchants.apply(outcome.activity)
        for t in ids:
            self.decisions.pop(t, None)
        self.labels_delivered += len(values)
        self.labels_learned += outcome.learned
        return len(values)

    def schedule(self, ts: np.ndarray, ids: np.ndarray, y: np.ndarray, flagged: np.ndarray) -> None:
        """Queue the true labels of one batch's decisions for their reveal times."""
        cfg = self.config
        reviewed = flagged.copy()
        if cfg.review_capacity_per_day is not None:
            for i in np.flatnonzero(flagged):
                day = int(ts[i] // DAY_MS)
                used = self.reviewed_per_day.get(day, 0)
                reviewed[i] = used < cfg.review_capacity_per_day
                self.reviewed_per_day[day] = used + int(reviewed[i])
        if reviewed.any():
            delay = int(cfg.review_delay_hours * HOUR_MS)
            self.review_queue.append(
                _Chunk(ts[reviewed] + delay, ids[reviewed], y[reviewed],
                       np.full(int(reviewed.sum()), "review", dtype=object))
            )
        later = ~reviewed
        if cfg.auto_legit_fraction < 1.0:
            drop = later & (y == 0) & (self.rng.random(len(y)) >= cfg.auto_legit_fraction)
            for t in ids[drop].tolist():
                self.decisions.pop(t, None)
            later &= ~drop
        if later.any():
            delay = int(cfg.chargeback_delay_days * DAY_MS)
            self.later_queue.append(
                _Chunk(ts[later] + delay, ids[later], y[later],
                       np.where(y[later] == 1, "chargeback", "auto").astype(object))
            )

    # --- the run ------------------------------------------------------------------
    def run(self, source: str | os.PathLike | Iterable[dict]) -> BacktestResult:
        """Stream ``source`` up to the end of the test window and evaluate the test window."""
        cfg = self.config
        started = time.perf_counter()
        start_ms, end_ms = cfg.window_ms
        stream = load_stream(source, end_ms, cfg.on_error)
        loaded = time.perf_counter()
        n = len(stream.payloads)
        scores = np.full(n, np.nan)
        flagged = np.zeros(n, dtype=bool)
        malformed = list(stream.malformed)
        batches = range(0, n, cfg.batch_size)
        if cfg.progress:
            from tqdm import tqdm

            batches = tqdm(batches, unit="batch", file=sys.stderr)
        for lo in batches:
            hi = min(lo + cfg.batch_size, n)
            self.now_ms = int(stream.ts_ms[lo])
            self.deliver_due()
            outcome = self.core.process(stream.payloads[lo:hi])
            self.core.merchants.apply(outcome.activity)
            for rej in outcome.rejections:
                line = int(stream.lines[lo + rej.index])
                if cfg.on_error == "raise":
                    raise BacktestInputError(f"line {line}: {rej.reason}: {rej.detail}")
                malformed.append((line, f"{rej.reason}: {rej.detail}"))
            if not outcome.decisions:
                continue
            pos = lo + np.asarray(outcome.indices, dtype=np.int64)
            is_review = np.fromiter(
                (d["decision"] == "review" for d in outcome.decisions), bool, len(pos)
            )
            scores[pos], flagged[pos] = outcome.scores, is_review
            store = self.decisions
            for d in outcome.decisions:
                d["scored_at_ms"] = d["event_time_ms"]  # in a backtest, event time is the clock
                store[d["transaction_id"]] = d
            ids = np.array([d["transaction_id"] for d in outcome.decisions], dtype=object)
            self.schedule(stream.ts_ms[pos], ids, stream.is_fraud[pos].astype(np.int64), is_review)
        finished = time.perf_counter()
        result = evaluate(stream, scores, flagged, cfg)
        result.malformed = sorted(malformed)
        m = result.metrics
        m["malformed_lines"] = len(result.malformed)
        m["events_after_window"] = stream.n_after_window
        m["labels_delivered"] = self.labels_delivered
        m["labels_learned"] = self.labels_learned
        m["load_seconds"] = round(loaded - started, 3)
        m["wall_seconds"] = round(finished - started, 3)
        m["events_per_s"] = round(m["n_events"] / max(finished - started, 1e-9), 1)
        m["config"] = asdict(cfg)
        return result


def evaluate(stream: Stream, scores: np.ndarray, flagged: np.ndarray, cfg: BacktestConfig
             ) -> BacktestResult:
    """Metrics of the test window and per-day rows of the whole run.

    Ranking metrics (AUC, AP, CP@100) follow the reference protocol when
    ``cfg.protocol == "reference"``: a card with a fraud from the start of the
    reference training week up to 8 days before a test day is left out of that day.
    The operating point (recall, false-discovery rate, flags a day) covers every
    scored test-window transaction: every flag costs a reviewer.
    """
    scored = ~np.isnan(scores)
    ts, y = stream.ts_ms[scored], stream.is_fraud[scored].astype(bool)
    s, f = scores[scored], flagged[scored]
    cards, scen = stream.cards[scored], stream.scenario[scored]
    days = ts // DAY_MS
    start_ms, end_ms = cfg.window_ms
    test = ts >= start_ms
    exclude = np.zeros_like(test)
    if cfg.protocol == "reference":
        known_from = start_ms // DAY_MS - REFERENCE_TRAIN_DAYS - REFERENCE_DELAY_DAYS
        exclude = metrics.known_compromised_mask(
            days, cards, y, test, known_from, REFERENCE_DELAY_DAYS
        )
    ev = test & ~exclude
    cp, _, _ = metrics.card_precision_at_k(days[ev], cards[ev], s[ev], y[ev], k=100)
    n_test_days = (end_ms - start_ms) / DAY_MS
    op = metrics.operating_point(y[test], s[test], cfg.threshold, n_test_days)
    precision, recall, _ = metrics.precision_recall_curve(y[ev], s[ev])
    out: dict[str, Any] = {
        "auc": metrics.roc_auc(y[ev], s[ev]),
        "average_precision": metrics.average_precision(y[ev], s[ev]),
        "card_precision_at_100": cp,
        "recall": op.recall,
        "false_discovery_rate": op.false_discovery_rate,
        "flags_per_day": op.flags_per_day,
        "n_events": int(scored.sum()),
        "n_fraud": int(y.sum()),
        "n_test_events": int(ev.sum()),
        "n_test_fraud": int(y[ev].sum()),
        "n_excluded_known": int(exclude.sum()),
        "auc_all": metrics.roc_auc(y[test], s[test]),
        "average_precision_all": metrics.average_precision(y[test], s[test]),
        "threshold": cfg.threshold,
        "protocol": cfg.protocol,
        "test_window": [cfg.test_start, cfg.test_end],
        "by_scenario": {},
    }
    legit = test & ~y
    for k in (1, 2, 3):
        sel = test & (scen == k)
        both = sel | legit
        out["by_scenario"][str(k)] = {
            "n": int(sel.sum()),
            "recall": float(f[sel].mean()) if sel.any() else float("nan"),
            "auc_vs_legit": metrics.roc_auc(y[both], s[both]),
        }
    return BacktestResult(out, daily_rows(days, y, s, f, start_ms // DAY_MS), precision, recall, [])


def daily_rows(days: np.ndarray, y: np.ndarray, s: np.ndarray, f: np.ndarray, test_day: int
               ) -> list[dict[str, Any]]:
    """One row per day: transactions, frauds, flagged, recall, FDR, AUC and AP (all cards)."""
    rows = []
    for day in np.unique(days).tolist():
        sel = days == day
        yd, sd, fd = y[sel], s[sel], f[sel]
        n_flag, tp = int(fd.sum()), int((fd & yd).sum())
        rows.append({
            "date": str(np.datetime64(day, "D")),
            "test": day >= test_day,
            "n": int(sel.sum()),
            "fraud": int(yd.sum()),
            "flagged": n_flag,
            "recall": tp / yd.sum() if yd.any() else float("nan"),
            "fdr": (n_flag - tp) / n_flag if n_flag else float("nan"),
            "auc": metrics.roc_auc(yd, sd),
            "ap": metrics.average_precision(yd, sd),
        })
    return rows


def backtest(source: str | os.PathLike | Iterable[dict], config: BacktestConfig | None = None
             ) -> BacktestResult:
    """Run a backtest of ``source`` (a JSON Lines path or dict records); see :class:`Backtest`."""
    return Backtest(config).run(source)
