"""Width-scaling rules of the parametrizations SP, NTK and μP (docs/definitions.md, "Parametrizations").

One function, `layer_scales`, returns for one dense (or convolution) layer the six numbers that a
parametrization fixes (docs/definitions.md, "Parametrizations", "The table"): the weights' initial standard
deviation, the forward multiplier, the learning-rate multiplier, and the same three for the
layer's bias. Everything is a power of the width multiplier

    m = width / base_width

and of the layer's true fan-in `n`; `n0` is the layer's fan-in at the base width (`n / m` for a
layer whose fan-in scales with the width, `n` for one whose fan-in is fixed). The layer computes

    u = multiplier · (W h) + bias_multiplier · b

and trains `W` with learning rate `lr · lr_mult` and `b` with `lr · bias_lr_mult`, `lr` the
sweep's one learning rate.

**The draw contract.** Weights are drawn at their TRUE shape (padding, if any, is zero and stays
zero) as `W = init_std · z` with `z` of unit variance (a standard normal, or the `lecun_normal`
truncated normal rescaled to unit variance). Equivalently, multiply the `lecun_normal` draw
(standard deviation `1/sqrt(n)`) by `init_gain = init_std · sqrt(n)`; `init_gain` is computed
from its own formula, so it is exactly 1 wherever SP's draw is kept. Biases are drawn as
`b = bias_init_std · z`; every parametrization here initializes them to zero.

`width`, `fan_in` and `base_width` may be traced JAX scalars (each member of a padded pack has its
own true width, an int32 array): only `jax.numpy` arithmetic is applied to them, never a Python
branch, so `layer_scales` works under `jax.jit` and `jax.vmap`. The parametrization, the
optimizer and the layer kind are static.

Public as `ntkbench.parametrization`: a user's `model_fn` can build its layers with it
(docs/models.md). The names of the parametrizations and optimizers are the config's enums
(`Parametrization`, `Optimizer`), re-exported here.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ntkbench._config import OPTIMIZERS, PARAMETRIZATIONS, Optimizer, Parametrization

__all__ = ["LAYER_KINDS", "OPTIMIZERS", "PARAMETRIZATIONS", "LayerKind", "LayerScales",
           "Optimizer", "Parametrization", "layer_scales", "mlp_scales", "width_multiplier"]


class LayerKind(str, enum.Enum):
    """Which of a layer's dimensions scale with the width (docs/definitions.md, "Parametrizations", "Notation").

    `INPUT`: fixed fan-in, fan-out the width (the first layer). `HIDDEN`: both scale. `OUTPUT`:
    fan-in scales, fixed fan-out (the readout). `FIXED`: neither scales (e.g. a layer between two
    fixed sizes, such as a readout after a dense layer of fixed size); it is SP-equivalent in
    every parametrization.
    """

    INPUT = "input"
    HIDDEN = "hidden"
    OUTPUT = "output"
    FIXED = "fixed"


LAYER_KINDS = tuple(k.value for k in LayerKind)


class LayerScales(NamedTuple):
    """The six numbers of one layer, plus `init_gain` (a pytree: a NamedTuple of arrays).

    Attributes:
        init_std: standard deviation of the stored weight; multiply a unit-variance draw by it.
        init_gain: `init_std · sqrt(fan_in)`; multiply a `lecun_normal` draw by it.
        multiplier: forward multiplier of `W h`.
        lr_mult: the weight's learning rate is `lr · lr_mult`.
        bias_init_std: standard deviation of the stored bias (0 here: biases start at zero).
        bias_multiplier: forward multiplier of the bias.
        bias_lr_mult: the bias's learning rate is `lr · bias_lr_mult`.
    """

    init_std: jnp.ndarray
    init_gain: jnp.ndarray
    multiplier: jnp.ndarray
    lr_mult: jnp.ndarray
    bias_init_std: jnp.ndarray
    bias_multiplier: jnp.ndarray
    bias_lr_mult: jnp.ndarray


def _check_positive(name: str, value) -> None:
    """Raise on a concrete value that is not positive; traced values cannot be checked."""
    if isinstance(value, (int, float, np.number, np.ndarray)) and np.any(np.asarray(value) <= 0):
        raise ValueError(f"{name} must be positive, got {value!r}.")


def width_multiplier(width, base_width):
    """`m = width / base_width` as a float array (docs/definitions.md, "Parametrizations", "Notation")."""
    _check_positive("width", width)
    _check_positive("base_width", base_width)
    dtype = jnp.result_type(float)
    return jnp.asarray(width, dtype) / jnp.asarray(base_width, dtype)


def layer_scales(
    parametrization: Parametrization | str,
    optimizer: Optimizer | str,
    kind: LayerKind | str,
    *,
    fan_in,
    width,
    base_width,
) -> LayerScales:
    r"""The scales of one layer under a parametrization (docs/definitions.md, "Parametrizations", "The table").

    With `n = fan_in` (the TRUE fan-in: the data dimension for `INPUT`, the true width for a
    hidden dense layer, `in_channels · k²` for a convolution), `m = width / base_width`, and
    `n0 = n / m` for `HIDDEN` and `OUTPUT` layers, `n0 = n` for `INPUT` and `FIXED` ones (the
    fan-in at the base width), the weights get:

    | parametrization | kind | init_std | multiplier | Adam lr_mult | SGD lr_mult |
    | --- | --- | --- | --- | --- | --- |
    | standard | any | `1/sqrt(n)` | 1 | 1 | 1 |
    | ntk | input | 1 | `1/sqrt(n)` | `sqrt(n0) · m^(-1/2)` | `n0` |
    | ntk | hidden | 1 | `1/sqrt(n)` | `sqrt(n0) · m^(-1)` | `n0` |
    | ntk | output | 1 | `1/sqrt(n)` | `sqrt(n0) · m^(-1/2)` | `n0` |
    | ntk | fixed | 1 | `1/sqrt(n)` | `sqrt(n0)` | `n0` |
    | mup | input | `1/sqrt(n)` | 1 | 1 | `m` |
    | mup | hidden | `1/sqrt(n)` | 1 | `1/m` | 1 |
    | mup | output | `1/sqrt(n0) = sqrt(m/n)` | `1/m` | 1 | `m` |
    | mup | fixed | `1/sqrt(n)` | 1 | 1 | 1 |

    `init_gain = init_std · sqrt(n)`: 1 for SP and for μP's input, hidden and fixed layers,
    `sqrt(n)` for NTK, `sqrt(m)` for μP's output layer.

    Biases start at zero with multiplier 1 in every parametrization. Their learning-rate
    multiplier is 1 except for biases of width size (those of `INPUT` and `HIDDEN` layers):
    `m` under μP with SGD, `m^(-1/2)` under NTK with Adam.

    At `width == base_width` (`m = 1`) μP is SP exactly (the same stored parameters and learning
    rates), and NTK is SP as a function and a training trajectory (SGD exactly; Adam up to its
    `ε`), though not in its stored parameters (docs/definitions.md, "Parametrizations", "At the base width").

    Args:
        parametrization: `"standard"`, `"ntk"` or `"mup"`.
        optimizer: `"adam"` or `"sgd"`.
        kind: `"input"`, `"hidden"`, `"output"` or `"fixed"`.
        fan_in: the layer's true fan-in; a number or a (traced) scalar array.
        width: the member's true width; a number or a (traced) scalar array.
        base_width: the width at which the parametrizations coincide with SP.

    Returns:
        `LayerScales` of float arrays with the broadcast shape of `fan_in`, `width` and
        `base_width` (float64 under `jax_enable_x64`, else float32).

    Example:
        >>> s = layer_scales("mup", "adam", "hidden", fan_in=256, width=256, base_width=64)
        >>> float(s.lr_mult), float(s.init_std)
        (0.25, 0.0625)
    """
    p, opt, kind = Parametrization(parametrization), Optimizer(optimizer), LayerKind(kind)
    _check_positive("fan_in", fan_in)
    m = width_multiplier(width, base_width)
    n = jnp.asarray(fan_in, m.dtype)
    m, n = jnp.broadcast_arrays(m, n)
    one, zero = jnp.ones_like(m), jnp.zeros_like(m)
    n0 = n / m if kind in (LayerKind.HIDDEN, LayerKind.OUTPUT) else n
    width_sized_bias = kind in (LayerKind.INPUT, LayerKind.HIDDEN)
    adam = opt is Optimizer.ADAM

    if p is Parametrization.STANDARD:
        return LayerScales(jnp.sqrt(1.0 / n), one, one, one, zero, one, one)

    if p is Parametrization.NTK:
        # Adam: TP IVb's neural tangent exponents c = 1/2, 1, 1/2 (input, hidden, output) on top
        # of sqrt(n0), which makes m = 1 SP-equivalent; SGD: constant in width, n0 for the same.
        adam_power = {LayerKind.INPUT: 0.5, LayerKind.HIDDEN: 1.0, LayerKind.OUTPUT: 0.5,
                      LayerKind.FIXED: 0.0}[kind]
        lr = jnp.sqrt(n0) * m**-adam_power if adam else n0
        bias_lr = m**-0.5 if (adam and width_sized_bias) else one
        return LayerScales(one, jnp.sqrt(n), jnp.sqrt(1.0 / n), lr, zero, one, bias_lr)

    # μP, TP V Table 8 (the form of microsoft/mup): vector-like weights (input, output) keep
    # their Adam lr and get SGD lr m; hidden weights get Adam lr 1/m; the readout gets init
    # variance 1/n0 and multiplier 1/m.
    bias_lr = m if (width_sized_bias and not adam) else one
    if kind is LayerKind.INPUT:
        return LayerScales(jnp.sqrt(1.0 / n), one, one, one if adam else m, zero, one, bias_lr)
    if kind is LayerKind.HIDDEN:
        return LayerScales(jnp.sqrt(1.0 / n), one, one, 1.0 / m if adam else one, zero, one,
                           bias_lr)
    if kind is LayerKind.OUTPUT:
        return LayerScales(jnp.sqrt(1.0 / n0), jnp.sqrt(m), 1.0 / m, one if adam else m, zero,
                           one, bias_lr)
    return LayerScales(jnp.sqrt(1.0 / n), one, one, one, zero, one, bias_lr)


def mlp_scales(
    parametrization: Parametrization | str,
    optimizer: Optimizer | str,
    *,
    in_size: int,
    width,
    depth: int,
    base_width,
) -> tuple[LayerScales, ...]:
    """`layer_scales` of every dense layer of an MLP with `depth` hidden layers, in forward order.

    Layer 0 is `INPUT` (fan-in `in_size`), layers `1 … depth−1` are `HIDDEN` (fan-in `width`),
    layer `depth` is the `OUTPUT` readout (fan-in `width`).

    Example:
        >>> s = mlp_scales("ntk", "sgd", in_size=64, width=128, depth=3, base_width=32)
        >>> [float(x.lr_mult) for x in s]
        [64.0, 32.0, 32.0, 32.0]
    """
    if int(depth) < 1:
        raise ValueError(f"depth must be at least 1, got {depth!r}.")
    kinds = [LayerKind.INPUT] + [LayerKind.HIDDEN] * (int(depth) - 1) + [LayerKind.OUTPUT]
    fan_ins = [in_size] + [width] * int(depth)
    return tuple(
        layer_scales(parametrization, optimizer, k, fan_in=f, width=width, base_width=base_width)
        for k, f in zip(kinds, fan_ins)
    )
