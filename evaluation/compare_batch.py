"""``flagstream compare-batch FILE``: the online model against a batch gradient-boosted model.

Issue #13's yardstick: "the online model within 0.02 AP of a batch gradient-boosted model
trained on the same features and weeks". One run:

1. the backtest (:mod:`flagstream.evaluation.backtest`: same pipeline, features, policy and
   delayed labels as ``flagstream backtest``) streams FILE up to the end of the test week,
   keeping each scored transaction's feature vector as the core computed it, its live
   score (prequential: made before its label was known), flag, event time and truth;
2. a ``HistGradientBoostingClassifier`` (:mod:`flagstream.evaluation.batch_model`) is
   trained on the feature vectors of the training weeks only, with every label known;
3. both models are measured on the test week with the backtest's own metrics
   (:func:`flagstream.evaluation.detection_metrics.evaluate_window`): AUC, average
   precision, card precision@100 (reference protocol), and recall per fraud scenario
   at the same number of alerts (the test week's top K scores of each model, K = the
   online model's flags that week).

Default windows: the reference protocol's. Test week 2018-08-08..14; the training window
ends 8 days before it (2018-07-31: every label of it, chargebacks included, is known
when the test week starts) and spans 7 weeks (from 2018-06-13); its last week is the
early-stopping set.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import orjson

from flagstream.evaluation import detection_metrics as metrics
from flagstream.evaluation.backtest import OPTIONS, Backtest, BacktestConfig, BacktestInputError, Stream
from flagstream.evaluation.batch_model import BatchFit, BatchModelParams, scoring_cost_us, train_batch_model
from flagstream.extras import MissingExtra, require
from flagstream.features.layout import DAY_MS, N_FEATURES
from flagstream.simulation.simulator import MalformedLineError
from flagstream.streams.core import BatchOutcome, ScoringCore


@dataclass(frozen=True)
class Windows:
    """Training and test windows, ``YYYY-MM-DD``, both ends included.

    >>> w = Windows.default("2018-08-08", "2018-08-14")
    >>> w.train_start, w.train_end
    ('2018-06-13', '2018-07-31')
    >>> Windows("2018-06-13", "2018-08-08", "2018-08-08", "2018-08-14")
    Traceback (most recent call last):
    ...
    ValueError: the training window must end before the test window starts
    """

    train_start: str
    train_end: str
    test_start: str
    test_end: str
    #: the last part of the training window, the early-stopping set (days)
    valid_days: int = 7

    def __post_init__(self) -> None:
        first, last, test_first, test_last = (
            date.fromisoformat(d) for d in (self.train_start, self.train_end, self.test_start, self.test_end)
        )
        if test_last < test_first:
            raise ValueError("the test window ends before it starts")
        if last >= test_first:
            raise ValueError("the training window must end before the test window starts")
        if (last - first).days + 1 <= self.valid_days:
            raise ValueError(f"the training window must be longer than its last {self.valid_days} days")

    @classmethod
    def default(cls, test_start: str, test_end: str, train_start: str | None = None,
                train_end: str | None = None) -> Windows:
        """Missing training dates from the reference protocol: the window ends 8 days
        before the test (a week of label delay) and spans 49 days."""
        end = date.fromisoformat(train_end) if train_end else date.fromisoformat(test_start) - timedelta(8)
        start = date.fromisoformat(train_start) if train_start else end - timedelta(48)
        return cls(start.isoformat(), end.isoformat(), test_start, test_end)

    @property
    def train_ms(self) -> tuple[int, int]:
        """[start, end) of the training window in epoch ms."""
        return _span_ms(self.train_start, self.train_end)

    @property
    def test_ms(self) -> tuple[int, int]:
        """[start, end) of the test window in epoch ms."""
        return _span_ms(self.test_start, self.test_end)


def _span_ms(first: str, last: str) -> tuple[int, int]:
    epoch = date(1970, 1, 1)
    return ((date.fromisoformat(first) - epoch).days * DAY_MS,
            ((date.fromisoformat(last) - epoch).days + 1) * DAY_MS)  # fmt: skip


class _RecordingCore(ScoringCore):
    """The scoring core, keeping the outcome of its last batch."""

    last: BatchOutcome | None = None

    def process(
        self,
        values: Sequence[bytes | None],
        offsets: Sequence[int] | None = None,
        partition: int | Sequence[int] | None = None,
        partitions: int | None = None,
    ) -> BatchOutcome:
        self.last = outcome = super().process(values, offsets, partition, partitions)
        return outcome


class RecordingBacktest(Backtest):
    """:class:`Backtest` that also keeps every scored event's feature vector, live score and flag.

    After :meth:`run`, ``features[i]``, ``scores[i]`` and ``flagged[i]`` belong to the
    stream's event ``i`` (``stream``, sorted by event time); rows never scored (rejected by
    the core) have NaN scores.
    """

    def __init__(self, config: BacktestConfig | None = None, settings: Any = None) -> None:
        super().__init__(config, settings)
        self.recorder = _RecordingCore(self.handle, self.policy)
        self.core = self.recorder
        self.stream: Stream | None = None
        self.features = np.empty((0, N_FEATURES), dtype=np.float32)
        self.scores = np.empty(0)
        self.flagged = np.empty(0, dtype=bool)

    def step(self, stream: Stream, lo: int, hi: int, scores: np.ndarray, flagged: np.ndarray) -> None:
        if self.stream is not stream:
            n = len(stream.payloads)
            self.stream = stream
            self.features = np.full((n, N_FEATURES), np.nan, dtype=np.float32)
            self.scores, self.flagged = np.full(n, np.nan), np.zeros(n, dtype=bool)
        self.recorder.last = None
        super().step(stream, lo, hi, scores, flagged)
        outcome = self.recorder.last
        if outcome is not None and outcome.indices:
            pos = lo + np.asarray(outcome.indices, dtype=np.int64)
            self.features[pos] = outcome.features
            self.scores[pos] = outcome.scores
            self.flagged[pos] = outcome.routes != "approve"


@dataclass
class Collected:
    """The scored events of one backtest: what both models are compared on."""

    features: np.ndarray
    scores: np.ndarray
    flagged: np.ndarray
    ts_ms: np.ndarray
    is_fraud: np.ndarray
    scenario: np.ndarray
    cards: np.ndarray
    backtest: dict[str, Any]
    online_score: Any  # the online model at the end of the run: matrix -> scores
    #: (line, reason) of every line left out: malformed, or rejected by the core
    malformed: list[tuple[int, str]] = field(default_factory=list)


def collect(source: str | os.PathLike, config: BacktestConfig) -> Collected:
    """Run the backtest over ``source`` and keep its scored events."""
    bt = RecordingBacktest(config)
    result = bt.run(source)
    stream = bt.stream
    if stream is None:
        raise ValueError("the stream has no event before the end of the test window")
    ok = ~np.isnan(bt.scores)
    return Collected(
        bt.features[ok], bt.scores[ok], bt.flagged[ok], stream.ts_ms[ok], stream.is_fraud[ok],
        stream.scenario[ok], stream.cards[ok], result.metrics, bt.handle.model.score_batch, result.malformed,
    )  # fmt: skip


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Flags on the ``k`` highest scores among ``rows`` (ties: earlier event first).

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.8]), np.array([True, False, True, True]), 2).tolist()
    [False, False, True, True]
    """
    idx = np.flatnonzero(rows)
    flags = np.zeros(len(scores), dtype=bool)
    flags[idx[np.argsort(-scores[idx], kind="stable")[:k]]] = True
    return flags


#: Figures of each model in the output, from :func:`evaluate_window`.
FIGURES = ("auc", "average_precision", "card_precision_at_100", "auc_all", "average_precision_all",
           "recall", "false_discovery_rate", "n_test_events", "n_test_fraud")  # fmt: skip


def batch_fit(data: Collected, windows: Windows, params: BatchModelParams | None = None) -> BatchFit:
    """The batch model of :func:`compare`: trained on the training window's rows only."""
    return train_batch_model(data.features, data.is_fraud, data.ts_ms, windows.train_ms,
                             windows.valid_days * DAY_MS, params)  # fmt: skip


def compare(data: Collected, windows: Windows, params: BatchModelParams | None = None,
            protocol: str = "reference") -> dict[str, Any]:  # fmt: skip
    """Train the batch model on ``windows``' training rows and measure both on its test rows."""
    start_ms, end_ms = windows.test_ms
    test = (data.ts_ms >= start_ms) & (data.ts_ms < end_ms)
    if not test.any():
        raise ValueError(f"no scored event in the test window {windows.test_start}..{windows.test_end}")
    fit = batch_fit(data, windows, params)
    batch_scores = np.zeros(len(data.scores))  # outside the test window: never read
    batch_scores[test] = fit.predict(data.features[test])
    alerts = int(data.flagged[test].sum())
    out: dict[str, Any] = {"alerts": alerts}
    for name, column in (("online", data.scores), ("batch", batch_scores)):
        # the whole run goes in: the reference protocol finds known cards in earlier weeks
        figures = metrics.evaluate_window(
            data.ts_ms, data.is_fraud, column, top_k(column, test, alerts), data.cards,
            data.scenario, start_ms, end_ms, float("nan"), protocol,
        )[0]  # fmt: skip
        out[name] = {k: figures[k] for k in FIGURES} | {"by_scenario": figures["by_scenario"]}
    live = data.backtest
    out["online"]["live"] = {k: live.get(k) for k in ("recall", "false_discovery_rate", "flags_per_day",
                                                      "by_scenario", "model_version", "labels_learned")}
    out["online"]["cost"] = scoring_cost_us(data.online_score, data.features[test].astype(np.float64))
    out["batch"]["cost"] = scoring_cost_us(fit.predict, data.features[test])
    out["batch"]["fit"] = fit.summary()
    out["ap_gap"] = out["batch"]["average_precision"] - out["online"]["average_precision"]
    out["windows"] = {"train": [windows.train_start, windows.train_end], "test": [windows.test_start,
                      windows.test_end], "early_stopping_days": windows.valid_days}  # fmt: skip
    out["protocol"] = protocol
    out["backtest"] = {k: live.get(k) for k in ("n_events", "wall_seconds", "events_per_s", "policy",
                                                 "malformed_lines", "rejected_by_core")}
    return out



# --- command line ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``flagstream compare-batch`` options: the backtest's (the online model runs
    as ``flagstream backtest`` runs it) and the training window."""
    parser.add_argument("file", metavar="FILE", help="recorded stream (JSON Lines, .gz ok)")
    defaults = BacktestConfig()
    for name, kind, text in OPTIONS:
        if name == "scores_out":
            continue
        flag, default = "--" + name.replace("_", "-"), getattr(defaults, name)
        if isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind, default=default, help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=f"{text} ({default})")
    parser.add_argument("--train-start", help="first training day (default: 48 days before --train-end)")
    parser.add_argument("--train-end", help="last training day, before the test window "
                        "(default: 8 days before --test-start); its last 7 days stop the boosting")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr")


def format_table(out: dict[str, Any], file: str) -> str:
    """The comparison as text, one column per model."""
    on, ba = out["online"], out["batch"]
    w, fit = out["windows"], ba["fit"]
    lines = [
        f"{file}: test {w['test'][0]}..{w['test'][1]}; batch model trained on {w['train'][0]}.."
        f"{w['train'][1]} ({fit['n_train']:,} transactions, {fit['n_train_fraud']:,} frauds), "
        f"early stopping on its last {w['early_stopping_days']} days",
        f"{'':40}{'online':>10}{'batch':>10}",
    ]

    def row(label: str, a: Any, b: Any, fmt: str = ".3f") -> None:
        cells = [format(v, fmt) if isinstance(v, int | float) else str(v) for v in (a, b)]
        lines.append(f"{label:40}{cells[0]:>10}{cells[1]:>10}")

    row("AUC ROC", on["auc"], ba["auc"])
    row("Average precision", on["average_precision"], ba["average_precision"])
    row("Card precision@100", on["card_precision_at_100"], ba["card_precision_at_100"])
    row(f"recall at the same {out['alerts']:,} alerts", on["recall"], ba["recall"])
    for code, figures in on["by_scenario"].items():
        batch_recall = ba["by_scenario"][code]["recall"]
        row(f"  scenario {code} ({figures['n']:,} frauds)", figures["recall"], batch_recall)
    row("training seconds", "live", fit["train_seconds"], ".1f")
    row("scoring us/event (batches of 2,000)", on["cost"]["us_per_event_batched"],
        ba["cost"]["us_per_event_batched"], ".2f")  # fmt: skip
    lines.append(f"AP gap (batch - online): {out['ap_gap']:+.3f}; boosting iterations: {fit['n_iter']}; "
                 f"online live flags: recall {on['live']['recall']:.3f}, false-discovery rate "
                 f"{on['live']['false_discovery_rate']:.3f}")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``flagstream compare-batch``; 0 on success, 1 on a bad line with ``--on-error
    raise``, 2 on bad options, a missing extra or an unreadable file."""
    try:
        require("sklearn", "flagstream compare-batch (its batch model, scikit-learn)", "batch")
        names = BacktestConfig.__dataclass_fields__
        config = BacktestConfig(**{k: v for k, v in vars(args).items() if k in names})
        if config.progress:
            require("tqdm", "--progress")
        windows = Windows.default(config.test_start, config.test_end, args.train_start, args.train_end)
    except (ValueError, MissingExtra) as exc:
        print(f"compare-batch: {exc}", file=sys.stderr)
        return 2
    try:
        data = collect(args.file, config)
        out = compare(data, windows, protocol=config.protocol)
    except (MalformedLineError, BacktestInputError) as exc:
        print(f"compare-batch: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"compare-batch: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # empty windows, one class only
        print(f"compare-batch: {exc}", file=sys.stderr)
        return 2
    for line, reason in data.malformed[:20]:  # as flagstream backtest reports them
        print(f"compare-batch: line {line}: {reason}", file=sys.stderr)
    if len(data.malformed) > 20:
        print(f"compare-batch: ... {len(data.malformed) - 20} more bad lines", file=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    else:
        print(format_table(out, args.file))
    return 0
