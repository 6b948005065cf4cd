"""``flagstream ceiling``: how well a model could rank a simulated test week with what its labels tell it.

Some frauds cannot be told from genuine transactions until a label says so. In the
benchmark's compromised terminals (scenario 2) every transaction at a terminal is fraud for
28 days, made by genuine cards with genuine amounts: the only trace is in the labels.
Labels arrive as the backtest delivers them: a flagged transaction's after the review
delay (24 h), any other's after the chargeback delay (7 days).

The **oracle** knows exactly what those labels can tell, and nothing they cannot:

- a fraud of such a *merchant scenario* is **seen** once an earlier fraud at the same
  merchant, at most ``memory`` before it (28 days, the compromise's length: the
  generator draws terminals without regard to their past), had its label; the oracle
  flags every fraud it sees and nothing else, so a seen fraud's label takes the review
  delay and an unseen one's the chargeback delay. Every fraud of the other scenarios is
  granted as seen (its amount or its card's behaviour could show it);
- among the rest (genuine transactions and unseen frauds), a merchant is more likely to
  be compromised the longer it has gone *unconfirmed*: the days since its latest
  transaction whose genuine label had arrived (a compromise can only have begun after
  it). The oracle ranks them by those days, capped at ``memory``, at random within a day.

Seen frauds rank above everything else, at random among themselves. The figures are the
backtest's own metrics and protocol (known-compromised cards left out), averaged over
random draws. This is not a proof that no model can do better: label timing depends on
what a policy flags (flagging every transaction would bring every label within a day;
the live policy's false-discovery target rules that out, but a policy could spend its
allowed false alarms on the longest-unconfirmed merchants), and the oracle uses only
these two signals. It says how much of a test week's fraud the labels reveal in time.

With ``--scores``, a backtest's ``--scores-out`` file of the same stream, the model's
figures are printed beside the oracle's, and its shortfall ``1 - AUC`` split exactly by
kind of fraud: each fraud's share of genuine transactions scored above it (ties half),
summed over the kind, over the number of frauds.

>>> day = DAY_MS
>>> ts = np.array([0, day, 8 * day, 9 * day, 9 * day, 40 * day])
>>> merchant = np.array([5, 5, 5, 5, 6, 5])
>>> fraud = np.array([1, 1, 1, 0, 1, 1])
>>> scenario = np.array([2, 2, 2, 0, 1, 2])
>>> seen_frauds(ts, merchant, fraud, scenario).tolist()
[False, False, True, False, True, False]
>>> days_unconfirmed(np.array([0, 9 * day, 20 * day]), np.array([5, 5, 5]), np.array([0, 0, 1])).tolist()
[28, 9, 11]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from flagstream.evaluation.backtest import BacktestConfig
from flagstream.evaluation.detection_metrics import DAY_MS, ranked_window, ranking_figures, roc_auc
from flagstream.evaluation.scores_out import read_scores
from flagstream.simulation.simulator import read_stream
from flagstream.streams.schema import validate_transactions

HOUR_MS = 3_600_000
#: the benchmark's compromised terminals: the scenario whose only trace is in the labels
MERCHANT_SCENARIOS = (2,)
#: records validated per call when reading a stream
CHUNK = 20_000


def seen_frauds(
    ts_ms: np.ndarray,
    merchants: np.ndarray,
    is_fraud: np.ndarray,
    scenarios: np.ndarray,
    merchant_scenarios: tuple[int, ...] = MERCHANT_SCENARIOS,
    review_delay_ms: int = 24 * HOUR_MS,
    chargeback_delay_ms: int = 7 * DAY_MS,
    memory_ms: int = 28 * DAY_MS,
) -> np.ndarray:
    """True for each fraud the oracle can see when it happens (see the module); False for
    every genuine transaction and every unseen fraud.

    A fraud at ``t`` of a merchant scenario is seen when an earlier fraud at the same
    merchant, at ``t - memory_ms <= t0 < t``, had its label at or before ``t``: at
    ``t0 + review_delay_ms`` if that fraud was seen (so flagged), else at
    ``t0 + chargeback_delay_ms``.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    merchant = np.asarray(merchants, dtype=np.int64)
    fraud = np.asarray(is_fraud).astype(bool)
    scenario = np.asarray(scenarios)
    seen = np.zeros(ts.size, dtype=bool)
    rows = np.flatnonzero(fraud)
    rows = rows[np.lexsort((ts[rows], merchant[rows]))]
    label_only = np.isin(scenario[rows], merchant_scenarios)
    current = -1
    earlier: list[tuple[int, int]] = []  # (label time, event time) of the merchant's earlier frauds
    for row, hidden in zip(rows.tolist(), label_only.tolist(), strict=True):
        if merchant[row] != current:
            current, earlier = int(merchant[row]), []
        t = int(ts[row])
        seen[row] = not hidden or any(known <= t and t - memory_ms <= t0 < t for known, t0 in earlier)
        earlier.append((t + (review_delay_ms if seen[row] else chargeback_delay_ms), t))
    return seen


def days_unconfirmed(
    ts_ms: np.ndarray,
    merchants: np.ndarray,
    is_fraud: np.ndarray,
    chargeback_delay_ms: int = 7 * DAY_MS,
    memory_ms: int = 28 * DAY_MS,
) -> np.ndarray:
    """For each transaction, the whole days since its merchant's latest genuine transaction
    whose label had arrived (event time at most ``t - chargeback_delay_ms``: the oracle
    flags no genuine transaction), capped at ``memory_ms`` (also for a merchant with none).
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    merchant = np.asarray(merchants, dtype=np.int64)
    genuine = ~np.asarray(is_fraud).astype(bool)
    span = np.int64(1) << 42  # > any epoch ms: (merchant, time) as one sortable key
    keys = merchant[genuine] * span + ts[genuine]
    order = np.argsort(keys, kind="stable")
    keys, times = keys[order], ts[genuine][order]
    cap = memory_ms // DAY_MS
    if not keys.size:
        return np.full(ts.size, cap, dtype=np.int64)
    at = np.searchsorted(keys, merchant * span + ts - chargeback_delay_ms, side="right") - 1
    found = (at >= 0) & (keys[np.maximum(at, 0)] // span == merchant)
    days = np.where(found, ts // DAY_MS - times[np.maximum(at, 0)] // DAY_MS, cap)
    return np.minimum(days, cap)


@dataclass(frozen=True)
class OracleFigures:
    """The oracle's figures over the ranked test transactions: (mean, min, max) over draws.

    >>> c = OracleFigures(frauds=4, seen=3, auc=(0.9, 0.9, 0.9), average_precision=(0.8, 0.7, 0.9),
    ...             card_precision_at_100=(0.3, 0.3, 0.3))
    >>> c.unseen
    1
    """

    frauds: int
    seen: int
    auc: tuple[float, float, float]
    average_precision: tuple[float, float, float]
    card_precision_at_100: tuple[float, float, float]

    @property
    def unseen(self) -> int:
        return self.frauds - self.seen


def oracle_figures(
    days: np.ndarray,
    cards: np.ndarray,
    is_fraud: np.ndarray,
    seen: np.ndarray,
    unconfirmed: np.ndarray | None = None,
    draws: int = 20,
    seed: int = 0,
) -> OracleFigures:
    """The oracle's figures over ranked transactions (arrays already restricted to them):
    seen frauds first, the rest by ``unconfirmed`` days (none: all tied), ties in random order.

    >>> c = oracle_figures(np.zeros(4), np.arange(4), np.array([1, 1, 0, 0]),
    ...                    np.array([True, False, False, False]), unconfirmed=np.array([0, 5, 1, 2]))
    >>> c.auc, c.seen, c.unseen
    ((1.0, 1.0, 1.0), 1, 1)
    """
    y = np.asarray(is_fraud).astype(bool)
    seen = np.asarray(seen, dtype=bool) & y
    base = np.zeros(y.size) if unconfirmed is None else np.asarray(unconfirmed, dtype=np.float64)
    top = base.max(initial=0.0) + 2.0
    rng = np.random.default_rng(seed)
    figures: dict[str, list[float]] = {"auc": [], "average_precision": [], "card_precision_at_100": []}
    for _ in range(draws):
        scores = base + rng.random(y.size)  # within one day's count, a random order
        scores[seen] += top  # above everything else
        for name, value in ranking_figures(days, cards, y, scores).items():
            figures[name].append(value)
    spread = {name: _spread(values) for name, values in figures.items()}
    return OracleFigures(int(y.sum()), int(seen.sum()), spread["auc"], spread["average_precision"],
                   spread["card_precision_at_100"])  # fmt: skip


def _spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def auc_shortfall(is_fraud: np.ndarray, scores: np.ndarray, kinds: dict[str, np.ndarray]) -> dict[str, float]:
    """``1 - AUC`` split by kind of fraud: the parts add up to exactly ``1 - roc_auc``.

    Each fraud loses the share of genuine transactions scored above it, plus half the
    share scored the same; a kind's part is its frauds' losses over all frauds.

    >>> from flagstream.evaluation.detection_metrics import roc_auc
    >>> y, s = np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.5, 0.1])
    >>> parts = auc_shortfall(y, s, {"a": np.array([1, 0, 0, 0]), "b": np.array([0, 1, 0, 0])})
    >>> parts, 1 - roc_auc(y, s)
    ({'a': 0.0, 'b': 0.25}, 0.25)
    """
    y = np.asarray(is_fraud).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    genuine = np.sort(s[~y])
    above = genuine.size - np.searchsorted(genuine, s, side="right")
    tied = np.searchsorted(genuine, s, side="right") - np.searchsorted(genuine, s, side="left")
    loss = (above + tied / 2) / max(genuine.size, 1)
    n_fraud = max(int(y.sum()), 1)
    return {
        name: float(loss[y & np.asarray(mask, dtype=bool)].sum() / n_fraud) for name, mask in kinds.items()
    }


@dataclass
class Labelled:
    """What the oracle needs of a recorded stream (ground truth included), in time order:
    the transactions the scoring core accepts, as the backtest scores them."""

    ids: list[str]
    ts_ms: np.ndarray
    cards: np.ndarray
    merchants: np.ndarray
    is_fraud: np.ndarray
    scenarios: np.ndarray
    skipped: int = 0


def read_labelled(path: str | os.PathLike[str]) -> Labelled:
    """Read a simulated stream: ids, times, card and merchant codes, labels, scenarios.

    Each record, without its ground truth, goes through the stream's own validator; a line
    it refuses (as the backtest's core would), or without a 0/1 ``is_fraud`` and a whole
    ``fraud_scenario``, is skipped and counted.
    """
    ids: list[str] = []
    columns: dict[str, list[int]] = {"ts": [], "cards": [], "merchants": [], "labels": [], "scenarios": []}
    card_codes: dict[str, int] = {}
    merchant_codes: dict[str, int] = {}
    skipped = 0
    payloads: list[bytes] = []
    truth: list[tuple[int, int]] = []

    def flush() -> None:
        nonlocal skipped
        batch = validate_transactions(payloads)
        skipped += len(batch.rejections)
        for k, index in enumerate(batch.indices):
            ids.append(batch.transaction_ids[k])
            columns["ts"].append(int(batch.timestamps_ms[k]))
            columns["cards"].append(card_codes.setdefault(batch.account_ids[k], len(card_codes)))
            columns["merchants"].append(merchant_codes.setdefault(batch.merchant_ids[k], len(merchant_codes)))
            columns["labels"].append(truth[index][0])
            columns["scenarios"].append(truth[index][1])
        payloads.clear()
        truth.clear()

    reader = read_stream(path, on_error="skip")
    for _, record in reader:
        fraud, scenario = record.pop("is_fraud", None), record.pop("fraud_scenario", 0)
        if type(scenario) is float and scenario.is_integer():
            scenario = int(scenario)
        if fraud not in (0, 1) or type(fraud) is bool or type(scenario) is not int:
            skipped += 1
            continue
        payloads.append(orjson.dumps(record))
        truth.append((int(fraud), scenario))
        if len(payloads) >= CHUNK:
            flush()
    flush()
    order = np.argsort(np.asarray(columns["ts"], dtype=np.int64), kind="stable")

    def column(name: str, dtype: type) -> np.ndarray:
        return np.asarray(columns[name], dtype)[order]

    return Labelled([ids[i] for i in order.tolist()], column("ts", np.int64), column("cards", np.int64),
                    column("merchants", np.int64), column("labels", np.int8), column("scenarios", np.int64),
                    skipped + len(reader.malformed))  # fmt: skip


class ScoresMismatch(ValueError):
    """A scores file that is not of the stream it is read with."""


def model_scores(stream: Labelled, scores: dict[str, tuple[float, int]]) -> np.ndarray:
    """The model's score of each transaction of ``stream`` (NaN: not in ``scores``).

    Raises :class:`ScoresMismatch` when a transaction id is in both with another event time,
    or when no id is: the file was written for another stream (simulated streams of other
    seeds reuse transaction ids).
    """
    out = np.full(len(stream.ids), np.nan)
    matched = 0
    for i, tx in enumerate(stream.ids):
        found = scores.get(tx)
        if found is None:
            continue
        if found[1] != stream.ts_ms[i]:
            raise ScoresMismatch(
                f"{tx} has event time {found[1]} in the scores file and "
                f"{int(stream.ts_ms[i])} in the stream: the scores are of another stream"
            )
        out[i] = found[0]
        matched += 1
    if scores and not matched:
        raise ScoresMismatch("no transaction of the scores file is in the stream")
    return out


def analyse(
    stream: Labelled,
    config: BacktestConfig,
    merchant_scenarios: tuple[int, ...] = MERCHANT_SCENARIOS,
    memory_days: float = 28.0,
    scores: dict[str, tuple[float, int]] | None = None,
    draws: int = 20,
) -> dict[str, Any]:
    """The oracle's figures for ``stream``'s test window (and, given ``scores``, the model's
    and its AUC shortfall by kind of fraud) as JSON-ready numbers."""
    start_ms, end_ms = config.window_ms
    memory_ms = int(memory_days * DAY_MS)
    chargeback_ms = int(config.chargeback_delay_days * DAY_MS)
    y = stream.is_fraud.astype(bool)
    seen = seen_frauds(stream.ts_ms, stream.merchants, y, stream.scenarios, merchant_scenarios,
                       int(config.review_delay_hours * HOUR_MS), chargeback_ms, memory_ms)  # fmt: skip
    unconfirmed = days_unconfirmed(stream.ts_ms, stream.merchants, y, chargeback_ms, memory_ms)
    _, ranked = ranked_window(stream.ts_ms, y, stream.cards, start_ms, end_ms, config.protocol)
    days = stream.ts_ms // DAY_MS
    oracle = oracle_figures(
        days[ranked], stream.cards[ranked], y[ranked], seen[ranked], unconfirmed[ranked], draws
    )
    fraud_in_window = y & ranked
    rest = ranked & ~seen  # genuine transactions and unseen frauds
    out: dict[str, Any] = {
        "test_window": [config.test_start, config.test_end],
        "protocol": config.protocol,
        "review_delay_hours": config.review_delay_hours,
        "chargeback_delay_days": config.chargeback_delay_days,
        "merchant_scenarios": list(merchant_scenarios),
        "memory_days": memory_days,
        "frauds": oracle.frauds,
        "seen": oracle.seen,
        "unseen": oracle.unseen,
        "by_scenario": {
            str(k): {
                "frauds": int((fraud_in_window & (stream.scenarios == k)).sum()),
                "unseen": int((fraud_in_window & ~seen & (stream.scenarios == k)).sum()),
            }
            for k in np.unique(stream.scenarios[fraud_in_window]).tolist()
        },  # fmt: skip
        "oracle": {
            "auc": list(oracle.auc),
            "average_precision": list(oracle.average_precision),
            "card_precision_at_100": list(oracle.card_precision_at_100),
            "draws": draws,
        },  # fmt: skip
        "skipped_lines": stream.skipped,
        # how well days unconfirmed alone order the unseen frauds against genuine traffic
        "unseen_auc_by_days_unconfirmed": roc_auc(y[rest], unconfirmed[rest].astype(np.float64)),
    }
    if scores is not None:
        s = model_scores(stream, scores)
        scored = ranked & np.isfinite(s)
        model = ranking_figures(days[scored], stream.cards[scored], y[scored], s[scored])
        kinds = {
            f"{k} {'seen' if is_seen else 'unseen'}": (stream.scenarios[scored] == k)
            & (seen[scored] == is_seen)
            for k in np.unique(stream.scenarios[scored & y]).tolist()
            for is_seen in (True, False)
        }
        parts = auc_shortfall(y[scored], s[scored], kinds)
        shortfall = {name: part for name, part in parts.items() if kinds[name].any()}
        unscored = int((ranked & ~np.isfinite(s)).sum())
        unseen = rest & np.isfinite(s)
        out["model"] = {**model, "unscored": unscored, "auc_shortfall": shortfall,
                        "unseen_auc": roc_auc(y[unseen], s[unseen])}  # fmt: skip
    return out


def format_report(out: dict[str, Any], file: str) -> str:
    """The oracle's figures (and the model's beside them) as a few lines of text."""

    def spread(values: list[float]) -> str:
        return f"{values[0]:.3f} ({values[1]:.3f}-{values[2]:.3f})"

    o = out["oracle"]
    lines = [
        f"{file}: test week {out['test_window'][0]}..{out['test_window'][1]} ({out['protocol']} protocol), "
        f"{out['frauds']} frauds ranked, {out['unseen']} unseen when they happened "
        f"(merchant scenarios {out['merchant_scenarios']}, labels after "
        f"{out['review_delay_hours']:g} h if flagged, else {out['chargeback_delay_days']:g} days)",
        "  by scenario (frauds / unseen): "
        + ", ".join(f"{k}: {v['frauds']} / {v['unseen']}" for k, v in out["by_scenario"].items()),
        f"  oracle: AUC {spread(o['auc'])}, AP {spread(o['average_precision'])}, "
        f"CP@100 {spread(o['card_precision_at_100'])} over {o['draws']} draws; unseen frauds against "
        f"genuine traffic by days unconfirmed: AUC {out['unseen_auc_by_days_unconfirmed']:.3f}",
    ]
    if "model" in out:
        m = out["model"]
        lines.append(
            f"  model:  AUC {m['auc']:.3f}, AP {m['average_precision']:.3f}, "
            f"CP@100 {m['card_precision_at_100']:.3f} ({m['unscored']} ranked transactions unscored)"
        )
        lines.append(
            "  model's 1 - AUC by fraud kind: "
            + ", ".join(f"{name} {part:.4f}" for name, part in m["auc_shortfall"].items())
            + f"; unseen frauds against genuine traffic: AUC {m['unseen_auc']:.3f}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BacktestConfig()
    parser.add_argument(
        "file", metavar="FILE", help="simulated stream with ground truth (JSON Lines, .gz ok)"
    )
    parser.add_argument(
        "--scores", help="a backtest's --scores-out file of the same stream: the model beside it"
    )
    parser.add_argument("--test-start", default=d.test_start, help="first test day (%(default)s)")
    parser.add_argument("--test-end", default=d.test_end, help="last test day, inclusive (%(default)s)")
    parser.add_argument(
        "--protocol",
        choices=("reference", "all"),
        default=d.protocol,
        help="reference: known-compromised cards left out, as the backtest does",
    )
    parser.add_argument(
        "--review-delay-hours",
        type=float,
        default=d.review_delay_hours,
        help="a flagged transaction's label arrives after (%(default)s)",
    )
    parser.add_argument(
        "--chargeback-delay-days",
        type=float,
        default=d.chargeback_delay_days,
        help="any other label arrives after (%(default)s)",
    )
    parser.add_argument(
        "--merchant-scenarios",
        default=",".join(map(str, MERCHANT_SCENARIOS)),
        help="fraud scenarios whose only trace is in the labels (%(default)s; '' for none)",
    )
    parser.add_argument(
        "--memory-days",
        type=float,
        default=28.0,
        help="how long a merchant's fraud label tells of its later frauds (%(default)s)",
    )
    parser.add_argument("--draws", type=int, default=20, help="random orders averaged (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``flagstream ceiling``: 0, 1 without fraud in the window, 2 on bad options or files."""
    try:
        merchant_scenarios = tuple(int(p) for p in args.merchant_scenarios.split(",") if p.strip())
        config = BacktestConfig(test_start=args.test_start, test_end=args.test_end, protocol=args.protocol,
                                review_delay_hours=args.review_delay_hours,
                                chargeback_delay_days=args.chargeback_delay_days)  # fmt: skip
        if args.draws < 1 or not args.memory_days > 0:
            raise ValueError("--draws must be at least 1 and --memory-days positive")
        scores = read_scores(args.scores) if args.scores else None
        stream = read_labelled(args.file)
        out = analyse(stream, config, merchant_scenarios, args.memory_days, scores, args.draws)
    except (ValueError, OSError, EOFError) as exc:  # (UnicodeDecodeError, BadGzipFile: ValueError, OSError)
        print(f"flagstream ceiling: {exc}", file=sys.stderr)
        return 2
    if out["frauds"] == 0:
        print("flagstream ceiling: no fraud in the test window", file=sys.stderr)
        return 1
    print(
        orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() if args.json else format_report(out, args.file)
    )
    return 0
