"""The simulator's extended patterns (flagstream.simulation.patterns): card testing,
account takeover, merchant bust-out and drift, and the reference stream they leave alone."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import replace

import numpy as np
import pytest

from flagstream.simulation.patterns import AccountTakeover, BustOut, CardTesting, Drift
from flagstream.simulation.simulator import SimulationConfig, add_arguments, run, simulate, write_stream

#: Hashes of streams written before the patterns existed (same seed, same numpy).
BEFORE = {
    SimulationConfig(customers=300, terminals=600, days=60, radius=25.0, seed=5):
        "fe71a922651646ee6b59b46d1c61ef86be43dfcf8691c725f782fb42b55e0e5b",
    SimulationConfig(customers=40, terminals=80, days=6, radius=20.0, seed=7):
        "0ad2c9ecfe35e91a4bc82a1922ec495c1053c0b63f1bf409fc80dc19b337a39e",
}  # fmt: skip
#: ``flagstream simulate --out var/ref.jsonl.gz`` before the patterns existed.
REFERENCE_SHA256 = "4c8e35b5472f92472063e141244c571d655ac02391e851becddb38e0ee6002b3"
#: 600 cards for 90 days with every pattern at 4x its default rate (plenty of each).
WORLD = SimulationConfig(customers=600, terminals=1_200, days=90, radius=5.0 * np.sqrt(10), seed=11)
ALL = replace(
    WORLD,
    scenarios=(1, 2, 3, 4, 5, 6),
    card_testing=CardTesting(rate=2.0),
    takeover=AccountTakeover(rate=2.0),
    bust_out=BustOut(rate=10.0),
)


def sha256_of(config: SimulationConfig, path) -> str:
    write_stream(simulate(config), path, progress=False)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base():
    return simulate(WORLD)


@pytest.fixture(scope="module")
def extended():
    return simulate(ALL)


@pytest.mark.parametrize("config", list(BEFORE), ids=["small", "tiny"])
def test_streams_without_the_new_options_are_byte_identical_to_before(config, tmp_path):
    assert sha256_of(config, tmp_path / "s.jsonl.gz") == BEFORE[config]


@pytest.mark.slow
def test_reference_stream_is_byte_identical_to_before(tmp_path):
    assert sha256_of(SimulationConfig(), tmp_path / "ref.jsonl.gz") == REFERENCE_SHA256


def test_patterns_add_rows_and_leave_the_reference_rows_alone(base, extended):
    old = extended.scenario <= 3
    for name in ("time_ms", "customer", "terminal", "amount", "is_fraud", "scenario"):
        np.testing.assert_array_equal(getattr(extended, name)[old], getattr(base, name))
    new = extended.scenario[~old]
    assert set(np.unique(new).tolist()) == {4, 5, 6}
    assert extended.is_fraud[~old].all()
    assert (np.diff(extended.time_ms) >= 0).all()
    s = extended.summary()
    assert s["n_fraud"] == sum(s[f"n_scenario_{k}"] for k in range(1, 7))
    assert "n_scenario_4" not in simulate(replace(WORLD, days=3)).summary()


def test_card_testing_is_a_run_of_tiny_probes_at_one_merchant_then_large_purchases(extended):
    p, sim = ALL.card_testing, extended
    rows = np.flatnonzero(sim.scenario == 4)
    cards = np.unique(sim.customer[rows])
    assert len(cards) > 50
    for card in cards.tolist():
        mine = rows[sim.customer[rows] == card]  # already in time order
        amount, t_s = sim.amount[mine], sim.time_ms[mine] // 1000
        tiny = amount <= p.probe_amount[1]
        shape = "".join("p" if x else "c" for x in tiny)
        complete = re.fullmatch(r"(p{3,8}c{1,3})+", shape)
        end_s = (sim.time_ms[0] // 86_400_000 + ALL.days) * 86_400
        cut = re.fullmatch(r"(p{3,8}c{1,3})*p{3,8}c{0,2}", shape) and end_s - t_s[-1] < 3 * 86_400
        assert complete or cut, (card, shape)  # an episode may be cut by the end of the period
        for probes in re.finditer(r"p+", shape):
            lo, hi = probes.span()
            assert len(set(sim.terminal[mine[lo:hi]].tolist())) == 1  # probes at one merchant
            assert (np.diff(t_s[lo:hi]) <= p.probe_gap_s[1]).all()  # in a burst
            if hi < len(shape):
                assert t_s[hi] - t_s[hi - 1] >= 3600 * p.cashout_delay_h[0] - 1  # then, later, cash
                assert amount[hi] >= p.cashout_factor[0] * sim.customer_mean[card] - 0.01


def test_account_takeover_buys_far_from_the_cards_home(extended):
    sim, p = extended, ALL.takeover
    distance = np.hypot(*(sim.customer_xy[sim.customer] - sim.terminal_xy[sim.terminal]).T)
    ato = sim.scenario == 5
    assert ato.sum() > 100
    assert (distance[ato] >= p.min_distance - ALL.radius).all()
    assert (distance[sim.scenario <= 3] < ALL.radius).all()  # everyone else buys near home
    ratio = sim.amount[ato] / sim.customer_mean[sim.customer[ato]]
    assert ratio.min() >= p.amount_factor[0] - 0.01 and ratio.max() <= p.amount_factor[1] + 0.01


def test_bust_out_merchants_see_many_new_cards_with_growing_volume(extended):
    sim = extended
    bust = np.flatnonzero(sim.scenario == 6)
    merchants = np.unique(sim.terminal[bust])
    assert len(merchants) >= 5 and len(bust) > 20 * len(merchants)
    day = sim.time_ms // 86_400_000
    new_share, early, late = [], 0, 0
    for m in merchants.tolist():
        mine = bust[sim.terminal[bust] == m]
        first = day[mine].min()
        genuine_before = (sim.terminal == m) & (sim.scenario == 0) & (day < first)
        known = set(sim.customer[genuine_before].tolist())
        new_share.append(np.mean([c not in known for c in sim.customer[mine].tolist()]))
        assert len(np.unique(sim.customer[mine])) <= ALL.bust_out.ring[1]  # a ring of cards
        span = day[mine] - first
        middle = span.max() / 2
        early += int((span < middle).sum())
        late += int((span >= middle).sum())
    assert np.mean(new_share) > 0.9  # cards the merchant had never seen
    assert late > 2 * early  # volume grows until it busts out


def test_drift_changes_genuine_amounts_and_times_slowly_and_nothing_else(base):
    drifted = simulate(replace(WORLD, drift=Drift(amount=0.3, hours=2.0)))
    assert sorted(drifted.scenario.tolist()) == sorted(base.scenario.tolist())
    fraud = drifted.is_fraud == 1
    assert sorted(drifted.amount[fraud].tolist()) == sorted(base.amount[base.is_fraud == 1].tolist())
    start = base.time_ms.min() // 86_400_000

    def genuine_by_period(sim):
        day = sim.time_ms // 86_400_000 - start
        g = sim.is_fraud == 0
        tod = (sim.time_ms // 1000) % 86_400
        return [
            (sim.amount[g & sel].mean(), tod[g & sel].mean() / 3600)
            for sel in (day < 10, day >= WORLD.days - 10)
        ]

    (a0, h0), (a1, h1) = genuine_by_period(base)
    (b0, k0), (b1, k1) = genuine_by_period(drifted)
    assert abs(b0 / a0 - 1) < 0.05  # hardly any change in the first days
    assert 1.2 < b1 / a1 < 1.4  # about +30 % by the last days (0.3 * 85/90 on average)
    assert abs(k0 - h0) < 0.3 and 1.2 < k1 - h1 < 2.2  # later in the day by about 2 h


def test_cli_switches_patterns_on_with_their_rates(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "x.jsonl"
    argv = (
        "--customers 200 --terminals 400 --days 30 --radius 25 --seed 2 --scenarios 1,2,3,4,5,6 "
        "--card-testing-rate 5 --takeover-rate 5 --bust-out-rate 50 --drift-amount 0.2 "
        f"--no-progress --out {out}"
    )
    assert run(parser.parse_args(argv.split())) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(summary[f"n_scenario_{k}"] > 0 for k in (4, 5, 6))
    codes = {json.loads(line)["fraud_scenario"] for line in out.read_text().splitlines()}
    assert {4, 5, 6} <= codes
    assert run(parser.parse_args(["--takeover-rate", "-1", "--no-progress"])) == 2
    assert run(parser.parse_args(["--scenarios", "7", "--no-progress"])) == 2
