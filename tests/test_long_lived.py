"""The backtest's frozen steps (flagstream.evaluation.long_lived): the collector is kept off
what each step leaves behind, and nothing a run computes changes; and its registry, listed for
pruning only when it could hold too many versions, prunes after the same steps as before."""

from __future__ import annotations

import gc

import orjson
import pytest
from orjson import OPT_SERIALIZE_NUMPY as NUMPY

from flagstream.evaluation.backtest import Backtest, BacktestConfig
from flagstream.evaluation.long_lived import frozen_between_steps
from flagstream.perf.backtest_diff import differences
from flagstream.scoring import registry as reg
from flagstream.simulation.simulator import SimulationConfig, simulate, write_stream

#: 120 customers for 30 days; the last week is the test window.
SMALL = SimulationConfig(customers=120, terminals=300, days=30, radius=25.0, seed=5)
WINDOW = {"test_start": "2018-04-24", "test_end": "2018-04-30"}


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("frozen") / "small.jsonl.gz"
    write_stream(simulate(SMALL), path, progress=False)
    return path


class Watched(Backtest):
    """A backtest that notes, before each step, how many objects the collector has frozen."""

    def step(self, *args, **kwargs):  # type: ignore[override]
        self.frozen_counts = [*getattr(self, "frozen_counts", []), gc.get_freeze_count()]
        return super().step(*args, **kwargs)


def run(path, freeze: bool):
    bt = Watched(BacktestConfig(batch_size=500, **WINDOW))
    bt.freeze_between_steps = freeze
    result = bt.run(path)
    return bt, result


def test_a_run_with_frozen_steps_is_the_run_without(stream_path):
    assert gc.get_freeze_count() == 0
    frozen, with_freezing = run(stream_path, True)
    assert gc.get_freeze_count() == 0  # all handed back at the end
    plain, without = run(stream_path, False)
    assert max(frozen.frozen_counts[1:]) > 0 and max(plain.frozen_counts) == 0
    assert with_freezing.metrics["n_events"] > 1_000
    assert differences(with_freezing.metrics, without.metrics) == []
    # (as JSON: a NaN is null there, and never equal to itself in a dict)
    assert orjson.dumps(with_freezing.daily, option=NUMPY) == orjson.dumps(without.daily, option=NUMPY)
    assert (with_freezing.pr_precision == without.pr_precision).all()
    assert frozen.thresholds == plain.thresholds


def test_everything_is_unfrozen_when_a_step_raises():
    with pytest.raises(RuntimeError), frozen_between_steps() as steps:
        kept = [[i] for i in range(100)]
        steps.step_done()
        assert gc.get_freeze_count() >= len(kept)
        raise RuntimeError("a bad line")
    assert gc.get_freeze_count() == 0


def test_a_caller_that_froze_objects_keeps_them_frozen():
    gc.freeze()
    try:
        held = gc.get_freeze_count()
        with frozen_between_steps() as steps:
            kept = [[i] for i in range(100)]
            steps.step_done()
        assert not steps.enabled and gc.get_freeze_count() == held and kept
    finally:
        gc.unfreeze()



class Huge(dict):
    """A registry that says it is too large: the backtest lists its versions after every step
    (what it did before it looked at the registry's size first)."""

    def __len__(self) -> int:
        return 10**9


def versions_after_each_step(path, registry: dict | None) -> list[list[bytes]]:
    bt = Backtest(BacktestConfig(batch_size=500, **WINDOW))
    if registry is not None:
        bt.registry = registry
        bt.lifecycle.remember = registry.__setitem__  # type: ignore[union-attr]
        bt.lifecycle.get = registry.get  # type: ignore[union-attr]
    seen: list[list[bytes]] = []
    step = bt.step

    def counted(*args, **kwargs):
        step(*args, **kwargs)
        seen.append(sorted(k for k in bt.registry if k.startswith(reg.VERSION_PREFIX)))

    bt.step = counted  # type: ignore[method-assign]
    bt.run(path)
    return seen


def test_old_versions_are_pruned_after_the_same_steps_as_when_listed_every_step(stream_path, monkeypatch):
    monkeypatch.setenv("FLAGSTREAM_MODEL_KEEP_VERSIONS", "1")
    quick, listed = versions_after_each_step(stream_path, None), versions_after_each_step(stream_path, Huge())
    assert quick == listed
    ever = set().union(*map(set, quick))
    assert len(ever) > max(len(v) for v in quick)  # some were pruned
