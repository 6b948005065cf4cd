"""Test helpers around models: train one offline, publish it as champion, wait for workers
to use it, read the registry, and compute the decisions the core gives in-process."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence

from flagstream.codec import dumps, loads
from flagstream.perf.bench import workload
from flagstream.scoring.handle import ModelHandle, model_from_state
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.policy import FixedThreshold
from flagstream.scoring.registry import RegistryView
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.registry_client import RegistryClient

#: The version :func:`publish_champion` gives the published model.
PUBLISHED = "lr-000001"


def train_offline(transactions: Sequence[dict], is_fraud: Callable[[dict], bool], epochs: int = 3) -> dict:
    """A champion's state trained away from the pipeline, on the core's own features."""
    out = ScoringCore().process([dumps(t) for t in transactions])
    model = LinearChampion()
    for _ in range(epochs):
        for decision, features in zip(out.decisions, out.features, strict=True):
            model.learn_one(features, int(is_fraud(decision)))
    return model.to_state()


def publish_champion(settings: Settings, state: dict) -> str:
    """Put ``state`` on the ``models`` topic as champion :data:`PUBLISHED`, sealed as the
    learner seals it; returns its version."""
    asyncio.run(workload.publish_champion(settings, state))
    return PUBLISHED


def registry(settings: Settings) -> RegistryView:
    """The registry as the ``models`` topic holds it now."""
    async def read() -> RegistryView:
        async with RegistryClient(settings) as client:
            return await client.read()

    return asyncio.run(read())


def serving_version(worker) -> str:
    """The model version a worker scores with now (its ``/healthz``)."""
    with urllib.request.urlopen(worker.url + "/healthz", timeout=5) as resp:
        return loads(resp.read())["model_version"]


def wait_until(fn: Callable, timeout_s: float, what: str, worker=None):
    """Poll ``fn`` until it returns something true; fail with the worker's log if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}\n{worker.log_tail(60) if worker else ''}")
        time.sleep(0.2)


def labelled_metric(worker, name: str) -> dict[frozenset, float]:
    """Every sample of a labelled metric, by its set of (label, value) pairs."""
    out = {}
    for line in worker.metrics().splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            pairs = (p.split("=", 1) for p in head[len(name) + 1 : -1].split(",") if p)
            out[frozenset((k, v.strip('"')) for k, v in pairs)] = float(value)
    return out


def in_process(batches: Iterable[Sequence[dict]], states: Iterable[dict | None],
               thresholds: Iterable[float]) -> dict[str, dict]:
    """Decisions of one uninterrupted in-process core over ``batches`` in order, each batch
    scored with its model state (None: keep the previous model) and threshold."""
    core = ScoringCore(ModelHandle(LinearChampion()))
    out: dict[str, dict] = {}
    for batch, state, threshold in zip(batches, states, thresholds, strict=True):
        if state is not None:
            core.handle.adopt(model_from_state(state), "reference", 0)
        core.policy = FixedThreshold(threshold)
        outcome = core.process([dumps(t) for t in batch])
        assert not outcome.rejections, outcome.rejections
        out.update((d["transaction_id"], d) for d in outcome.decisions)
    return out


#: Fields of a decision that depend on the input, the state and the model, not on when or
#: by which process it was made.
DECIDED = ("transaction_id", "account_id", "merchant_id", "amount", "event_time_ms", "score",
           "threshold", "decision", "features")


def decided(decision: dict) -> dict:
    """The fields of a decision that a replay must reproduce exactly."""
    return {k: decision[k] for k in DECIDED}
