"""The comparison harness: agreement logic, exit status, and a tiny real run.

No speed thresholds here: the figures depend on the machine (and on whatever else
runs on it). The goals are checked by ``python -m flagstream.perf compare`` itself and
reported in its ``goals`` section. What is asserted is that every contender asked for
ran, produced figures and decided every transaction, and that the decisions compared
are the ones the trained champion gives in-process.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from kafka_helpers import ROOT

from flagstream.codec import loads
from flagstream.features.layout import ACCOUNT_WIDTH
from flagstream.perf.__main__ import main as perf_main
from flagstream.perf.bench import harness, workload
from flagstream.perf.bench.contenders import CONTENDERS
from flagstream.perf.bench.harness import REFERENCE, compare_decisions, passed
from flagstream.perf.bench.measure import (
    Decision,
    agreement,
    percentiles,
    read_decisions,
    throughput,
)
from flagstream.scoring.handle import DEFAULT_KIND, LINEAGES, MODEL_KINDS, ModelHandle, model_from_state
from flagstream.scoring.policy import FixedThreshold
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.topics import SCORES

ALL = ("flagstream", "naive_faust", REFERENCE)
API = ("api", "api_2w", "api_mixed")
API_ON_WORKERS = ("api_worker", "api_worker_2w", "api_worker_mixed")


def decisions(n: int, flip: int | None = None, nudge: tuple[int, float] | None = None,
              drop: int | None = None) -> dict[str, Decision]:
    """``n`` decisions (every fourth one flagged), optionally with one decision flipped,
    one score moved, or one transaction left out."""
    out = {}
    for i in range(n):
        review = i % 4 == 0
        if i == flip:
            review = not review
        score = (0.9 if review else 0.1) + i * 1e-4
        if nudge is not None and i == nudge[0]:
            score += nudge[1]
        if i != drop:
            out[f"t-{i:03d}"] = Decision("review" if review else "approve", score, i)
    return out


def test_agreement_counts_same_differing_and_missing():
    ref = {"a": Decision("approve", 0.1, 0), "b": Decision("review", 0.9, 0),
           "c": Decision("approve", 0.2, 0), "d": Decision("approve", 0.3, 0)}
    other = {"a": Decision("approve", 0.1 + 1e-12, 5), "b": Decision("approve", 0.9, 0),
             "c": Decision("approve", 0.2 + 1e-6, 0), "x": Decision("approve", 0.0, 0)}
    got = agreement(ref, other)
    assert (got["same"], got["differing"], got["missing"], got["extra"]) == (1, 2, 1, 1)
    assert got["share"] == 0.25 and len(got["examples"]) == 2


def test_flagstream_agreeing_with_the_ceiling_passes():
    ref = decisions(40)
    result = compare_decisions({"flagstream": decisions(40, nudge=(3, 1e-10)),
                                "naive_faust": decisions(40), REFERENCE: ref})
    assert result["reference"] == REFERENCE
    assert result["flagstream_matches_ceiling"] is True
    for name in ("flagstream", "naive_faust"):
        assert (result[name]["compared"], result[name]["same"], result[name]["share"]) == (40, 40, 1.0)
    assert passed({"agreement": result})


@pytest.mark.parametrize(
    ("flagstream", "differing", "missing", "examples"),
    [
        (decisions(40, flip=8), 1, 0, ["t-008"]),  # a decision flipped, same score
        (decisions(40, nudge=(9, 2e-9)), 1, 0, ["t-009"]),  # a score beyond the tolerance
        (decisions(40, drop=17), 0, 1, []),  # a transaction it never decided
        ({}, 0, 40, []),  # no decisions at all
    ],
)
def test_flagstream_differing_from_or_missing_ceiling_decisions_fails(flagstream, differing, missing,
                                                                      examples):
    result = compare_decisions({"flagstream": flagstream, REFERENCE: decisions(40)})
    fs = result["flagstream"]
    assert (fs["compared"], fs["differing"], fs["missing"]) == (40, differing, missing)
    assert [e["transaction_id"] for e in fs["examples"]] == examples
    assert result["flagstream_matches_ceiling"] is False
    assert not passed({"agreement": result})


def test_a_ceiling_that_decided_nothing_fails_the_comparison():
    result = compare_decisions({"flagstream": decisions(40), REFERENCE: {}})
    assert result["flagstream_matches_ceiling"] is False
    assert not passed({"agreement": result})


def test_a_comparison_without_the_ceiling_or_flagstream_does_not_pass():
    assert not passed({"agreement": compare_decisions({"flagstream": decisions(40),
                                                       "naive_faust": decisions(40)})})
    assert not passed({"agreement": compare_decisions({"naive_faust": decisions(40),
                                                       REFERENCE: decisions(40)})})


def test_the_traced_worker_is_held_to_the_ceiling_like_the_worker():
    ref = decisions(40)
    assert passed({"agreement": compare_decisions({"flagstream_traced": decisions(40), REFERENCE: ref})})
    assert not passed({"agreement": compare_decisions({"flagstream_traced": decisions(40, flip=3),
                                                       REFERENCE: ref})})
    assert not passed({"agreement": compare_decisions({"flagstream": decisions(40),
                                                       "flagstream_traced": decisions(40, drop=1),
                                                       REFERENCE: ref})})


def fake_report(flagstream: dict[str, Decision]) -> dict:
    return {"contenders": {}, "agreement": compare_decisions({"flagstream": flagstream,
                                                              REFERENCE: decisions(10)}),
            "goals": {}}


@pytest.mark.parametrize(("flagstream", "code"), [(decisions(10), 0), (decisions(10, flip=2), 1),
                                                  (decisions(10, drop=0), 1)])
def test_compare_command_exit_status_follows_the_agreement(monkeypatch, capsys, flagstream, code):
    report = fake_report(flagstream)
    monkeypatch.setattr(harness, "run", lambda opts: report)
    assert perf_main(["compare", "--json", "--broker", "127.0.0.1:1"]) == code
    out = capsys.readouterr()
    assert json.loads(out.out)["agreement"] == json.loads(json.dumps(report["agreement"]))
    assert ("FAIL" in out.err) == bool(code)


def test_a_run_without_flagstream_or_the_ceiling_says_nothing_was_compared(monkeypatch, capsys):
    report = {"contenders": {}, "agreement": compare_decisions({"naive_faust": decisions(10)}),
              "goals": {}}
    monkeypatch.setattr(harness, "run", lambda opts: report)
    assert perf_main(["compare", "--json", "--broker", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "not compared" in err and "differ" not in err


def test_the_benchmark_trains_the_default_champions_kind_unless_told():
    assert harness.Options().model == DEFAULT_KIND
    rng = random.Random(3)
    records = [{"transaction_id": f"t-{i}", "account_id": f"c-{i % 7}", "merchant_id": "m-1",
                "amount": round(rng.uniform(1, 900), 2),
                "timestamp": f"2018-04-01T00:{i // 60:02d}:{i % 60:02d}Z"} for i in range(200)]
    labels = [int(r["amount"] > 700) for r in records]
    for kind in MODEL_KINDS:
        state = workload.train_champion(records, labels, 20.0, kind)
        record = workload.champion_record(state)
        assert state["kind"] == kind and state["n_learned"] == 200
        assert record["version"] == f"{LINEAGES[kind]}-000001"
    assert workload.champion_record(state, "lr-000009")["version"] == "lr-000009"


def test_a_stream_generated_for_a_smaller_run_is_not_reused_for_a_larger_one(tmp_path, monkeypatch):
    monkeypatch.setattr(workload, "REFERENCE_STREAM", tmp_path / "absent.jsonl.gz")
    small = workload.ensure_stream(None, tmp_path, 1_000)
    assert workload.ensure_stream(None, tmp_path, 1_000) == small
    large = workload.ensure_stream(None, tmp_path, 12_000)
    assert large != small
    assert len(workload.load_workload(large, 2_000, 10_000, (), 1.0, 4).preload) == 10_000


def test_throughput_and_percentiles():
    assert throughput([0, 0, 1000, 2000]) == 1.0
    assert math.isnan(throughput([5]))
    p = percentiles(range(1, 101))
    assert p["p50_ms"] == pytest.approx(50.5) and p["max_ms"] == 100


def in_process(report: dict, out: Path) -> tuple[list[str], dict[str, Decision]]:
    """The transaction ids every contender was given, in order, and the decisions the
    benchmark's champion makes on them through the core, in this process."""
    o = report["options"]
    wl = workload.load_workload(Path(report["setup"]["stream"]), o["train"], o["events"],
                                report["setup"]["workload_rates"], o["rate_seconds"], o["partitions"])
    records = [*wl.preload, *(r for phase in wl.phases.values() for r in phase)]
    state = loads((out / "champion.json").read_bytes())["state"]
    assert state["kind"] == DEFAULT_KIND, "the benchmark measures the champion that ships"
    core = ScoringCore(ModelHandle(model_from_state(state)), FixedThreshold(o["threshold"]))
    outcome = core.process([r.value for r in records])
    assert not outcome.rejections
    got = {d["transaction_id"]: Decision(d["decision"], d["score"], 0) for d in outcome.decisions}
    return [r.transaction_id for r in records], got


def read_back(report: dict, broker: str) -> dict[str, tuple[dict[str, Decision], int]]:
    """Each contender's decisions as it left them on its ``scores`` topic, then its topics deleted."""
    async def go() -> dict:
        found = {}
        for name in report["contenders"]:
            s = Settings(broker=broker, topic_prefix=f"{report['prefix']}{name}.")
            try:
                found[name] = await read_decisions(s, SCORES)
            finally:
                await workload.delete_topics(s)
        return found

    return asyncio.run(go())


@pytest.mark.integration
def test_tiny_compare_run_runs_every_contender_on_the_same_decisions(kafka_broker, tmp_path):
    """12,000 records: enough for every contender to need several fetches (a rate needs
    decisions landing at more than one instant)."""
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "flagstream.perf", "compare", "--json", "--events", "12000",
         "--rates", "400", "--rate-seconds", "2", "--train", "2000", "--out-dir", str(out),
         "--broker", kafka_broker, "--keep-topics"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    assert report, result.stderr[-3000:]
    by_contender = read_back(report, kafka_broker)  # (before any assertion: topics are deleted)
    assert result.returncode == 0, result.stderr[-3000:]
    # every contender runs by default except the scoring API's, the stage tracer and the
    # worker with Faust's consumer thread (``make bench`` runs that one for the comparison)
    assert sorted(CONTENDERS) == sorted([*ALL, *API, *API_ON_WORKERS, "flagstream_traced",
                                         "flagstream_threaded"])
    assert list(report["contenders"]) == list(ALL) == report["options"]["contenders"]

    for name, figures in report["contenders"].items():
        assert figures["complete"], (name, figures.get("log_tail"))
        assert figures["events"] == figures["decided"] == 12_000, name
        for key in ("events_per_s", "cpu_s_per_1k", "peak_rss_mb", "startup_s", "drain_s"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (name, key, figures[key])
        assert figures["latency_rate"] == 400
        lat = figures["latency"]["400"]
        assert lat["decided"] == lat["sent"] == 800, name
        assert 0 <= lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"], (name, lat)
        assert (figures["p50_ms"], figures["p99_ms"]) == (lat["p50_ms"], lat["p99_ms"])

    agreement_ = report["agreement"]
    assert agreement_["reference"] == REFERENCE and agreement_["flagstream_matches_ceiling"] is True
    for name in ("flagstream", "naive_faust"):
        a = agreement_[name]
        assert (a["compared"], a["same"], a["differing"], a["missing"], a["extra"]) == (
            12_800, 12_800, 0, 0, 0), (name, a)

    # the decisions compared are the champion's, on exactly the transactions sent
    ids, expected = in_process(report, out)
    flagged = sum(d.decision == "review" for d in expected.values())
    assert 0 < flagged < len(expected), "the benchmark must compare non-trivial decisions"
    assert len(ids) == len(set(ids)) == len(expected) == 12_800
    for name, (got, _repeats) in by_contender.items():
        assert set(got) == set(ids), name
        a = agreement(expected, got)
        assert a["same"] == 12_800, (name, a)

    assert report["goals"]["one_worker_events_per_s"] == report["contenders"]["flagstream"]["events_per_s"]
    assert {"numba_compile_s", "broker_start_s"} <= set(report["setup"])
    assert report["memory_per_account"]["row_bytes"] == ACCOUNT_WIDTH * 8
    assert json.loads((out / "compare.json").read_bytes())["agreement"] == agreement_
    assert (out / "compare.png").stat().st_size > 10_000


def test_the_issues_goals_are_judged_on_the_run():
    lat = {"5000": {"p99_ms": 45.0}}
    report = {"flagstream": {"events_per_s": 30_000.0, "latency": lat, "cpu_s_per_1k": 0.0394},
              REFERENCE: {"events_per_s": 25_000.0, "latency": {"5000": {"p99_ms": 20.0}}},
              "api": {"latency": {"1000": {"p50_ms": 8.0, "p99_ms": 31.0, "answered": 10}}},
              "api_worker": {"latency": {"1000": {"p50_ms": 11.0, "p99_ms": 30.0, "answered": 10}}}}
    got = harness.goals(report)
    assert got["vs_aiokafka_ceiling_met"] is True and got["vs_aiokafka_ceiling_target"] == 1.0
    assert got["p99_le_50ms_at_5000"] is True
    assert (got["p99_vs_ceiling_at_5000"], got["p99_le_2x_ceiling_at_5000"]) == (2.25, False)
    assert (got["api_p50_le_10ms_at_1000"], got["api_p99_le_30ms_at_1000"]) == (True, False)
    assert (got["api_worker_p50_le_10ms_at_1000"], got["api_worker_p99_le_30ms_at_1000"]) == (False, True)
    assert "api_p50_ms_at_1000" not in harness.goals({"flagstream": report["flagstream"]})
    # CPU per event: a third below the 0.059 s per 1,000 events of the issue, so at most 0.0393
    assert (got["cpu_target_s_per_1k"], got["cpu_third_below_issue_baseline"]) == (0.0393, False)
    report["flagstream"]["cpu_s_per_1k"] = 0.0393
    assert harness.goals(report)["cpu_third_below_issue_baseline"] is True
    assert "cpu_s_per_1k" not in harness.goals({"flagstream": {"events_per_s": 1.0}})


def test_api_and_mixed_contenders_replay_their_own_rates():
    opts = harness.Options(rates=(1_000, 5_000), api_rates=(500, 1_000, 2_000),
                           contenders=("flagstream", "api_mixed"))
    assert harness.contender_rates(CONTENDERS["flagstream"], opts) == (1_000, 5_000)
    assert harness.contender_rates(CONTENDERS["api_mixed"], opts) == (500, 1_000, 2_000)
    assert harness.workload_rates(opts) == (500, 1_000, 2_000, 5_000)
    assert harness.workload_rates(harness.Options(contenders=ALL)) == (1_000, 5_000)
    workers = [CONTENDERS[n].workers for n in API + API_ON_WORKERS]
    assert workers == [1, 2, 1, 1, 2, 1]
    assert [CONTENDERS[n].api_on_worker for n in API + API_ON_WORKERS] == [False] * 3 + [True] * 3


@pytest.mark.integration
def test_tiny_api_run_measures_one_worker_two_workers_and_the_mixed_load(kafka_broker, tmp_path):
    """The API contenders on a small input: every call answered (by a worker, or by the
    fallback past the deadline), two workers in one group, both paths of the mixed run;
    with ``flagstream api`` and with the API on the workers."""
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "flagstream.perf", "compare", "--json", "--events", "3000",
         "--rates", "300", "--api-rates", "100,200", "--rate-seconds", "2", "--train", "2000",
         "--contenders", f"flagstream,{','.join(API + API_ON_WORKERS)},{REFERENCE}", "--out-dir", str(out),
         "--broker", kafka_broker, "--no-chart"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    assert report, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["setup"]["workload_rates"] == [100, 200, 300]
    figures = report["contenders"]
    assert list(figures["flagstream"]["latency"]) == list(figures[REFERENCE]["latency"]) == ["300"]
    for name in API + API_ON_WORKERS:
        c = figures[name]
        assert c["complete"], (name, c.get("log_tail"))
        assert c["path"] == CONTENDERS[name].path and c["workers"] == CONTENDERS[name].workers
        assert c["group_members"] == c["workers"], name
        assert list(c["latency"]) == ["100", "200"], name
        for rate, lat in c["latency"].items():
            api = lat["api"] if c["path"] == "mixed" else lat
            calls = int(rate) * 2 // (2 if c["path"] == "mixed" else 1)
            outcomes = api["outcomes"]
            assert sum(outcomes.values()) == calls, (name, rate, outcomes)
            assert set(outcomes) <= {"200", "fallback"}, (name, rate, outcomes)
            assert api["answered"] == outcomes.get("200", 0) >= calls // 2, (name, rate, outcomes)
            assert 0 < api["p50_ms"] <= api["p99_ms"] <= api["max_ms"], (name, rate, api)
            if c["path"] == "mixed":  # the stream half: produced, decided, measured
                assert lat["sent"] == lat["decided"] == int(rate), (name, rate, lat)
                assert 0 <= lat["p50_ms"] <= lat["p99_ms"], (name, rate, lat)
    assert report["agreement"]["flagstream_matches_ceiling"] is True
    assert {"api_p50_ms_at_1000", "p99_ms_at_5000"}.isdisjoint(report["goals"])


def test_the_steps_benchmark_scores_steps_of_each_size_with_a_trained_champion(tmp_path, capsys):
    from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

    stream = tmp_path / "stream.jsonl.gz"
    write_stream(simulate(SimulationConfig(customers=120, terminals=240, days=8, seed=3)), stream,
                 progress=False)
    assert perf_main(["steps", "--json", "--sizes", "1,3", "--calls", "20", "--repeats", "1",
                      "--train", "400", "--stream", str(stream)]) == 0
    report = loads(capsys.readouterr().out)
    assert sorted(report) == ["1", "3"]
    for size, row in report.items():
        assert row["calls"] == 20 and row["us_per_call"] > 0
        assert row["us_per_record"] == pytest.approx(row["us_per_call"] / int(size), rel=0.01, abs=0.01)
