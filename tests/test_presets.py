"""Presets do what the paper's experiments did (docs/presets.md)."""

import numpy as np
import pytest

import ntkbench
from ntkbench._data import synthetic_dataset
from ntkbench._train import build_models, members, members_keys, model_family, plan


def _preset(name, **over):
    c = ntkbench.get_config(name)
    for k, v in over.items():
        setattr(c, k, v)
    return ntkbench.from_config_dict(c)


@pytest.mark.parametrize("name", list(ntkbench.PRESETS))
def test_every_preset_validates(name):
    c = ntkbench.from_config_dict(ntkbench.get_config(name))
    assert c.name == name and c.num_members > 0


def test_data_scaling_draws_an_initialization_per_member():
    """Every (n_train, data draw) gets its own initialization, so T0 has a real spread."""
    c = _preset("paper_data_scaling", dataset="synthetic", n_train=(16, 32), num_data_draws=3)
    assert c.init_per_data
    init = np.asarray(jax_key_data(members_keys(c, members(c))["init"]))
    assert len({tuple(k) for k in init}) == len(init) == 6
    fam = model_family(c, synthetic_dataset(100, 50))
    pk = plan(c, fam).packs[0]
    model = build_models(c, fam, pk)
    first = np.asarray(model.weights[0]).reshape(pk.num_members, -1)
    assert len({row.tobytes() for row in first}) == pk.num_members
    # Without it (model scaling), members differing only in their data draw share init.
    c2 = _preset("paper_data_scaling", dataset="synthetic", n_train=(16, 32),
                 num_data_draws=3, init_per_data=False)
    init2 = np.asarray(jax_key_data(members_keys(c2, members(c2))["init"]))
    assert len({tuple(k) for k in init2}) == 1


def jax_key_data(keys):
    import jax

    return jax.random.key_data(keys)


def test_noise_presets_compare_dense_and_cnn_with_early_ntk_records():
    dense, cnn = ntkbench.get_config("paper_noise_scaling"), ntkbench.get_config(
        "paper_noise_scaling_cnn")
    assert dense.model == "mlp" and dense.init == "xavier_uniform" and dense.widths == (256,)
    assert cnn.model == "cnn" and cnn.init == "he_uniform" and cnn.widths == (32,)
    assert cnn.cnn_dense == 64 and cnn.depth == (3,)
    c = ntkbench.from_config_dict(cnn)
    epochs = c.ntk_epochs()
    assert epochs[:5] == (0, 2, 4, 6, 8) and 25 in epochs and 1000 in epochs
    assert len([e for e in epochs if e < 50]) == 26  # every 2 epochs early, and epoch 25


def test_cnn_members_are_the_paper_cnn():
    c = _preset("paper_noise_scaling_cnn", dataset="synthetic", num_seeds=2,
                noise=(0.0,), n_train=(32,), batch_size=16)
    fam = model_family(c, synthetic_dataset(100, 50))
    assert not fam.paddable
    model = build_models(c, fam, plan(c, fam).packs[0])
    assert [cv.weight.shape[1:] for cv in model.convs] == [(32, 1, 3, 3), (32, 32, 3, 3),
                                                            (32, 32, 3, 3)]
    assert model.dense.shape[1] == 64


def test_quick_runs_on_the_builtin_data():
    c = ntkbench.from_config_dict(ntkbench.get_config("quick"))
    assert c.dataset == "digits" and c.widths == (8, 16, 32, 64, 128, 256, 512)
    assert c.n_eval == 0 and c.eval_every == 1  # the whole test split, every epoch
