"""The comparison as one PNG: throughput, latency percentiles per rate, CPU per event.

>>> import tempfile, pathlib
>>> report = {"contenders": {"a": {"events_per_s": 10.0, "cpu_s_per_1k": 1.0,
...           "latency": {"1000": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}}}}}
>>> with tempfile.TemporaryDirectory() as d:
...     draw(report, pathlib.Path(d) / "c.png").exists()
True
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"flagstream": "#1f77b4", "naive_faust": "#d62728", "aiokafka_ceiling": "#7f7f7f"}


def _num(value) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def draw(report: dict, path: Path) -> Path:
    """Write the chart of a ``compare`` report to ``path``."""
    contenders = report["contenders"]
    names = list(contenders)
    colors = [COLORS.get(n, "#2ca02c") for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))

    ax = axes[0]
    values = [_num(contenders[n].get("events_per_s")) for n in names]
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    ax.set_title("Throughput, draining a pre-loaded topic")
    ax.set_ylabel("events / s")

    ax = axes[1]
    rates = sorted({r for n in names for r in contenders[n].get("latency", {})}, key=int)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        lat = contenders[name].get("latency", {})
        xs = [j + i * width for j in range(len(rates))]
        for key, alpha in (("p99_ms", 0.35), ("p95_ms", 0.6), ("p50_ms", 1.0)):
            ax.bar(xs, [max(_num(lat.get(r, {}).get(key)), 0.1) for r in rates], width,
                   color=colors[i], alpha=alpha, label=name if key == "p50_ms" else None)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(rates))],
                  [f"{int(r):,}/s" for r in rates])
    ax.set_yscale("log")
    ax.set_title("Latency at fixed rates (p50 solid, p95, p99 lighter)")
    ax.set_ylabel("ms, produce → decision on scores")
    ax.legend(fontsize=8)

    ax = axes[2]
    values = [_num(contenders[n].get("cpu_s_per_1k")) for n in names]
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    ax.set_title("CPU seconds per 1,000 events (contender process)")
    for ax in axes[::2]:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
