"""Shared by the scorer tests without a broker: a scorer-role app, transactions, accounts by home."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from flagstream.codec import dumps
from flagstream.streams.agents import build_app
from flagstream.streams.config import Settings
from flagstream.streams.core import partitions_for
from flagstream.streams.scorer_agent import Scorer


def scorer_app(tmp_path: Path) -> Iterator[Scorer]:
    """A scorer of a 4-partition app (output topics' partitions known), stopped afterwards."""
    p = build_app(Settings(data_dir=str(tmp_path), partitions=4, faust_chunks=False), "scorer")
    assert isinstance(p.scorer, Scorer)
    for name in ("scores", "review"):
        p.scorer.partition_counts[p.scorer.names[name]] = 4
    yield p.scorer
    asyncio.run(p.stop())


def tx(i: int, account: str, amount: float = 20.0, merchant: str | None = None) -> bytes:
    """Transaction ``t-<i>``, one second after the last (merchant ``m-<i % 3>`` unless given)."""
    return dumps({"transaction_id": f"t-{i}", "account_id": account,
                  "merchant_id": merchant or f"m-{i % 3}",
                  "amount": amount, "timestamp": 1_522_540_800_000 + i * 1000})


def home_accounts(partition: int, n: int) -> list[str]:
    """``n`` account ids whose home (of 4 partitions) is ``partition``."""
    names = [f"c-{k}" for k in range(200)]
    return [a for a, part in zip(names, partitions_for(names, 4).tolist(), strict=True)
            if part == partition][:n]
