"""``flagstream ceiling``: how well *any* model could rank a simulated test week, given when labels arrive.

Some frauds cannot be told from genuine transactions until a label says so. In the
benchmark's compromised terminals (scenario 2) every transaction at a terminal is fraud for
28 days, made by genuine cards with genuine amounts: the only trace is a fraud label at
that terminal. Labels arrive as the backtest delivers them: a flagged transaction's after
the review delay (24 h), any other's after the chargeback delay (7 days). So a fraud of
such a *merchant scenario* is **seen** only when an earlier fraud at the same merchant, at
most ``memory`` before it (28 days: an older one tells nothing of a new compromise), had
its label by then; the oracle flags every fraud it sees, so a seen fraud's label takes the
review delay and an unseen one's the chargeback delay. Every fraud of the other
scenarios is granted as seen (its amount or its card's behaviour could show it).

The **ceiling** is the oracle's ranking: every seen fraud above every genuine
transaction, unseen frauds at random among the genuine ones, scored with the backtest's
own metrics and protocol (known-compromised cards left out). Its expected AUC is exact,
``(seen + unseen / 2) / frauds``; AP and CP@100 are averaged over random draws. No
model that learns from these labels can expect more (a policy that flags genuine
transactions just to hear about merchants sooner would pay in false alarms, beyond the
false-discovery target). With ``--scores``, a backtest's ``--scores-out`` file, the
model's shortfall ``1 - AUC`` is split exactly by kind of fraud: each fraud's share of
genuine transactions ranked at or above it (ties half), summed over the kind, over the
number of frauds.

>>> day = DAY_MS
>>> ts = np.array([0, day, 8 * day, 9 * day, 9 * day, 40 * day])
>>> merchant = np.array([5, 5, 5, 5, 6, 5])
>>> fraud = np.array([1, 1, 1, 0, 1, 1])
>>> scenario = np.array([2, 2, 2, 0, 1, 2])
>>> seen_frauds(ts, merchant, fraud, scenario).tolist()
[False, False, True, False, True, False]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from flagstream.evaluation.backtest import BacktestConfig
from flagstream.evaluation.detection_metrics import DAY_MS, ranked_window, ranking_figures
from flagstream.simulation.simulator import read_stream
from flagstream.streams.schema import parse_timestamp_ms

HOUR_MS = 3_600_000
#: the benchmark's compromised terminals: the scenario whose only trace is its merchant
MERCHANT_SCENARIOS = (2,)


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

    Frauds at one merchant are taken in time order; a fraud at ``t`` of a merchant scenario
    is seen when an earlier fraud there at ``t0 >= t - memory_ms`` had its label at or
    before ``t``: at ``t0 + review_delay_ms`` if that fraud was seen (so flagged), else at
    ``t0 + chargeback_delay_ms``. Frauds at the same instant do not see each other.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    merchant = np.asarray(merchants, dtype=np.int64)
    fraud = np.asarray(is_fraud).astype(bool)
    scenario = np.asarray(scenarios)
    seen = np.zeros(ts.size, dtype=bool)
    rows = np.flatnonzero(fraud)
    rows = rows[np.lexsort((ts[rows], merchant[rows]))]
    by_merchant_scenario = np.isin(scenario[rows], merchant_scenarios)
    current = -1
    earlier: list[tuple[int, int]] = []  # (label time, event time) of the merchant's earlier frauds
    for row, label_only in zip(rows.tolist(), by_merchant_scenario.tolist(), strict=True):
        if merchant[row] != current:
            current, earlier = int(merchant[row]), []
        t = int(ts[row])
        seen[row] = not label_only or any(known <= t and t0 >= t - memory_ms for known, t0 in earlier)
        earlier.append((t + (review_delay_ms if seen[row] else chargeback_delay_ms), t))
    return seen


@dataclass(frozen=True)
class Ceiling:
    """The oracle's expected figures over the ranked test transactions.

    >>> c = Ceiling(frauds=4, seen=3, auc=0.875, average_precision=(0.8, 0.7, 0.9),
    ...             card_precision_at_100=(0.3, 0.3, 0.3))
    >>> c.unseen
    1
    """

    frauds: int
    seen: int
    auc: float
    average_precision: tuple[float, float, float]  # mean, min, max over the draws
    card_precision_at_100: tuple[float, float, float]

    @property
    def unseen(self) -> int:
        return self.frauds - self.seen


def ceiling(
    days: np.ndarray,
    cards: np.ndarray,
    is_fraud: np.ndarray,
    seen: np.ndarray,
    draws: int = 20,
    seed: int = 0,
) -> Ceiling:
    """The oracle's figures over ranked transactions (arrays already restricted to them).

    >>> c = ceiling(np.zeros(4), np.arange(4), np.array([1, 1, 0, 0]), np.array([True, False, False, False]))
    >>> c.auc, c.seen, c.unseen
    (0.75, 1, 1)
    """
    y = np.asarray(is_fraud).astype(bool)
    seen = np.asarray(seen, dtype=bool) & y
    n_fraud, n_seen = int(y.sum()), int(seen.sum())
    rng = np.random.default_rng(seed)
    ap, cp = [], []
    for _ in range(draws):
        scores = rng.random(y.size)
        scores[seen] += 1.0  # above every genuine transaction, in random order among themselves
        figures = ranking_figures(days, cards, y, scores)
        ap.append(figures["average_precision"])
        cp.append(figures["card_precision_at_100"])
    auc = (n_seen + (n_fraud - n_seen) / 2) / n_fraud if n_fraud and n_fraud < y.size else float("nan")
    return Ceiling(n_fraud, n_seen, auc, _spread(ap), _spread(cp))


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
    """What the ceiling needs of a recorded stream (ground truth included), in time order."""

    ids: list[str]
    ts_ms: np.ndarray
    cards: np.ndarray
    merchants: np.ndarray
    is_fraud: np.ndarray
    scenarios: np.ndarray
    skipped: int = 0


def read_labelled(path: str | os.PathLike[str]) -> Labelled:
    """Read a simulated stream: ids, times, card and merchant codes, labels, scenarios.

    A line without a readable timestamp, account, merchant or 0/1 ``is_fraud`` is skipped
    and counted (the backtest rejects those too).
    """
    ids, ts, cards, merchants, labels, scenarios = [], [], [], [], [], []
    card_codes: dict[str, int] = {}
    merchant_codes: dict[str, int] = {}
    skipped = 0
    reader = read_stream(path, on_error="skip")
    for _, record in reader:
        fraud, scenario = record.get("is_fraud"), record.get("fraud_scenario", 0)
        account, merchant, tx = (
            record.get("account_id"),
            record.get("merchant_id"),
            record.get("transaction_id"),
        )
        try:
            stamp = parse_timestamp_ms(record.get("timestamp"))
        except ValueError:
            stamp = None
        if (
            stamp is None
            or fraud not in (0, 1)
            or not isinstance(account, str)
            or not isinstance(merchant, str)
            or not isinstance(tx, str)
        ):
            skipped += 1
            continue
        ids.append(tx)
        ts.append(stamp)
        cards.append(card_codes.setdefault(account, len(card_codes)))
        merchants.append(merchant_codes.setdefault(merchant, len(merchant_codes)))
        labels.append(int(fraud))
        scenarios.append(scenario if isinstance(scenario, int) else -1)
    order = np.argsort(np.asarray(ts, dtype=np.int64), kind="stable")

    def column(values: list, dtype: type) -> np.ndarray:
        return np.asarray(values, dtype)[order]

    return Labelled(
        [ids[i] for i in order.tolist()],
        column(ts, np.int64),
        column(cards, np.int64),
        column(merchants, np.int64),
        column(labels, np.int8),
        column(scenarios, np.int64),
        skipped + len(reader.malformed),
    )


def read_scores(path: str | os.PathLike[str]) -> dict[str, float]:
    """``transaction_id -> score`` from a ``backtest --scores-out`` file (CSV or JSON Lines,
    gzip or not; :mod:`flagstream.evaluation.scores_out`). Rows without a finite score, or
    unreadable, are left out."""
    name = os.fspath(path).lower()
    opener: Any = gzip.open if name.endswith(".gz") else open
    scores: dict[str, float] = {}
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f) if name.removesuffix(".gz").endswith(".csv") else map(_json_row, f)
        for row in rows:
            try:
                tx, score = row["transaction_id"], float(row["score"])
            except (KeyError, TypeError, ValueError):
                continue
            if isinstance(tx, str) and np.isfinite(score):
                scores[tx] = score
    return scores


def _json_row(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def analyse(
    stream: Labelled,
    config: BacktestConfig,
    merchant_scenarios: tuple[int, ...] = MERCHANT_SCENARIOS,
    memory_days: float = 28.0,
    scores: dict[str, float] | None = None,
    draws: int = 20,
) -> dict[str, Any]:
    """The ceiling of ``stream``'s test window (and, given ``scores``, the model's figures
    and its AUC shortfall by kind) as JSON-ready numbers."""
    start_ms, end_ms = config.window_ms
    seen = seen_frauds(
        stream.ts_ms,
        stream.merchants,
        stream.is_fraud,
        stream.scenarios,
        merchant_scenarios,
        int(config.review_delay_hours * HOUR_MS),
        int(config.chargeback_delay_days * DAY_MS),
        int(memory_days * DAY_MS),
    )
    _, ranked = ranked_window(stream.ts_ms, stream.is_fraud, stream.cards, start_ms, end_ms, config.protocol)
    days = stream.ts_ms // DAY_MS
    y = stream.is_fraud.astype(bool)
    top = ceiling(days[ranked], stream.cards[ranked], y[ranked], seen[ranked], draws)
    fraud_in_window = y & ranked
    out: dict[str, Any] = {
        "test_window": [config.test_start, config.test_end],
        "protocol": config.protocol,
        "review_delay_hours": config.review_delay_hours,
        "chargeback_delay_days": config.chargeback_delay_days,
        "merchant_scenarios": list(merchant_scenarios),
        "memory_days": memory_days,
        "frauds": top.frauds,
        "seen": top.seen,
        "unseen": top.unseen,
        "by_scenario": {
            str(k): {
                "frauds": int((fraud_in_window & (stream.scenarios == k)).sum()),
                "unseen": int((fraud_in_window & ~seen & (stream.scenarios == k)).sum()),
            }
            for k in np.unique(stream.scenarios[fraud_in_window]).tolist()
        },
        "ceiling": {
            "auc": top.auc,
            "average_precision": list(top.average_precision),
            "card_precision_at_100": list(top.card_precision_at_100),
            "draws": draws,
        },
        "skipped_lines": stream.skipped,
    }
    if scores is not None:
        s = np.array([scores.get(tx, np.nan) for tx in stream.ids])
        scored = ranked & np.isfinite(s)
        model = ranking_figures(days[scored], stream.cards[scored], y[scored], s[scored])
        kinds = {
            f"{k} {'seen' if is_seen else 'unseen'}": (stream.scenarios[scored] == k)
            & (seen[scored] == is_seen)
            for k in np.unique(stream.scenarios[scored & y]).tolist()
            for is_seen in (True, False)
        }
        parts = auc_shortfall(y[scored], s[scored], kinds)
        out["model"] = {
            **model,
            "unscored": int((ranked & ~np.isfinite(s)).sum()),
            "auc_shortfall": {name: part for name, part in parts.items() if kinds[name].any()},
        }
    return out


def format_report(out: dict[str, Any], file: str) -> str:
    """The ceiling (and the model beside it) as a few lines of text."""
    c = out["ceiling"]
    lines = [
        f"{file}: test week {out['test_window'][0]}..{out['test_window'][1]} ({out['protocol']} protocol), "
        f"{out['frauds']} frauds ranked, {out['unseen']} unseen when they happened "
        f"(merchant scenarios {out['merchant_scenarios']}, labels after "
        f"{out['review_delay_hours']:g} h if flagged, else {out['chargeback_delay_days']:g} days)",
        "  by scenario (frauds / unseen): "
        + ", ".join(f"{k}: {v['frauds']} / {v['unseen']}" for k, v in out["by_scenario"].items()),
        f"  ceiling: AUC {c['auc']:.3f}, AP {c['average_precision'][0]:.3f} "
        f"({c['average_precision'][1]:.3f}-{c['average_precision'][2]:.3f}), CP@100 "
        f"{c['card_precision_at_100'][0]:.3f} ({c['card_precision_at_100'][1]:.3f}-"
        f"{c['card_precision_at_100'][2]:.3f}) over {c['draws']} draws",
    ]
    if "model" in out:
        m = out["model"]
        lines.append(
            f"  model:   AUC {m['auc']:.3f}, AP {m['average_precision']:.3f}, "
            f"CP@100 {m['card_precision_at_100']:.3f}"
        )
        lines.append(
            "  model's 1 - AUC by fraud kind: "
            + ", ".join(f"{name} {part:.4f}" for name, part in m["auc_shortfall"].items())
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BacktestConfig()
    parser.add_argument(
        "file", metavar="FILE", help="simulated stream with ground truth (JSON Lines, .gz ok)"
    )
    parser.add_argument(
        "--scores", help="a backtest's --scores-out file: the model's figures beside the ceiling"
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
        help="fraud scenarios whose only trace is the merchant (%(default)s)",
    )
    parser.add_argument(
        "--memory-days",
        type=float,
        default=28.0,
        help="how long a merchant's fraud label tells of its later frauds (%(default)s)",
    )
    parser.add_argument("--draws", type=int, default=20, help="random orders averaged for AP and CP@100")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        merchant_scenarios = tuple(int(p) for p in args.merchant_scenarios.split(",") if p.strip())
        config = BacktestConfig(
            test_start=args.test_start,
            test_end=args.test_end,
            protocol=args.protocol,
            review_delay_hours=args.review_delay_hours,
            chargeback_delay_days=args.chargeback_delay_days,
        )
    except ValueError as exc:
        print(f"flagstream ceiling: {exc}", file=sys.stderr)
        return 2
    scores = read_scores(args.scores) if args.scores else None
    out = analyse(read_labelled(args.file), config, merchant_scenarios, args.memory_days, scores, args.draws)
    if out["frauds"] == 0:
        print("flagstream ceiling: no fraud in the test window", file=sys.stderr)
        return 1
    print(
        orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() if args.json else format_report(out, args.file)
    )
    return 0
