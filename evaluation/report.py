"""A backtest's report: one PNG (precision-recall curve, daily metrics) and its JSON.

Matplotlib runs on the Agg backend: no display is needed.

>>> import numpy as np, tempfile
>>> from flagstream.evaluation.backtest import BacktestResult
>>> rows = [{"date": "2018-08-08", "test": True, "n": 10, "fraud": 1, "flagged": 2,
...          "recall": 1.0, "fdr": 0.5, "auc": 0.9, "ap": 0.5}]
>>> result = BacktestResult({"auc": 0.9}, rows, np.array([0.5, 1.0]), np.array([1.0, 1.0]), [])
>>> with tempfile.TemporaryDirectory() as tmp:
...     png, js = write_report(result, tmp)
...     png.stat().st_size > 1000, js.name
(True, 'backtest.json')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from flagstream.simulation.patterns import SCENARIO_NAMES

if TYPE_CHECKING:
    from flagstream.evaluation.backtest import BacktestResult

#: Published best batch row on the same test week (AUC, AP, CP@100), for the plot's legend.
REFERENCE_BEST = {"auc": 0.872, "average_precision": 0.694, "card_precision_at_100": 0.304}


def report_json(result: BacktestResult, max_malformed: int = 1000) -> dict[str, Any]:
    """Metrics, daily rows and (the first ``max_malformed``) bad lines as one JSON object."""
    return {
        **result.metrics,
        "daily": result.daily,
        "malformed": [{"line": n, "reason": r} for n, r in result.malformed[:max_malformed]],
    }


def _dates(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([r["date"] for r in rows], dtype="datetime64[D]")


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=np.float64)


def plot(result: BacktestResult, path: str | os.PathLike[str]) -> Path:
    """Draw the report figure to ``path`` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, rows = result.metrics, result.daily
    fig, (ax_pr, ax_rank, ax_flag) = plt.subplots(
        1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1.5, 1.5]}
    )
    ax_pr.step(result.pr_recall, result.pr_precision, where="post", color="C0")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax_pr.set_title(
        f"test window: AP {m.get('average_precision', float('nan')):.3f}, "
        f"AUC {m.get('auc', float('nan')):.3f}",
        fontsize=10,
    )
    ax_pr.axhline(REFERENCE_BEST["average_precision"], color="grey", ls=":", lw=1)
    ax_pr.text(0.02, REFERENCE_BEST["average_precision"] + 0.01, "best published AP", fontsize=8)

    dates = _dates(rows)
    test = np.array([r["test"] for r in rows], dtype=bool)
    for ax in (ax_rank, ax_flag):
        if test.any():
            ax.axvspan(dates[test][0], dates[test][-1] + 1, color="orange", alpha=0.15, lw=0)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax_rank.plot(dates, _column(rows, "auc"), label="AUC", color="C0")
    ax_rank.plot(dates, _column(rows, "ap"), label="AP", color="C1")
    ax_rank.set(ylim=(0, 1.02), title="daily ranking quality (all cards; test window shaded)")
    ax_rank.legend(loc="lower right", fontsize=8)
    ax_flag.bar(dates, _column(rows, "flagged"), color="C2", alpha=0.6, label="flagged / day")
    ax_flag.set_ylabel("flagged per day")
    ax_rec = ax_flag.twinx()
    ax_rec.plot(dates, _column(rows, "recall"), color="C3", label="recall")
    ax_rec.plot(dates, _column(rows, "fdr"), color="C4", ls="--", label="false-discovery rate")
    ax_rec.set(ylim=(0, 1.02))
    ax_rec.legend(loc="upper left", fontsize=8)
    ax_flag.set_title(f"operating point (threshold {m.get('threshold', float('nan')):g})")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_report(result: BacktestResult, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``backtest.png`` and ``backtest.json`` into ``out_dir`` (created if needed)."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    png = plot(result, directory / "backtest.png")
    js = directory / "backtest.json"
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    js.write_bytes(orjson.dumps(report_json(result), option=options) + b"\n")
    return png, js


def format_table(metrics_: dict[str, Any]) -> str:
    """The headline numbers as an aligned two-column table."""
    rows = [
        ("AUC ROC", "auc", ".4f"),
        ("Average precision", "average_precision", ".4f"),
        ("Card precision@100", "card_precision_at_100", ".4f"),
        ("Recall", "recall", ".4f"),
        ("False-discovery rate", "false_discovery_rate", ".4f"),
        ("Flags per day", "flags_per_day", ".1f"),
        ("Events/s", "events_per_s", ",.0f"),
        ("Events scored", "n_events", ","),
        ("Frauds streamed", "n_fraud", ","),
        ("Test events (evaluated)", "n_test_events", ","),
        ("Test frauds (evaluated)", "n_test_fraud", ","),
        ("Malformed/rejected lines", "malformed_lines", ","),
        ("Wall time (s)", "wall_seconds", ".1f"),
    ]
    window = "..".join(metrics_.get("test_window", []))
    lines = [
        f"backtest {window} (protocol {metrics_.get('protocol')}, threshold {metrics_.get('threshold')})"
    ]
    for label, key, fmt in rows:
        value = metrics_.get(key)
        text = "n/a" if value is None or value != value else format(value, fmt)
        lines.append(f"  {label:<26}{text:>12}")
    by_scenario = sorted((metrics_.get("by_scenario") or {}).items(), key=lambda kv: int(kv[0]))
    if by_scenario:
        lines.append("  Recall by fraud scenario (test window)")
    for code, m in by_scenario:
        label = f"{code} {SCENARIO_NAMES.get(int(code), 'scenario ' + code)}"
        recall = "n/a" if m["recall"] != m["recall"] else format(m["recall"], ".4f")
        lines.append(f"    {label:<24}{recall:>12}  ({m['n']:,} frauds)")
    challengers = metrics_.get("challengers") or {}
    if challengers:
        lines.append("  side by side (test window):   AUC      AP  CP@100  recall  flags/day")
        for name, m in {"champion": metrics_, **challengers}.items():
            lines.append(
                f"  {name:<26}{m['auc']:>8.4f}{m['average_precision']:>8.4f}"
                f"{m['card_precision_at_100']:>8.4f}{m['recall']:>8.4f}{m['flags_per_day']:>11.1f}"
            )
    return "\n".join(lines)
