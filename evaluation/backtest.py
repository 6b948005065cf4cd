"""``flagstream backtest FILE``: replay a recorded stream through the real pipeline, offline.

The stream is scored in event-time order, a batch at a time, by the same
:class:`flagstream.streams.core.ScoringCore` the worker runs, and the model learns through the
same :class:`flagstream.scoring.learner.Learner` from feedback JSON, as it would arrive:

* ground truth (``is_fraud``, ``fraud_scenario``) is stripped from every record before
  it is serialized for the core, and kept aside for the label queue and the metrics;
* a flagged transaction (decision ``review``) gets its true label from a reviewer
  ``review_delay`` after its event time (within an optional daily review capacity);
  every other one gets it ``chargeback_delay`` later: ``chargeback`` when fraud,
  ``auto`` legit otherwise;
* before each batch, every label due at or before the batch's first event time is
  delivered, oldest first (two FIFO queues, each already sorted by reveal time).

Everything before the test window is streamed first; learning goes on through it.
Metrics cover the test window (:func:`flagstream.evaluation.detection_metrics.evaluate_window`): AUC, AP and
Card Precision@100 with the reference benchmark's protocol, and the operating point
(recall, false-discovery rate, flags a day) at the policy's threshold.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, NamedTuple

import numpy as np
import orjson

from flagstream.errors import InvalidRecord
from flagstream.evaluation import detection_metrics as metrics
from flagstream.evaluation.long_lived import frozen_between_steps
from flagstream.evaluation.scores_out import ScoresWriter
from flagstream.extras import MissingExtra, progress_bar, require
from flagstream.features.layout import DAY_MS, HOUR_MS
from flagstream.scoring import registry as reg
from flagstream.scoring.challengers import ShadowSet, challengers_from_spec
from flagstream.scoring.champion_lifecycle import ChampionLifecycle, apply_writes
from flagstream.scoring.gate import Gate
from flagstream.scoring.handle import LINEAGES, ModelHandle, new_model
from flagstream.scoring.learner import Learner
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.scoring.policy import FixedThreshold
from flagstream.simulation.simulator import MalformedLineError, StreamReader, read_stream
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.schema import parse_timestamp_ms

#: Fields only a recorded stream has; the scorer must never see them.
GROUND_TRUTH = ("is_fraud", "fraud_scenario")


@dataclass(frozen=True)
class BacktestConfig:
    """Everything a backtest run depends on (defaults: the reference test week).

    Attributes
    ----------
    batch_size : events per :meth:`ScoringCore.process` call, at most.
    step_s : event seconds one call spans, at most (a batch is also cut where an event hour
        begins): labels are delivered and the policy updated at least this often, as the
        worker's learner does on every small batch of labels.
    review_delay_hours, chargeback_delay_days : label delays, in event time.
    review_capacity_per_day : flags reviewed per event day (None: all of them).
    test_start, test_end : the test window, ``YYYY-MM-DD``, both days included.
    policy : ``"live"`` (default): the worker's decision policy, an operating point built
        from :class:`~flagstream.streams.config.Settings` exactly as the worker builds it,
        fed the same delayed labels; ``"fixed:T"``: a constant threshold T (to compare
        with the published benchmark).
    threshold : the live policy's starting threshold.
    target_false_discovery_rate : the live policy's target.
    on_error : ``"skip"`` bad lines (reported) or ``"raise"`` on the first.
    protocol : ``"reference"`` or ``"all"`` (see
        :func:`flagstream.evaluation.detection_metrics.evaluate_window`).
    model : the champion's kind, ``binned`` or ``linear``; None: the worker's
        (``FLAGSTREAM_MODEL``, default binned).
    learning_rate, l2, fraud_weight, prior : the model's hyperparameters; learning_rate None:
        the kind's own default (0.2 binned, 0.005 linear).
    auto_legit_fraction : learn only this random share of ``auto`` legit labels (speed).
    seed : seed of that subsample.
    challengers : shadow challengers (``name:param=value;...``); None: the live policy runs
        the worker's (``FLAGSTREAM_CHALLENGERS``) with its gate and drift watch, a fixed
        policy none.
    scores_out : write one row per scored transaction here, as it is scored
        (:mod:`flagstream.evaluation.scores_out`); None: no file.
    """

    batch_size: int = 2_000
    step_s: float = 3_600.0
    review_delay_hours: float = 24.0
    chargeback_delay_days: float = 7.0
    review_capacity_per_day: int | None = None
    test_start: str = "2018-08-08"
    test_end: str = "2018-08-14"
    policy: str = "live"
    threshold: float = 0.5
    target_false_discovery_rate: float = 0.15
    on_error: str = "skip"
    protocol: str = "reference"
    model: str | None = None
    learning_rate: float | None = None
    l2: float = 0.0
    fraud_weight: float = 1.0
    prior: float = 0.01
    auto_legit_fraction: float = 1.0
    seed: int = 0
    challengers: str | None = None
    progress: bool = False
    scores_out: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self.step_s > 0:
            raise ValueError("step_s must be positive")
        if self.on_error not in ("skip", "raise"):
            raise ValueError("on_error must be 'skip' or 'raise'")
        if self.protocol not in ("reference", "all"):
            raise ValueError("protocol must be 'reference' or 'all'")
        if not 0.0 < self.auto_legit_fraction <= 1.0:
            raise ValueError("auto_legit_fraction must be in (0, 1]")
        if self.review_delay_hours < 0 or self.chargeback_delay_days < 0:
            raise ValueError("delays must be >= 0")
        if date.fromisoformat(self.test_end) < date.fromisoformat(self.test_start):
            raise ValueError("test_end is before test_start")
        self.decision_policy()  # a policy it cannot build is a bad option, said now

    def settings(self, base: Settings | None = None) -> Settings:
        """The operator's settings (``base``, or as the worker reads them from the
        environment), with this run's policy options."""
        base = base if base is not None else Settings.from_env()
        return base.with_(
            threshold=self.threshold,
            review_capacity_per_day=self.review_capacity_per_day or base.review_capacity_per_day,
            target_false_discovery_rate=self.target_false_discovery_rate,
        )

    def decision_policy(self, base: Settings | None = None) -> FixedThreshold | OperatingPoint:
        """The policy this run decides with (a new one each call)."""
        if self.policy == "live":
            return self.settings(base).operating_point()
        kind, _, value = self.policy.partition(":")
        try:
            threshold = float(value)
        except ValueError:
            threshold = float("nan")
        if kind != "fixed" or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"policy must be 'live' or 'fixed:T' with T in [0, 1], not {self.policy!r}")
        return FixedThreshold(threshold)

    @property
    def window_ms(self) -> tuple[int, int]:
        """[start, end) of the test window in epoch ms (``test_end`` is inclusive)."""
        start, end = (np.datetime64(d, "D").astype(np.int64) for d in (self.test_start, self.test_end))
        return int(start) * DAY_MS, (int(end) + 1) * DAY_MS


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


def load_stream(source: str | os.PathLike | Iterable[dict], end_ms: int, on_error: str) -> Stream:
    """Read ``source`` (a JSON Lines path or dict records), strip ground truth, sort by time.

    A line that is not a JSON object or has no 0/1 ``is_fraud`` is reported with its
    (1-based) line number and left out (``on_error="skip"``) or raises
    :class:`flagstream.simulation.simulator.MalformedLineError`. Records at or after ``end_ms`` are
    counted and dropped. A record with a bad timestamp keeps its place and is sent
    on, so the core rejects it exactly as the worker would.
    """
    reader: StreamReader | None = None
    items: Iterable[tuple[int, Any]]
    if isinstance(source, str | os.PathLike):
        reader = read_stream(source, on_error)
        items = reader
    else:
        items = enumerate(source, 1)
    lines, payloads, stamps, labels, scenarios, cards = [], [], [], [], [], []
    codes: dict[str, int] = {}
    malformed: list[tuple[int, str]] = []
    n_after, last_ts = 0, 0
    dumps = orjson.dumps
    for line, raw in items:
        if isinstance(raw, dict):
            record = raw if reader is not None else dict(raw)  # never mutate the caller's
            fraud, scenario = record.pop("is_fraud", None), record.pop("fraud_scenario", 0)
            if isinstance(fraud, int | float) and fraud in (0, 1):
                reason = None
            else:
                reason = "missing or invalid ground truth 'is_fraud' (need 0 or 1)"
        else:
            reason = f"expected a JSON object, got {type(raw).__name__}"
        if reason is not None:
            if on_error == "raise":
                raise MalformedLineError(line, reason)
            malformed.append((line, reason))
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
        payloads.append(bytes(memoryview(dumps(record))))  # orjson over-allocates ~4 KB
        stamps.append(last_ts)
        labels.append(int(fraud))
        scenarios.append(scenario if isinstance(scenario, int) and 0 <= scenario < 100 else -1)
        cards.append(codes.setdefault(account if isinstance(account, str) else "", len(codes)))
    if reader is not None:
        malformed.extend(reader.malformed)
    ts = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    if not (order == np.arange(len(order))).all():
        payloads = [payloads[i] for i in order]

    def column(values: list, dtype: type) -> np.ndarray:
        return np.asarray(values, dtype)[order]

    return Stream(
        column(lines, np.int64), payloads, ts[order], column(labels, np.int8),
        column(scenarios, np.int8), column(cards, np.int64), sorted(malformed), n_after,
    )  # fmt: skip


class _Chunk(NamedTuple):
    """Labels one batch put on one queue, sorted by reveal time."""

    reveal_ms: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    sources: np.ndarray


def _take_due(queue: deque[_Chunk], now_ms: int) -> list[_Chunk]:
    """Pop every label revealed at or before ``now_ms`` off a queue sorted by reveal time."""
    due = []
    while queue and queue[0].reveal_ms[0] <= now_ms:
        chunk = queue.popleft()
        k = int(np.searchsorted(chunk.reveal_ms, now_ms, side="right"))
        due.append(_Chunk(*(column[:k] for column in chunk)))
        if k < len(chunk.reveal_ms):
            queue.appendleft(_Chunk(*(column[k:] for column in chunk)))
            break
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
    """One backtest run; ``core``, ``learner`` and ``now_ms`` are open for instrumentation.

    ``settings``: the worker settings the live policy is built from (default: read from the
    environment, as the worker reads them).
    """

    #: keep what each step leaves behind out of the garbage collector's full passes
    #: (:mod:`flagstream.evaluation.long_lived`; the same results, a ninth less time)
    freeze_between_steps = True

    def __init__(self, config: BacktestConfig | None = None, settings: Settings | None = None) -> None:
        self.config = cfg = config or BacktestConfig()
        kind = cfg.model or (settings or Settings.from_env()).model
        model = new_model(kind, cfg.learning_rate, l2=cfg.l2, fraud_weight=cfg.fraud_weight,
                          prior=cfg.prior, seed=cfg.seed)
        self.handle = ModelHandle(model, name=LINEAGES[kind])
        self.policy = cfg.decision_policy(settings)
        self.core = ScoringCore(self.handle, self.policy)
        #: (event time ms, threshold) after each step: the live policy's path.
        self.thresholds: list[tuple[int, float]] = []
        self.estimate: dict[str, Any] | None = None
        self.decisions: dict[str, dict] = {}
        self.now_ms = 0
        retention = int(max(35 * DAY_MS, (cfg.chargeback_delay_days + 1) * DAY_MS))
        live = cfg.policy == "live"
        settings = cfg.settings(settings) if live else None
        spec = cfg.challengers if cfg.challengers is not None else (settings.challengers if settings else "")
        self.shadow = ShadowSet(challengers_from_spec(spec, model))
        self.shadow_scores: dict[str, np.ndarray] = {}
        # the live policy changes champions as the worker does: gate, drift watch, registry
        gate = Gate(settings.gate()) if settings is not None else None
        self.learner = Learner(
            self.handle, self.decisions.get, retention, lambda: self.now_ms, shadow=self.shadow,
            gate=gate, publish_each_batch=gate is None,
        )
        self.registry: dict[bytes, dict] = {}
        self.keep_versions = settings.model_keep_versions if settings is not None else 0
        self.lifecycle = None if gate is None else ChampionLifecycle(
            self.learner, self.registry.get, self.registry.__setitem__,
            operating_point=self.policy if isinstance(self.policy, OperatingPoint) else None)
        self.review_queue: deque[_Chunk] = deque()
        self.later_queue: deque[_Chunk] = deque()
        self.reviewed_per_day: dict[int, int] = {}
        self.rng = np.random.default_rng(cfg.seed)
        self.labels_by_source: dict[str, int] = {}
        self.labels_learned = 0
        self.malformed: list[tuple[int, str]] = []  # rejected by the core
        self.scores_out: ScoresWriter | None = None  # open during run() with --scores-out

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
        if isinstance(self.policy, OperatingPoint) and outcome.labelled:
            self.estimate = self.policy.observe_labelled(outcome.labelled).as_dict()
        self.change_champion()
        for t in ids:
            self.decisions.pop(t, None)
        for source in sources:
            self.labels_by_source[source] = self.labels_by_source.get(source, 0) + 1
        self.labels_learned += outcome.learned
        return len(values)

    def change_champion(self) -> None:
        """The gate and the drift watch, then a publication: the worker's learner's cycle."""
        life = self.lifecycle
        if life is None:
            return
        writes = life.verdicts() + life.drift()[0]
        if self.learner.dirty or any(c.dirty for c in self.shadow):
            writes += self.learner.publication()
        apply_writes(self.registry, writes)
        most = 4 * max(self.keep_versions, 1) * (len(self.shadow) + 2)
        if len(self.registry) <= most:  # (versions are some of its records: none to prune)
            return
        versions = [r for k, r in self.registry.items() if k.startswith(reg.VERSION_PREFIX)]
        if len(versions) > most:
            apply_writes(self.registry, [(k, None) for k in life.prunable(versions, self.keep_versions)])

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
        later = ~reviewed
        if cfg.auto_legit_fraction < 1.0:
            drop = later & (y == 0) & (self.rng.random(len(y)) >= cfg.auto_legit_fraction)
            for t in ids[drop].tolist():
                self.decisions.pop(t, None)
            later &= ~drop
        sources = np.where(reviewed, "review", np.where(y == 1, "chargeback", "auto"))
        for queue, mask, delay in (
            (self.review_queue, reviewed, int(cfg.review_delay_hours * HOUR_MS)),
            (self.later_queue, later, int(cfg.chargeback_delay_days * DAY_MS)),
        ):
            if mask.any():
                queue.append(_Chunk(ts[mask] + delay, ids[mask], y[mask], sources[mask]))

    def decided_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """After :meth:`run`: event time, ground truth, flagged and threshold of every decision."""
        return self.decided

    # --- the run ------------------------------------------------------------------
    def step(self, stream: Stream, lo: int, hi: int, scores: np.ndarray, flagged: np.ndarray) -> None:
        """Deliver due labels, then score events ``lo:hi`` and queue their labels."""
        self.now_ms = int(stream.ts_ms[lo])
        self.deliver_due()
        outcome = self.core.process(stream.payloads[lo:hi])
        self.core.merchants.apply(outcome.activity)
        for rej in outcome.rejections:
            line, why = int(stream.lines[lo + rej.index]), f"rejected ({rej.reason}): {rej.detail}"
            if self.config.on_error == "raise":
                raise BacktestInputError(f"line {line}: {why}")
            self.malformed.append((line, why))
        if not outcome.decisions:
            return
        if self.scores_out is not None:
            self.scores_out.write(outcome.decisions)
        if isinstance(self.policy, OperatingPoint):  # as the worker's learner counts them
            self.policy.observe_traffic(outcome.scores, outcome.routes != "approve",
                                        float(np.median(outcome.times_ms)) / 1000)
        self.thresholds.append((int(stream.ts_ms[lo]), float(self.policy.threshold)))
        pos = lo + np.asarray(outcome.indices, dtype=np.int64)
        routes = outcome.routes
        is_review = routes == "review"  # people review these; declines wait for chargebacks
        scores[pos], flagged[pos] = outcome.scores, routes != "approve"
        self.declined[pos] = routes == "decline"
        self.decided_at[pos] = [d["threshold"] for d in outcome.decisions]
        if self.shadow.annotate(outcome.decisions, outcome.features):
            for name in self.shadow.names():
                column = self.shadow_scores.setdefault(name, np.full(len(scores), np.nan))
                column[pos] = [d["shadow"][name] for d in outcome.decisions]
        for d in outcome.decisions:
            d["scored_at_ms"] = d["event_time_ms"]  # in a backtest, event time is the clock
            self.decisions[d["transaction_id"]] = d
        ids = np.array([d["transaction_id"] for d in outcome.decisions], dtype=object)
        self.schedule(stream.ts_ms[pos], ids, stream.is_fraud[pos].astype(np.int64), is_review)

    def run(self, source: str | os.PathLike | Iterable[dict]) -> BacktestResult:
        """Stream ``source`` up to the end of the test window, then evaluate (once per instance)."""
        cfg, started = self.config, time.perf_counter()
        start_ms, end_ms = cfg.window_ms
        stream = load_stream(source, end_ms, cfg.on_error)
        loaded, n = time.perf_counter(), len(stream.payloads)
        scores, flagged = np.full(n, np.nan), np.zeros(n, dtype=bool)
        self.decided_at = np.full(n, np.nan)  # the threshold each event was decided with
        self.declined = np.zeros(n, dtype=bool)  # flags declined with nobody looking
        with progress_bar(n, "tx", cfg.progress) as bar, contextlib.ExitStack() as files, \
                frozen_between_steps(self.freeze_between_steps) as frozen:
            if cfg.scores_out:
                self.scores_out = files.enter_context(ScoresWriter(cfg.scores_out))
            for lo, hi in steps(stream.ts_ms, cfg.batch_size, cfg.step_s):
                self.step(stream, lo, hi, scores, flagged)
                frozen.step_done()
                bar.update(hi - lo)
        self.scores_out = None
        finished = time.perf_counter()
        ok = ~np.isnan(scores)
        self.decided = (stream.ts_ms[ok], stream.is_fraud[ok], flagged[ok], self.decided_at[ok])
        #: after :meth:`run`: which of those decisions were declined automatically
        self.decided_declined = self.declined[ok]

        def evaluate(
            column: np.ndarray, flags: np.ndarray, rows: np.ndarray = ok
        ) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray, np.ndarray]:
            """The test-window metrics of one score column, on the scored events."""
            return metrics.evaluate_window(
                stream.ts_ms[rows], stream.is_fraud[rows], column[rows], flags[rows],
                stream.cards[rows], stream.scenario[rows], start_ms, end_ms,
                float(self.policy.threshold), cfg.protocol,
            )

        m, daily, precision, recall = evaluate(scores, flagged)
        m["challengers"] = {}
        for name, column in self.shadow_scores.items():
            # a lineage is scored in shadow only while it is a challenger (the gate may
            # promote it, or demote the champion into one): its figures cover those events
            rows = ok & ~np.isnan(column)
            try:
                figures = evaluate(column, column >= self.decided_at, rows)[0]
            except ValueError:  # no test events, or one class only, while in shadow
                continue
            m["challengers"][name] = {
                k: v for k, v in figures.items()
                if k in ("auc", "average_precision", "card_precision_at_100", "recall",
                         "false_discovery_rate", "flags_per_day", "n_events")
            }  # fmt: skip
        bad = sorted(stream.malformed + self.malformed)
        in_test = [t for at, t in self.thresholds if start_ms <= at < end_ms] or [self.policy.threshold]
        changes = self.lifecycle.changes if self.lifecycle is not None else []
        m.update(
            policy=cfg.policy,
            promotions=sum(c["action"] == "promote" for c in changes),
            rollbacks=sum(c["action"] == "rollback" for c in changes),
            gate_refusals=self.lifecycle.refusals if self.lifecycle is not None else 0,
            champion_changes=changes,
            model_version=self.handle.version,
            declined=int(self.declined[ok].sum()),
            threshold_min=min(in_test),
            threshold_max=max(in_test),
            operating_point=self.estimate,
            target_met=None if self.estimate is None else self.estimate["target_met"],
            test_window=[cfg.test_start, cfg.test_end],
            malformed_lines=len(bad),
            rejected_by_core=len(self.malformed),
            events_after_window=stream.n_after_window,
            labels_delivered=sum(self.labels_by_source.values()),
            labels_by_source=dict(self.labels_by_source),
            labels_learned=self.labels_learned,
            load_seconds=round(loaded - started, 3),
            wall_seconds=round(finished - started, 3),
            events_per_s=round(m["n_events"] / max(finished - started, 1e-9), 1),
            config=asdict(cfg),
        )
        return BacktestResult(m, daily, precision, recall, bad)


def backtest(
    source: str | os.PathLike | Iterable[dict], config: BacktestConfig | None = None
) -> BacktestResult:
    """Run a backtest of ``source`` (a JSON Lines path or dict records); see :class:`Backtest`."""
    return Backtest(config).run(source)


def steps(ts_ms: np.ndarray, batch_size: int, step_s: float) -> list[tuple[int, int]]:
    """``(lo, hi)`` index ranges of at most ``batch_size`` events, also cut where a new
    ``step_s`` period of event time begins (``ts_ms`` sorted).

    >>> steps(np.array([0, 10, 3_600_000, 3_600_001, 3_600_002]), 2, 3_600.0)
    [(0, 2), (2, 4), (4, 5)]
    """
    n = len(ts_ms)
    period = (np.asarray(ts_ms, dtype=np.int64) // int(step_s * 1000)) if n else ts_ms
    cuts = set(range(0, n, batch_size)) | set((np.flatnonzero(np.diff(period)) + 1).tolist())
    bounds = sorted(cuts) + [n]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]


# --- command line ---------------------------------------------------------------------
#: Keys every ``--json`` output has (extra keys follow them).
JSON_KEYS = (
    "auc", "average_precision", "card_precision_at_100", "recall", "false_discovery_rate",
    "flags_per_day", "events_per_s", "n_events", "n_fraud", "malformed_lines"
)  # fmt: skip


#: Options that set a :class:`BacktestConfig` field: (field, type or choices, help).
OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("batch_size", int, "events per scoring batch"),
    ("step_s", float, "event seconds a scoring batch spans at most (labels, policy updates)"),
    ("review_delay_hours", float, "event time from a flag to its reviewer's label"),
    ("chargeback_delay_days", float, "event time until an unreviewed label arrives"),
    ("review_capacity_per_day", int, "flags reviewed a day, the rest wait (default: all)"),
    ("test_start", str, "first test day, YYYY-MM-DD"),
    ("test_end", str, "last test day (inclusive), YYYY-MM-DD"),
    ("policy", str, "live (the worker's operating point) or fixed:T (constant threshold T)"),
    ("threshold", float, "the live policy's starting threshold"),
    ("target_false_discovery_rate", float, "the live policy's target share of legitimate flags"),
    ("on_error", ("skip", "raise"), "bad lines: report and skip, or stop with status 1"),
    ("protocol", ("reference", "all"), "reference: drop known-compromised cards from ranking"),
    ("model", ("binned", "linear"), "the champion's kind (default: FLAGSTREAM_MODEL's, binned)"),
    ("learning_rate", float, "the model's step size (default: its kind's)"),
    ("l2", float, "model L2 penalty"),
    ("fraud_weight", float, "sample weight of a fraud label"),
    ("prior", float, "fraud probability before any label"),
    ("auto_legit_fraction", float, "learn this random share of auto-legit labels only"),
    ("seed", int, "seed of that subsample"),
    ("challengers", str, "shadow challengers scored side by side, e.g. 'fast:learning_rate=0.02'"),
    ("scores_out", str, "write transaction_id, score, decision, model_version of every scored "
     "transaction here (.csv: CSV, else JSON Lines; .gz: gzip)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``flagstream backtest`` options to ``parser``."""
    parser.add_argument("file", metavar="FILE", help="recorded stream (JSON Lines, .gz ok)")
    defaults = BacktestConfig()
    for name, kind, text in OPTIONS:
        flag, default = "--" + name.replace("_", "-"), getattr(defaults, name)
        if isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind, default=default, help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=f"{text} ({default})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--report", metavar="DIR", default="artifacts/backtest", help="PNG + JSON report here"
    )
    parser.add_argument("--no-report", dest="report", action="store_const", const=None)
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr")


def _config(args: argparse.Namespace) -> BacktestConfig:
    names = BacktestConfig.__dataclass_fields__
    return BacktestConfig(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    """Run ``flagstream backtest``; 0 on success, 1 on a bad line with ``--on-error raise``,
    2 on bad options or an unreadable file."""
    try:
        config = _config(args)
        if args.report:
            require("matplotlib", "the backtest report (--report; --no-report skips it)")
        if config.progress:
            require("tqdm", "--progress")
        if config.scores_out and not os.path.isdir(os.path.dirname(config.scores_out) or "."):
            raise ValueError(f"--scores-out: no directory for {config.scores_out}")
    except (ValueError, MissingExtra) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    try:
        result = backtest(args.file, config)
    except (MalformedLineError, BacktestInputError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"backtest: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    for line, reason in result.malformed[:20]:
        print(f"backtest: line {line}: {reason}", file=sys.stderr)
    if len(result.malformed) > 20:
        print(f"backtest: ... {len(result.malformed) - 20} more bad lines", file=sys.stderr)
    out = {k: result.metrics[k] for k in JSON_KEYS} | result.metrics
    if args.report:
        from flagstream.evaluation.report import write_report

        png, js = write_report(result, args.report)
        out["report_png"], out["report_json"] = str(png), str(js)
    if args.json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        from flagstream.evaluation.report import format_table

        print(format_table(out))
        if args.report:
            print(f"  report: {out['report_png']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m flagstream.evaluation.backtest FILE [options]``."""
    parser = argparse.ArgumentParser(prog="flagstream backtest", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
