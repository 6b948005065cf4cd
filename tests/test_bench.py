"""The comparison harness at a tiny size: report shape, agreement logic, exit status.

No speed thresholds here: the figures depend on the machine. The goals are checked
by ``python -m flagstream.perf compare`` itself and reported in its ``goals`` section.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from kafka_helpers import ROOT

from flagstream.features.layout import ACCOUNT_WIDTH
from flagstream.perf.bench.harness import REFERENCE, compare_decisions, passed
from flagstream.perf.bench.measure import Decision, agreement, percentiles, throughput

FIGURES = ("events_per_s", "p50_ms", "p95_ms", "p99_ms", "cpu_s_per_1k", "peak_rss_mb", "startup_s")


def test_agreement_counts_same_differing_and_missing():
    ref = {"a": Decision("approve", 0.1, 0), "b": Decision("review", 0.9, 0),
           "c": Decision("approve", 0.2, 0), "d": Decision("approve", 0.3, 0)}
    other = {"a": Decision("approve", 0.1 + 1e-12, 5), "b": Decision("approve", 0.9, 0),
             "c": Decision("approve", 0.2 + 1e-6, 0), "x": Decision("approve", 0.0, 0)}
    got = agreement(ref, other)
    assert (got["same"], got["differing"], got["missing"], got["extra"]) == (1, 2, 1, 1)
    assert got["share"] == 0.25 and len(got["examples"]) == 2


def test_flagstream_must_match_the_ceiling_exactly():
    same = {"t": Decision("approve", 0.5, 0)}
    ok = compare_decisions({REFERENCE: same, "flagstream": dict(same)})
    assert ok["flagstream_matches_ceiling"] and passed({"agreement": ok})
    off = compare_decisions({REFERENCE: same, "flagstream": {"t": Decision("approve", 0.5001, 0)}})
    assert not off["flagstream_matches_ceiling"] and not passed({"agreement": off})
    lost = compare_decisions({REFERENCE: same, "flagstream": {}})
    assert not passed({"agreement": lost})
    assert passed({"agreement": compare_decisions({"flagstream": same})})  # nothing to compare


def test_throughput_and_percentiles():
    assert throughput([0, 0, 1000, 2000]) == 1.0
    assert math.isnan(throughput([5]))
    p = percentiles(range(1, 101))
    assert p["p50_ms"] == pytest.approx(50.5) and p["max_ms"] == 100


@pytest.mark.integration
def test_tiny_compare_run_reports_every_contender(kafka_broker, tmp_path):
    """12,000 records: enough for every contender to need several fetches (a rate needs
    decisions landing at more than one instant)."""
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "flagstream.perf", "compare", "--json", "--events", "12000", "--rates", "400",
         "--rate-seconds", "2", "--train", "2000", "--out-dir", str(out), "--broker", kafka_broker],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report["contenders"]) == {"flagstream", "naive_faust", "aiokafka_ceiling"}
    for name, figures in report["contenders"].items():
        for key in FIGURES:
            assert isinstance(figures[key], int | float), (name, key, figures.get(key))
        assert figures["complete"] and figures["decided"] == figures["events"] == 12_000, name
        assert figures["latency"]["400"]["decided"] == figures["latency"]["400"]["sent"] == 800
    agreement = report["agreement"]
    assert agreement["reference"] == REFERENCE and agreement["flagstream_matches_ceiling"]
    assert agreement["flagstream"]["share"] == 1.0 and agreement["flagstream"]["compared"] == 12_800
    assert 0.0 <= agreement["naive_faust"]["share"] <= 1.0
    assert {"numba_compile_s", "broker_start_s"} <= set(report["setup"])
    assert report["memory_per_account"]["row_bytes"] == ACCOUNT_WIDTH * 8
    assert (out / "compare.json").exists() and (out / "compare.png").stat().st_size > 10_000
