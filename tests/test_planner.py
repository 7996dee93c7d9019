"""Planner and member determinism (`ntkbench._train.planner`, `ntkbench._train.members`)."""

import dataclasses

import jax
import numpy as np
import pytest

import ntkbench
from ntkbench._train import ModelFamily, member_bytes, plan
from ntkbench._train.members import _fold, _key_ints, members, members_keys

MNIST = ModelFamily("mlp", (28, 28, 1), 10)
DIGITS = ModelFamily("mlp", (8, 8, 1), 10)


def _config(**kw):
    return ntkbench.preset("smoke", **{**kw})


class ensemble:  # noqa: N801 - the old module's functions, for the assertions below
    members = staticmethod(members)
    members_keys = staticmethod(members_keys)

    @staticmethod
    def plan(c, in_size, out_size):
        return plan(c, MNIST if in_size == 784 else DIGITS)

    @staticmethod
    def member_keys(c, m):
        return {k: v[0] for k, v in members_keys(c, [m]).items()}


def test_members_are_the_product_of_axes():
    c = _config(widths=(4, 8, 16), num_seeds=3, depth=(2, 3), n_train=(8, 16))
    ms = ensemble.members(c)
    assert len(ms) == 3 * 3 * 2 * 2 == c.num_members
    assert len({m.index for m in ms}) == len(ms)


def test_wide_sweep_is_not_one_pack():
    c = _config(widths=(8, 16, 32, 64, 128, 256, 512, 1024), num_seeds=20, n_train=(100,),
                min_pack_efficiency=0.8)
    p = ensemble.plan(c, 784, 10)
    assert len(p.packs) > 1
    assert p.efficiency >= c.min_pack_efficiency
    assert p.num_programs <= c.max_packs_per_group
    assert sum(pk.num_members for pk in p.packs) == 160
    one = ensemble.plan(dataclasses.replace(c, max_packs_per_group=1), 784, 10)
    # One group: everything padded to 1024 (split only by the memory bound).
    assert {pk.padded_width for pk in one.packs} == {1024} and one.efficiency < 0.35
    assert p.efficiency > 2 * one.efficiency


def test_memory_bound_splits_packs():
    c = _config(widths=(1024,), num_seeds=20, n_train=(100,))
    one = member_bytes(c, MNIST, 1024, c.depth[0], 100)
    budget_mb = int(5.5 * one / 2**20)  # room for 5 members per pack
    c = dataclasses.replace(c, pack_memory_mb=budget_mb)
    p = ensemble.plan(c, 784, 10)
    assert len(p.packs) == 4 and p.num_programs <= 2
    assert all(ensemble_bytes(c, pk) <= budget_mb * 2**20 for pk in p.packs)


def ensemble_bytes(c, pk):
    return pk.num_members * member_bytes(c, MNIST, pk.padded_width, pk.depth, pk.padded_n_train)


def test_keys_depend_only_on_member_coordinates():
    a = _config(widths=(4, 8), num_seeds=2)
    b = _config(widths=(8, 32, 64), num_seeds=5, seed=a.seed)
    ma = {(m.width, m.seed): m for m in ensemble.members(a)}
    mb = {(m.width, m.seed): m for m in ensemble.members(b)}
    for k in set(ma) & set(mb):
        ka, kb = ensemble.member_keys(a, ma[k]), ensemble.member_keys(b, mb[k])
        for name in ka:
            np.testing.assert_array_equal(jax.random.key_data(ka[name]), jax.random.key_data(kb[name]))


def test_batched_keys_equal_the_sequential_fold_in_chain():
    """`members_keys` (one compiled call per key kind) gives the bits of folding each
    coordinate into the sweep key one at a time, including large seeds and noise codes."""
    c = _config(widths=(4, 8), num_seeds=3, data_per_seed=True, noise=(0.0, 0.25),
                seed=2**40 + 7)
    ms = ensemble.members(c)
    got = ensemble.members_keys(c, ms)
    for j, m in enumerate(ms):
        for name, ints in _key_ints(c, m).items():
            ref = _fold(jax.random.key(c.seed), *ints)
            np.testing.assert_array_equal(jax.random.key_data(ref), jax.random.key_data(got[name][j]))


@pytest.mark.slow
def test_same_member_same_numbers_in_different_plans(tmp_path):
    """Width 16 trains in its own pack in one plan and beside width 12 (and twice as many
    members) in the other: same padded width, so the numbers are bit-identical. Width 12 is
    padded to 12 in one plan and 16 in the other: equal up to float reassociation of the
    padded zeros inside the matmuls."""
    common = dict(widths=(12, 16), epochs=12, chunk_epochs=6, ntk_every=0)
    sep = _config(**common, min_pack_efficiency=1.0)
    joint = _config(**common, min_pack_efficiency=0.01, max_packs_per_group=1)
    assert len(ensemble.plan(sep, 64, 10).packs) == 2
    assert len(ensemble.plan(joint, 64, 10).packs) == 1
    quiet = ntkbench.Hooks(log=lambda s: None)
    ntkbench.run(sep, str(tmp_path / "a"), hooks=quiet)
    ntkbench.run(joint, str(tmp_path / "b"), hooks=quiet)
    a = ntkbench.load(str(tmp_path / "a"), summaries=False)
    b = ntkbench.load(str(tmp_path / "b"), summaries=False)
    for v in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        np.testing.assert_array_equal(a[v].sel(width=16).values, b[v].sel(width=16).values)
        np.testing.assert_allclose(a[v].sel(width=12).values, b[v].sel(width=12).values,
                                   rtol=2e-5, atol=1e-6)
        np.testing.assert_array_equal(a[v].sel(width=12, epoch=0).values,
                                      b[v].sel(width=12, epoch=0).values)
