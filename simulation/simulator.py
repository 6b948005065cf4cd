"""Seeded, vectorized simulator of the card-fraud benchmark, written as a JSON Lines stream.

Customers (location, mean amount, amount spread, daily rate) and terminals (location) live on
``[0, 100]^2``; a customer buys at any terminal within ``radius``. Every customer-day has a
Poisson number of transactions with a normal time of day and a normal amount; three fraud
scenarios (see :func:`flagstream.simulation.scenarios.apply_scenarios`) label them. Optional
patterns (card testing, account takeover, merchant bust-out: scenarios 4-6) add fraudulent
transactions, and an optional drift changes genuine ones
(:mod:`flagstream.simulation.patterns`); all are off by default. All draws are made on
whole numpy columns: the reference size (5,000 customers, 10,000 terminals, 183 days,
about 1.75 million transactions) simulates in under a second and writes in about 9 s.

Random streams, all derived from ``SimulationConfig.seed``:

* profiles: numpy's legacy ``RandomState(2*seed)`` for customers (x, y, mean amount, daily
  rate, customer by customer) and ``RandomState(2*seed + 1)`` for terminals (x, y). For seed 0
  this follows the reference benchmark's seeding convention, and the population matches it:
  its expected volume, 1,753,805 transactions, is within 0.02 % of the published 1,754,155;
* transactions: ``default_rng([seed, 1])``; scenario 3's choice: ``default_rng([seed, 3])``;
* compromised terminals/customers: :func:`flagstream.simulation.scenarios.daily_draw`.

>>> sim = simulate(SimulationConfig(customers=30, terminals=60, days=5, radius=20.0))
>>> s = sim.summary()
>>> s["n_transactions"] == len(sim) and s["days"] == 5
True
>>> s["n_fraud"] == s["n_scenario_1"] + s["n_scenario_2"] + s["n_scenario_3"]
True
>>> bool((sim.time_ms[1:] >= sim.time_ms[:-1]).all())
True
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from flagstream.extras import progress_bar
from flagstream.simulation.line_blocks import lines_of
from flagstream.simulation.patterns import (
    PATTERN_CODES,
    AccountTakeover,
    BustOut,
    CardTesting,
    Drift,
    World,
    drift,
    inject,
)
from flagstream.simulation.scenarios import apply_scenarios, reachable_terminals

SECONDS_PER_DAY = 86_400
#: Time of day ~ Normal(TIME_MEAN_S, TIME_STD_S); draws outside [0, 86400) are dropped.
TIME_MEAN_S, TIME_STD_S = 43_200.0, 20_000.0
#: Keys of one JSON Lines record, in order.
FIELDS = (
    "transaction_id",
    "account_id",
    "merchant_id",
    "amount",
    "currency",
    "timestamp",
    "channel",
    "customer_x",
    "customer_y",
    "merchant_x",
    "merchant_y",
    "is_fraud",
    "fraud_scenario",
)


@dataclass(frozen=True)
class SimulationConfig:
    """Size, period, seed and enabled scenarios of one simulation (defaults: the reference).

    Parameters
    ----------
    customers, terminals, days : int
        Population sizes and number of simulated days (all >= 0).
    start_date : str
        First day, ``YYYY-MM-DD``; timestamps are UTC.
    seed : int
        In ``[0, 2**31)``; every random stream derives from it.
    scenarios : tuple of int
        Enabled fraud scenarios, a subset of ``(1, 2, 3, 4, 5, 6)`` (normalised to sorted
        order). 1-3 are the reference benchmark's; 4 (card testing), 5 (account takeover)
        and 6 (merchant bust-out) are off in the reference run
        (:mod:`flagstream.simulation.patterns`).
    radius : float
        A customer uses the terminals closer than this (coordinates are in ``[0, 100]``).
    card_testing, takeover, bust_out : pattern parameters
        Rates and shapes of scenarios 4, 5 and 6, used when the scenario is enabled.
    drift : Drift
        Slow drift of genuine behaviour; the default is none.
    """

    customers: int = 5000
    terminals: int = 10000
    days: int = 183
    start_date: str = "2018-04-01"
    seed: int = 0
    scenarios: tuple[int, ...] = (1, 2, 3)
    radius: float = 5.0
    card_testing: CardTesting = CardTesting()
    takeover: AccountTakeover = AccountTakeover()
    bust_out: BustOut = BustOut()
    drift: Drift = Drift()

    def __post_init__(self) -> None:
        for name in ("customers", "terminals", "days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.seed < 2**31:
            raise ValueError("seed must be in [0, 2**31)")
        if not self.radius > 0:
            raise ValueError("radius must be > 0")
        if not set(self.scenarios) <= {1, 2, 3, *PATTERN_CODES}:
            raise ValueError(f"scenarios must be among 1..6, got {self.scenarios!r}")
        for name in ("card_testing", "takeover", "bust_out"):
            if getattr(self, name).rate < 0:
                raise ValueError(f"{name} rate must be >= 0")
        date.fromisoformat(self.start_date)  # raises ValueError when malformed
        object.__setattr__(self, "scenarios", tuple(sorted(set(self.scenarios))))


@dataclass(frozen=True, eq=False)
class Simulation:
    """Transactions as numpy columns, sorted by time (stable), plus the population.

    Attributes
    ----------
    time_ms : int64 epoch milliseconds (whole seconds). customer, terminal : int32 indices.
    amount : float64 (cents). is_fraud, scenario : int8 (scenario 0 = genuine).
    customer_xy, terminal_xy : float64 arrays of shape (n, 2).
    customer_mean, customer_rate : float64 mean amount and mean transactions per day.
    """

    config: SimulationConfig
    time_ms: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    is_fraud: np.ndarray
    scenario: np.ndarray
    customer_xy: np.ndarray = field(repr=False)
    terminal_xy: np.ndarray = field(repr=False)
    customer_mean: np.ndarray = field(repr=False)
    customer_rate: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.time_ms)

    def summary(self) -> dict[str, Any]:
        """Counts and rates, JSON-ready."""
        n, cfg = len(self), self.config
        n_fraud = int(self.is_fraud.sum())
        by_scenario = np.bincount(self.scenario, minlength=7)
        customer_days = cfg.customers * cfg.days
        return {
            "customers": cfg.customers,
            "terminals": cfg.terminals,
            "days": cfg.days,
            "start_date": cfg.start_date,
            "seed": cfg.seed,
            "scenarios": list(cfg.scenarios),
            "n_transactions": n,
            "n_fraud": n_fraud,
            "fraud_rate": n_fraud / n if n else 0.0,
            "n_scenario_1": int(by_scenario[1]),
            "n_scenario_2": int(by_scenario[2]),
            "n_scenario_3": int(by_scenario[3]),
            **{f"n_scenario_{k}": int(by_scenario[k]) for k in PATTERN_CODES if k in cfg.scenarios},
            "tx_per_customer_day": n / customer_days if customer_days else 0.0,
        }


def simulate(config: SimulationConfig | None = None) -> Simulation:
    """Generate every transaction of ``config`` (default: the reference size).

    Parameters
    ----------
    config : SimulationConfig, optional

    Returns
    -------
    Simulation
        Deterministic for a given config and numpy version (numpy keeps its bit streams
        stable, but a new release may change how ``Generator`` turns bits into draws).
    """
    cfg = config or SimulationConfig()
    cust = np.random.RandomState(2 * cfg.seed).random_sample((cfg.customers, 4))
    customer_xy = cust[:, :2] * 100.0
    mean_amount, rate = 5.0 + 95.0 * cust[:, 2], 4.0 * cust[:, 3]
    terminal_xy = np.random.RandomState(2 * cfg.seed + 1).random_sample((cfg.terminals, 2)) * 100
    offsets, reach = reachable_terminals(customer_xy, terminal_xy, cfg.radius)
    n_reach = np.diff(offsets)

    rng = np.random.default_rng([cfg.seed, 1])
    per_day = rng.poisson(rate[:, None], size=(cfg.customers, cfg.days))
    customer = np.repeat(np.arange(cfg.customers, dtype=np.int32), per_day.sum(axis=1))
    day = np.repeat(np.tile(np.arange(cfg.days, dtype=np.int32), cfg.customers), per_day.ravel())
    tod = rng.normal(TIME_MEAN_S, TIME_STD_S, size=len(customer))
    keep = (tod >= 0) & (tod < SECONDS_PER_DAY) & (n_reach[customer] > 0)
    customer, day, seconds = customer[keep], day[keep], np.floor(tod[keep]).astype(np.int64)

    mu = mean_amount[customer]
    amount = rng.normal(mu, mu / 2)
    negative = np.flatnonzero(amount < 0)
    amount[negative] = rng.uniform(0.0, 2 * mu[negative])
    amount = np.round(amount, 2)
    k = n_reach[customer]
    pick = np.minimum((rng.random(len(customer)) * k).astype(np.int64), k - 1)
    terminal = reach[offsets[customer] + pick].astype(np.int32)

    amount, is_fraud, scenario = apply_scenarios(
        customer=customer,
        terminal=terminal,
        day=day,
        amount=amount,
        n_customers=cfg.customers,
        n_terminals=cfg.terminals,
        days=cfg.days,
        seed=cfg.seed,
        scenarios=cfg.scenarios,
    )
    t_s = day.astype(np.int64) * SECONDS_PER_DAY + seconds
    if cfg.drift.active or set(cfg.scenarios) & set(PATTERN_CODES):  # never in the reference
        if cfg.drift.active:
            seconds, amount = drift(
                cfg.drift, cfg.seed, customer, day, seconds, amount, is_fraud == 0,
                cfg.customers, cfg.days,
            )  # fmt: skip
            t_s = day.astype(np.int64) * SECONDS_PER_DAY + seconds
        world = World(customer_xy, terminal_xy, mean_amount, offsets, reach, cfg.days, cfg.radius)
        rows = inject(world, cfg.seed, cfg.scenarios, cfg.card_testing, cfg.takeover, cfg.bust_out)
        customer = np.concatenate((customer, rows.customer))
        terminal = np.concatenate((terminal, rows.terminal))
        t_s = np.concatenate((t_s, rows.t_s))
        amount = np.concatenate((amount, rows.amount))
        is_fraud = np.concatenate((is_fraud, np.ones(len(rows.code), np.int8)))
        scenario = np.concatenate((scenario, rows.code))
    start_s = np.datetime64(cfg.start_date, "s").astype(np.int64)
    time_ms = (start_s + t_s) * 1000
    order = np.argsort(time_ms, kind="stable")
    return Simulation(
        cfg,
        time_ms[order],
        customer[order],
        terminal[order],
        amount[order],
        is_fraud[order],
        scenario[order],
        customer_xy,
        terminal_xy,
        mean_amount,
        rate,
    )


def _records(sim: Simulation, lo: int, hi: int) -> list[dict[str, Any]]:
    """Wire-format dicts for rows ``lo:hi``, built from whole columns (keys: :data:`FIELDS`)."""
    c, t, n = sim.customer[lo:hi], sim.terminal[lo:hi], hi - lo
    cxy, txy = np.round(sim.customer_xy[c], 2), np.round(sim.terminal_xy[t], 2)
    stamps = np.datetime_as_string(sim.time_ms[lo:hi].astype("datetime64[ms]"), unit="s")
    columns = (
        [f"t-{i:09d}" for i in range(lo, hi)],
        [f"c-{i}" for i in c.tolist()],
        [f"m-{i}" for i in t.tolist()],
        sim.amount[lo:hi].tolist(),
        ["USD"] * n,
        [f"{ts}Z" for ts in stamps.tolist()],
        ["card"] * n,
        *(xy[:, axis].tolist() for xy in (cxy, txy) for axis in (0, 1)),
        sim.is_fraud[lo:hi].tolist(),
        sim.scenario[lo:hi].tolist(),
    )
    return [dict(zip(FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]


def write_stream(
    sim: Simulation, path: str | os.PathLike[str], progress: bool = True, chunk: int = 50_000
) -> int:
    """Write ``sim`` as JSON Lines, one wire-format record per transaction, in time order.

    Parameters
    ----------
    sim : Simulation
    path : path-like
        Output file; gzip-compressed when it ends with ``.gz``; its folder is created if
        missing. Written to ``path + ".part"`` and renamed when complete; gzip output has a
        zero mtime, so equal simulations give byte-identical files.
    progress : bool
        Show a progress bar on stderr (needs the ``report`` extra).
    chunk : int
        Records encoded per batch.

    Returns
    -------
    int
        Lines written.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    n, gz = len(sim), path.suffix == ".gz"
    try:
        with (
            open(part, "wb") as raw,
            progress_bar(n, "tx", progress) as bar,
        ):
            sink = (
                gzip.GzipFile(filename="", mode="wb", compresslevel=3, fileobj=raw, mtime=0) if gz else raw
            )
            for lo in range(0, n, chunk):
                hi = min(lo + chunk, n)
                sink.write(b"\n".join(map(orjson.dumps, _records(sim, lo, hi))) + b"\n")
                bar.update(hi - lo)
            if gz:
                sink.close()  # writes the gzip trailer; ``raw`` is closed by the with-block
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return n


class MalformedLineError(ValueError):
    """A stream line is not a JSON object; ``line_number`` is 1-based."""

    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"line {line_number}: {reason}")
        self.line_number = line_number
        self.reason = reason


class StreamReader:
    """Iterator of ``(line_number, record)`` over a JSON Lines file, gzip or plain.

    With ``on_error="raise"`` a malformed line raises :class:`MalformedLineError`; with
    ``"skip"`` it is left out and recorded in :attr:`malformed` as ``(line_number, reason)``.
    """

    def __init__(self, path: str | os.PathLike[str], on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path, self.on_error = Path(path), on_error
        self.malformed: list[tuple[int, str]] = []
        self._lines = self._generate()

    def __iter__(self) -> StreamReader:
        return self

    def __next__(self) -> tuple[int, dict[str, Any]]:
        return next(self._lines)

    def close(self) -> None:
        """Close the underlying file early."""
        self._lines.close()

    def _generate(self) -> Generator[tuple[int, dict[str, Any]], None, None]:
        with open(self.path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            for number, line in enumerate(lines_of(fh), start=1):  # (as iterating ``fh``)
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    reason = f"invalid JSON at column {exc.colno}: {exc.msg}"
                else:
                    if isinstance(record, dict):
                        yield number, record
                        continue
                    reason = f"expected a JSON object, got {type(record).__name__}"
                if self.on_error == "raise":
                    raise MalformedLineError(number, reason)
                self.malformed.append((number, reason))


def read_stream(path: str | os.PathLike[str], on_error: str = "raise") -> StreamReader:
    """Iterate ``(line_number, record)`` over a stream; see :class:`StreamReader`."""
    return StreamReader(path, on_error)


def load_stream(
    path: str | os.PathLike[str],
    on_error: str = "raise",
    malformed: list[tuple[int, str]] | None = None,
) -> list[dict[str, Any]]:
    """All records of a stream as a list; skipped lines are appended to ``malformed``."""
    reader = StreamReader(path, on_error)
    records = [record for _, record in reader]
    if malformed is not None:
        malformed.extend(reader.malformed)
    return records


def _scenarios(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,3, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``flagstream simulate`` options to ``parser``."""
    d = SimulationConfig()
    parser.add_argument("--customers", type=int, default=d.customers, help="number of customers")
    parser.add_argument("--terminals", type=int, default=d.terminals, help="number of terminals")
    parser.add_argument("--days", type=int, default=d.days, help="number of simulated days")
    parser.add_argument("--start-date", default=d.start_date, help="first day, YYYY-MM-DD")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed")
    parser.add_argument(
        "--scenarios", type=_scenarios, default=d.scenarios,
        help="fraud scenarios, e.g. 1,2,3 (the reference); 4 card testing, 5 account takeover, "
        "6 merchant bust-out",
    )  # fmt: skip
    parser.add_argument("--radius", type=float, default=d.radius, help="customer reach")
    patterns = (  # (option, default, help): the new patterns' rates and the drift
        ("--card-testing-rate", d.card_testing.rate, "scenario 4: cards tested a day per 1,000 cards"),
        ("--takeover-rate", d.takeover.rate, "scenario 5: accounts taken over a day per 1,000 cards"),
        ("--bust-out-rate", d.bust_out.rate,
         "scenario 6: merchants busting out a day per 10,000 merchants"),
        ("--drift-amount", d.drift.amount,
         "genuine amounts change by this share by the last day, e.g. 0.3 (off: 0)"),
        ("--drift-hours", d.drift.hours,
         "genuine times of day move this many hours later by the last day (off: 0)"),
    )
    for flag, default, text in patterns:
        parser.add_argument(flag, type=float, default=default, help=f"{text} (%(default)s)")
    parser.add_argument("--out", help="JSON Lines output path (.gz to compress); none: no file")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    """Simulate, write ``args.out`` if given, print the summary as JSON to stdout."""
    started, d = time.perf_counter(), SimulationConfig()
    try:
        config = SimulationConfig(
            customers=args.customers,
            terminals=args.terminals,
            days=args.days,
            start_date=args.start_date,
            seed=args.seed,
            scenarios=args.scenarios,
            radius=args.radius,
            card_testing=replace(d.card_testing, rate=args.card_testing_rate),
            takeover=replace(d.takeover, rate=args.takeover_rate),
            bust_out=replace(d.bust_out, rate=args.bust_out_rate),
            drift=Drift(amount=args.drift_amount, hours=args.drift_hours),
        )
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    sim = simulate(config)
    summary = sim.summary()
    summary["simulate_seconds"] = round(time.perf_counter() - started, 3)
    if args.out:
        summary["out"] = str(args.out)
        summary["lines_written"] = write_stream(sim, args.out, progress=args.progress)
    summary["total_seconds"] = round(time.perf_counter() - started, 3)
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m flagstream.simulation.simulator [options]``."""
    parser = argparse.ArgumentParser(prog="flagstream simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
