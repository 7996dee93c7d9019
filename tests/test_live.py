"""Live curves: a sweep writes each member's curves as TensorBoard event files that
TensorBoard's own reader loads, equal to the stored results, once per step even across an
interruption; they can be switched off; the W&B writer is used only where wandb is installed."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ntkbench
from ntkbench._sweep.live import LiveCurves, member_name, tag
from ntkbench._train.members import members as ntkbench_members


def _stop_after(n: int):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


def _read(run_dir) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_a_sweep_writes_tensorboard_curves_equal_to_its_results(tmp_path):
    config = ntkbench.preset("smoke", widths=(4, 16), num_seeds=2, epochs=20, chunk_epochs=10,
                             ntk_every=5)
    w = tmp_path / "w"
    quiet = ntkbench.Hooks.quiet(should_stop=_stop_after(1))
    with pytest.raises(ntkbench.Interrupted):  # stopped after pack 0's first chunk ...
        ntkbench.run(config, str(w), hooks=quiet)
    ntkbench.run(config, str(w), hooks=ntkbench.Hooks.quiet())  # ... resumed from its epoch 10
    ds = ntkbench.load(str(w), summaries=False)
    runs = sorted(p.name for p in (w / "tensorboard").iterdir())
    assert runs == ["width=16,seed=0", "width=16,seed=1", "width=4,seed=0", "width=4,seed=1"]
    for width in (4, 16):
        for seed in (0, 1):
            curves = _read(w / "tensorboard" / f"width={width},seed={seed}")
            member = ds.sel(width=width, seed=seed).squeeze()
            for name in ("train_loss", "test_loss", "test_accuracy", "ntk_trace", "ntk_erank"):
                stored = np.asarray(member[name].values, np.float32)
                steps = np.flatnonzero(np.isfinite(stored))
                got = curves[tag(name)]
                # One value per recorded step (the resumed records replaced, not doubled),
                # bit for bit the stored float32.
                assert [s for s, _ in got] == steps.tolist(), name
                assert np.array_equal(np.asarray([v for _, v in got], np.float32),
                                      stored[steps]), name
    assert set(curves) >= {"loss/train", "loss/test", "accuracy/train", "accuracy/test",
                           "ntk/trace", "ntk/erank", "ntk/label_alignment"}


def test_curves_can_be_switched_off(tmp_path):
    config = ntkbench.preset("smoke", widths=(4,), num_seeds=1, epochs=2, ntk_every=0)
    ntkbench.run(config, str(tmp_path / "w"), hooks=ntkbench.Hooks.quiet(), tensorboard=False)
    assert not (tmp_path / "w" / "tensorboard").exists()


def test_wandb_writer_only_where_wandb_is_installed(tmp_path, monkeypatch):
    config = ntkbench.preset("smoke", widths=(4,), num_seeds=1, epochs=2, ntk_every=0)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: one clear error, no run
    with pytest.raises(ntkbench.ConfigError, match="wandb package"):
        ntkbench.run(config, str(tmp_path / "w"), hooks=ntkbench.Hooks.quiet(),
                     wandb_project="p")
    assert not (tmp_path / "w").exists()
    logged = []

    class Run:
        def __init__(self, **kw):
            self.kw = kw

        def log(self, values, step):
            logged.append((self.kw["name"], step, values))

        def finish(self):
            logged.append((self.kw["name"], "finished"))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run(**kw)))
    c = ntkbench.preset("smoke", widths=(4, 16), num_seeds=1, epochs=3)
    curves = LiveCurves(str(tmp_path), ntkbench.SweepConfig(**c.to_dict()), tensorboard=False,
                        wandb_project="p")
    members = [m for m in ntkbench_members(curves.config) if m.seed == 0]
    curves.open_pack(members, 0)
    curves.write(0, {"test_loss": np.array([[1.0, 2.0], [np.nan, 3.0]])})
    curves.close()
    assert ("width=4", 0, {"loss/test": 1.0}) in logged
    assert ("width=16", 1, {"loss/test": 3.0}) in logged
    assert ("width=4", 1, {}) not in logged  # nothing measured at that step: nothing logged
    assert ("width=16", "finished") in logged
    assert member_name(c, members[0]) == "width=4"
