"""Tests of flagstream.simulation.simulator: determinism, wire schema, ordering, statistics,
stream reading."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest

from flagstream.simulation.scenarios import (
    CUSTOMER_WINDOW_DAYS,
    CUSTOMERS_PER_DAY,
    TERMINAL_WINDOW_DAYS,
    TERMINALS_PER_DAY,
    expected_window_share,
    reachable_terminals,
)
from flagstream.simulation.simulator import (
    FIELDS,
    MalformedLineError,
    SimulationConfig,
    add_arguments,
    load_stream,
    read_stream,
    run,
    simulate,
    write_stream,
)

#: The published reference run (5,000 customers, 10,000 terminals, 183 days).
REF = {"n": 1_754_155, "fraud": 14_681, "s1": 978, "s2": 9_099, "s3": 4_604}
REF_CUSTOMERS, REF_TERMINALS, DAYS = 5_000, 10_000, 183
#: P(0 <= time of day < 86400) for Normal(43200, 20000).
P_TIME = math.erf(43_200 / (20_000 * math.sqrt(2)))
#: Reduced size: a tenth of the customers and terminals. The radius grows by sqrt(10) so the
#: terminal density seen by a customer (~78.5 reachable terminals) and the customers per
#: terminal (~39) stay as in the reference, hence so does the traffic of a terminal.
SMALL = SimulationConfig(customers=500, terminals=1_000, radius=5.0 * math.sqrt(10))
TINY = SimulationConfig(customers=40, terminals=80, days=6, radius=20.0, seed=7)


@pytest.fixture(scope="module")
def small():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def tiny():
    return simulate(TINY)


def test_determinism_under_seed(tiny, tmp_path):
    again = simulate(TINY)
    for name in ("time_ms", "customer", "terminal", "amount", "is_fraud", "scenario"):
        np.testing.assert_array_equal(getattr(tiny, name), getattr(again, name))
    other = simulate(replace(TINY, seed=8))
    assert len(other) != len(tiny) or not np.array_equal(other.amount, tiny.amount)
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_stream(tiny, a, progress=False)
    write_stream(again, b, progress=False)
    assert a.read_bytes() == b.read_bytes()  # gzip mtime is pinned


def test_a_stream_is_written_into_a_folder_that_does_not_exist_yet(tiny, tmp_path):
    # a fresh clone has no var/: the README's `flagstream simulate --out var/ref.jsonl.gz`
    path = tmp_path / "var" / "nested" / "s.jsonl.gz"
    assert write_stream(tiny, path, progress=False) == len(tiny)
    assert len(gzip.decompress(path.read_bytes()).splitlines()) == len(tiny)


def test_per_line_schema(tiny, tmp_path):
    path = tmp_path / "s.jsonl"
    assert write_stream(tiny, path, progress=False) == len(tiny) > 0
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(tiny)
    for i, line in enumerate(lines):
        rec = json.loads(line)
        assert tuple(rec) == FIELDS
        assert rec["transaction_id"] == f"t-{i:09d}"
        assert re.fullmatch(r"c-\d+", rec["account_id"])
        assert re.fullmatch(r"m-\d+", rec["merchant_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["timestamp"])
        assert (rec["currency"], rec["channel"]) == ("USD", "card")
        assert isinstance(rec["amount"], float) and rec["amount"] == round(rec["amount"], 2)
        for key in ("customer_x", "customer_y", "merchant_x", "merchant_y"):
            assert isinstance(rec[key], float) and 0 <= rec[key] <= 100
            assert rec[key] == round(rec[key], 2)
        assert rec["is_fraud"] in (0, 1) and rec["fraud_scenario"] in (0, 1, 2, 3)
        assert rec["is_fraud"] == (rec["fraud_scenario"] != 0)
        c, t = tiny.customer[i], tiny.terminal[i]
        assert rec["account_id"] == f"c-{c}" and rec["merchant_id"] == f"m-{t}"
        assert rec["amount"] == tiny.amount[i]
        assert rec["customer_x"] == round(float(tiny.customer_xy[c, 0]), 2)
        assert rec["merchant_y"] == round(float(tiny.terminal_xy[t, 1]), 2)
    first = np.datetime64(json.loads(lines[0])["timestamp"][:-1])
    assert first == tiny.time_ms[0].astype("datetime64[ms]")


def test_time_ordering_is_stable(small):
    t = small.time_ms
    assert (np.diff(t) >= 0).all()
    assert (t % 1000 == 0).all()  # whole seconds
    start = np.datetime64("2018-04-01", "ms").astype(np.int64)
    assert t[0] >= start and t[-1] < start + DAYS * 86_400_000
    tied = np.flatnonzero(np.diff(t) == 0)  # generated customer by customer, sorted stably
    assert len(tied) and (small.customer[tied + 1] >= small.customer[tied]).all()


def test_terminals_within_radius(small):
    d = np.hypot(*(small.customer_xy[small.customer] - small.terminal_xy[small.terminal]).T)
    assert (d < SMALL.radius).all()
    rng = np.random.default_rng(1)
    cust, term = rng.random((200, 2)) * 100, rng.random((3000, 2)) * 100
    offsets, reach = reachable_terminals(cust, term, 4.0)
    brute = ((cust[:, None] - term[None]) ** 2).sum(-1) < 16.0
    for c in range(200):
        assert reach[offsets[c] : offsets[c + 1]].tolist() == np.flatnonzero(brute[c]).tolist()


def test_reduced_size_rates(small):
    # Volume. Reference: 1,754,155 / (5,000 * 183) = 1.917 tx per customer-day; the model's
    # expectation is E[U(0,4)] * P_TIME = 1.938. With 500 customers the mean daily rate has a
    # standard error of (4/sqrt(12))/sqrt(500) = 0.052 (2.6 %), so allow 4 sigma = 10.3 %.
    ref_rate = REF["n"] / (REF_CUSTOMERS * DAYS)
    s = small.summary()
    assert abs(s["tx_per_customer_day"] / ref_rate - 1) < 0.103
    # Given the population the count is a sum of Poissons: within 4 sqrt(E) of E.
    expected_n = DAYS * P_TIME * small.customer_rate.sum()
    assert abs(len(small) - expected_n) < 4 * math.sqrt(expected_n)
    # Per customer: observed tx/day tracks the drawn rate (slope ~ P_TIME).
    per_customer = np.bincount(small.customer, minlength=SMALL.customers) / DAYS
    slope = np.polyfit(small.customer_rate, per_customer, 1)[0]
    assert abs(slope - P_TIME) < 0.05


def _expected_scenario_counts(sim, config):
    """Expected per-scenario counts for ``sim``'s own size, scaled from the reference.

    * S1 depends only on amounts: given the population, E = sum over customers of
      rate * days * P_TIME * P(N(m, m/2) > 220); conditional sd is sqrt(E) (Poisson).
    * S2 share = P(a terminal-day lies in a compromise window), which depends on the number of
      terminals (2 draws a day out of n_t); scale the reference share by the ratio of these
      window shares. Its spread comes from terminal traffic (CV ~0.27 over 28 days) averaged
      over 366 windows: 1.4 %, 4 sigma ~ 6 %.
    * S3 = one third of the compromised customers' traffic, scaled the same way with 3 draws
      out of n_c; spread from the rates of the 549 drawn customers: 0.577/sqrt(549) = 2.5 %,
      4 sigma = 10 %.
    """
    m = sim.customer_mean
    p_big = 0.5 * np.array([math.erfc((220 - x) / (x / 2 * math.sqrt(2))) for x in m])
    s1 = float((sim.customer_rate * config.days * P_TIME * p_big).sum())

    def scale(per_day, window, population, ref_population):
        return expected_window_share(population, per_day, window, config.days) / (
            expected_window_share(ref_population, per_day, window, DAYS)
        )

    n_ratio = len(sim) / REF["n"]
    s2 = (
        REF["s2"]
        * n_ratio
        * scale(TERMINALS_PER_DAY, TERMINAL_WINDOW_DAYS, config.terminals, REF_TERMINALS)
    )
    s3 = (
        REF["s3"]
        * n_ratio
        * scale(CUSTOMERS_PER_DAY, CUSTOMER_WINDOW_DAYS, config.customers, REF_CUSTOMERS)
    )
    return s1, s2, s3


def test_reduced_size_scenario_counts_proportional(small):
    s = small.summary()
    s1, s2, s3 = _expected_scenario_counts(small, SMALL)
    assert abs(s["n_scenario_1"] - s1) < 4 * math.sqrt(s1)
    assert abs(s["n_scenario_2"] / s2 - 1) < 0.06
    assert abs(s["n_scenario_3"] / s3 - 1) < 0.10
    # Fraud share: the sum, with the wider of the tolerances.
    assert abs(s["n_fraud"] / (s1 + s2 + s3) - 1) < 0.10
    assert s["n_fraud"] == s["n_scenario_1"] + s["n_scenario_2"] + s["n_scenario_3"]


def test_reference_size_matches_published_counts():
    # The full reference size takes about a second to simulate (no file written).
    sim = simulate()
    s = sim.summary()
    assert abs(s["n_transactions"] / REF["n"] - 1) < 0.02
    assert abs(s["n_fraud"] / REF["fraud"] - 1) < 0.02
    s1, s2, s3 = _expected_scenario_counts(sim, SimulationConfig())
    assert abs(s["n_scenario_1"] - s1) < 4 * math.sqrt(s1)
    assert abs(s["n_scenario_2"] / REF["s2"] - 1) < 0.06
    assert abs(s["n_scenario_3"] / REF["s3"] - 1) < 0.10


def test_scenario_semantics(small):
    none = simulate(replace(SMALL, scenarios=()))
    assert none.is_fraud.sum() == 0 and none.scenario.sum() == 0
    only1 = simulate(replace(SMALL, scenarios=(1,)))
    assert ((only1.amount > 220) == (only1.scenario == 1)).all()
    np.testing.assert_array_equal(only1.amount, none.amount)
    # Scenario 3 multiplies amounts by 5; every changed amount is fraud.
    changed = small.amount != none.amount
    assert changed.sum() > 0 and small.is_fraud[changed].all()
    ratio = small.amount[changed] / none.amount[changed]
    assert np.allclose(ratio, np.round(ratio / 5) * 5, rtol=0.01, atol=0.05)
    assert (small.scenario[small.amount > 220] != 0).all()


def _write_lines(path, lines):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_malformed_lines_reported(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    good = b'{"transaction_id": "t-1"}'
    _write_lines(path, [good, b"{not json", good, b"[1, 2]", b"", good])
    with pytest.raises(MalformedLineError) as info:
        list(read_stream(path))
    assert info.value.line_number == 2 and "line 2" in str(info.value)
    assert isinstance(info.value, ValueError)
    reader = read_stream(path, on_error="skip")
    assert [n for n, _ in reader] == [1, 3, 6]
    assert [n for n, _ in reader.malformed] == [2, 4, 5]
    assert "JSON object" in reader.malformed[1][1]
    bad = []
    assert len(load_stream(path, on_error="skip", malformed=bad)) == 3 and len(bad) == 3
    with pytest.raises(ValueError):
        read_stream(path, on_error="ignore")


def test_gzip_round_trip(tiny, tmp_path):
    gz, plain = tmp_path / "r.jsonl.gz", tmp_path / "r.jsonl"
    assert write_stream(tiny, gz, progress=False) == len(tiny)
    write_stream(tiny, plain, progress=False)
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and plain.read_bytes()[:1] == b"{"
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()
    records = load_stream(gz)
    assert records == load_stream(plain) and len(records) == len(tiny)
    assert [r["amount"] for r in records] == tiny.amount.tolist()
    assert not list(tmp_path.glob("*.part"))


def test_cli_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "cli.jsonl.gz"
    args = parser.parse_args(
        "--customers 30 --terminals 60 --days 4 --radius 20 --seed 3 --scenarios 1,2 "
        f"--start-date 2020-02-28 --no-progress --out {out}".split()
    )
    assert run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lines_written"] == summary["n_transactions"] == len(load_stream(out))
    assert summary["scenarios"] == [1, 2] and summary["n_scenario_3"] == 0
    assert load_stream(out)[0]["timestamp"].startswith("2020-02-28T")
    assert run(parser.parse_args(["--days", "-1", "--no-progress"])) == 2
