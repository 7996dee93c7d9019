"""Presets: the default sweep, a test sweep, and the paper's experiments (docs/presets.md).

Each preset is a locked `ml_collections.ConfigDict` (fields can be set, not added); override a
field on the command line with `--config.FIELD=VALUE`, or in a config file with
`c = ntkbench.get_config("quick"); c.widths = (8, 64)`.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from ntkbench._config.config import SweepConfig, from_config_dict
from ntkbench._config.errors import ConfigError


def _base(**overrides) -> ml_collections.ConfigDict:
    d = SweepConfig().to_dict()
    unknown = set(overrides) - set(d)
    if unknown:
        raise ConfigError(f"preset fields {sorted(unknown)} are not SweepConfig fields.")
    d.update(overrides)
    cd = ml_collections.ConfigDict(d)
    cd.lock()
    return cd


def quick() -> ml_collections.ConfigDict:
    """The default: digits, 3 hidden layers, widths 8..512, 4 seeds, 300 epochs (minutes, 2 cores)."""
    # A short sweep is compile-bound: fewer, more padded packs (3 programs instead of 4) finish
    # sooner. No single learning rate puts k* in the paper's window [120, 300] for every width
    # (wider nets learn faster per step), so each width has its own, from `ntkbench calibrate
    # --config=quick` (docs/presets.md has the pilots and the verification).
    return _base(name="quick", widths=(8, 16, 32, 64, 128, 256, 512), depth=(3,), num_seeds=4,
                 n_train=(100,), n_test=64, epochs=300, lr=3e-4, lr_by="width",
                 lr_table="8=3e-3, 16=1e-3, 32=1e-3, 64=4.98e-4, 128=3e-4, 256=3e-4, 512=2e-4",
                 ntk_every=10,
                 min_pack_efficiency=0.8)


def smoke() -> ml_collections.ConfigDict:
    """A seconds-long sweep for tests and CI (synthetic data)."""
    return _base(name="smoke", dataset="synthetic", widths=(4, 16), depth=(2,), num_seeds=2,
                 n_train=(32,), n_test=16, epochs=20, lr=3e-3, ntk_every=5, chunk_epochs=10)


# Per-point learning rates of the MNIST presets, from `ntkbench calibrate` pilots on mnist5k (2 seeds,
# 1000 epochs, window [400, 1000]; docs/presets.md lists every pilot's k*). Depth/width entries:
# piloted unless marked; 3/64 and 4/1024 are interpolated between two pilots; 4096 and 8192 are
# extrapolated from the pilots at 1024 and 2048 (k* ~ width^-0.75 * lr^-1.08 there), never run.
_MODEL_LRS = ("3/8=2e-4, 3/16=2e-4, 3/32=1e-4, 3/64=4.97e-5, 3/128=3e-5, 3/256=3e-5, 3/512=1e-5, "
              "3/1024=1e-5, 3/2048=3e-6, 3/4096=3e-6, 3/8192=2e-6, "
              "4/8=2e-4, 4/16=2e-4, 4/32=1e-4, 4/64=3e-5, 4/128=3e-5, 4/256=1e-5, 4/512=1e-5, "
              "4/1024=4.93e-6, 4/2048=3e-6, 4/4096=2e-6, 4/8192=1.2e-6")
# n_train entries: piloted up to 1024; 2048 and 4000 interpolated between the pilots at 3e-4 (k* late)
# and 1e-3 (k* early), not run.
_DATA_LRS = ("16=3e-5, 32=1e-4, 64=1e-4, 128=3e-4, 256=3e-4, 512=3e-4, 1024=3e-4, 2048=4.45e-4, "
             "4000=5.24e-4")


def paper_model_scaling() -> ml_collections.ConfigDict:
    """Model scaling: widths 8..4096 (log grid), depths 3 and 4, 100 samples, 20 seeds (real MNIST
    built in: mnist5k), one calibrated learning rate per depth and width."""
    return _base(name="paper_model_scaling", dataset="mnist5k",
                 widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), depth=(3, 4),
                 num_seeds=20, n_train=(100,), n_test=128, epochs=1000, lr=1e-4, ntk_every=5,
                 chunk_epochs=100, lr_by="depth,width", lr_table=_MODEL_LRS)


def paper_data_scaling() -> ml_collections.ConfigDict:
    """Data scaling: depth 4, width 8, n_train 16..4000 (log grid; mnist5k has 4000 training
    digits), 20 draws, each with its own initialization, one calibrated learning rate per n_train."""
    return _base(name="paper_data_scaling", dataset="mnist5k", widths=(8,), depth=(4,),
                 num_seeds=1, n_train=(16, 32, 64, 128, 256, 512, 1024, 2048, 4000),
                 num_data_draws=20, init_per_data=True, n_test=128, epochs=1000, lr=1e-3,
                 ntk_every=5, chunk_epochs=100, lr_by="n_train", lr_table=_DATA_LRS)


def paper_transition() -> ml_collections.ConfigDict:
    """Width transition: widths 8..8192 at depths 3 and 4, otherwise as model scaling."""
    return _base(name="paper_transition", dataset="mnist5k",
                 widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192), depth=(3, 4),
                 num_seeds=20, n_train=(100,), n_test=128, epochs=1000, lr=1e-4, ntk_every=5,
                 chunk_epochs=100, lr_by="depth,width", lr_table=_MODEL_LRS)


def _gradient_descent(**overrides) -> ml_collections.ConfigDict:
    """Full-batch gradient descent (SGD, no momentum) on MSE, 512 digits, depth 2, widths 64 and
    256, curvature records, no NTK records: the setting of the edge-of-stability results."""
    return _base(dataset="digits", widths=(64, 256), depth=(2,), num_seeds=2, n_train=(512,),
                 loss="mse", optimizer="sgd", momentum=0.0, lr_by="width", ntk_every=0,
                 **overrides)


def edge_of_stability() -> ml_collections.ConfigDict:
    """Progressive sharpening and the edge of stability: full-batch GD on MSE (digits), the
    sharpness rising to 2/η and hovering there (docs/presets.md has what was measured)."""
    # 2/η = 14.3 and 33.3, above the sharpness at initialization (13.3 and 29.1) and below
    # where each width's sharpness would rise to at a smaller η (docs/presets.md).
    return _gradient_descent(name="edge_of_stability", lr_table="64=0.14, 256=0.06",
                             epochs=2000, curvature_every=10, chunk_epochs=200)


def catapult() -> ml_collections.ConfigDict:
    """The catapult: full-batch GD on MSE with η just above 2/λ₀ (λ₀ the training-set NTK's top
    eigenvalue at initialization: η·λ₀ ≈ 2.5 and 2.3), curvature every 2 epochs."""
    return _gradient_descent(name="catapult", lr_table="64=0.2, 256=0.08", epochs=200,
                             curvature_every=2, chunk_epochs=50)


def _noise(**overrides) -> ml_collections.ConfigDict:
    return _base(dataset="cifar4", num_seeds=5, n_train=(2000,),
                 noise=(0.0, 0.1, 0.2, 0.4, 0.6, 0.8), n_test=400, ntk_test_draws=3,
                 epochs=1000, optimizer="sgd", lr=1e-3, momentum=0.9, batch_size=128,
                 ntk_every=25, ntk_early_every=2, ntk_early_until=50, chunk_epochs=50,
                 **overrides)


def paper_noise_scaling() -> ml_collections.ConfigDict:
    """Noise scaling, dense: CIFAR-4, 3x256 Xavier uniform, SGD lr 1e-3 momentum 0.9, batch 128."""
    return _noise(name="paper_noise_scaling", model="mlp", init="xavier_uniform",
                  widths=(256,), depth=(3,))


def paper_noise_scaling_cnn() -> ml_collections.ConfigDict:
    """Noise scaling, CNN: 3 conv layers of 32 filters, dense 64, He uniform; as the dense run."""
    return _noise(name="paper_noise_scaling_cnn", model="cnn", init="he_uniform",
                  widths=(32,), depth=(3,), cnn_dense=64)


PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "quick": quick,
    "smoke": smoke,
    "paper_model_scaling": paper_model_scaling,
    "paper_data_scaling": paper_data_scaling,
    "paper_transition": paper_transition,
    "paper_noise_scaling": paper_noise_scaling,
    "paper_noise_scaling_cnn": paper_noise_scaling_cnn,
    "edge_of_stability": edge_of_stability,
    "catapult": catapult,
}


def get_config(name: str = "quick") -> ml_collections.ConfigDict:
    """A locked preset `ConfigDict` by name (`ntkbench presets` lists them).

    Example:
        >>> c = get_config("quick")
        >>> c.widths = (8, 64)
        >>> c.num_seeds
        4
    """
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}, or pass "
                          "a .py config file.")
    return PRESETS[name]()


def preset(name: str = "quick", **overrides) -> SweepConfig:
    """A preset as a validated `SweepConfig`, with fields overridden: the one way to build
    "preset plus changes" (the command line's `--config=NAME --config.FIELD=VALUE`).

    Example:
        >>> c = preset("quick", widths=(8, 64), epochs=100)
        >>> c.widths, c.epochs, c.num_seeds
        ((8, 64), 100, 4)

    Raises:
        ConfigError: an unknown preset or field, or an invalid value.
    """
    return from_config_dict({**get_config(name).to_dict(), **overrides})
