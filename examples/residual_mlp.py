"""Example config: a residual MLP with layer norms.

Run it with `ntkbench run --config=examples/residual_mlp.py --workdir=runs/residual_mlp`.

A config file for a user's own model defines two things:

- `get_config()`: the sweep, a preset's `ConfigDict` with some fields overridden (here `quick`
  on digits with three widths, two seeds, 40 epochs). Command-line overrides
  (`--config.epochs=100`) apply on top, as for presets.
- `model_fn(width, key, *, input_shape, num_classes) -> eqx.Module`: builds ONE member of true
  width `width` from its init key. The model maps ONE example to `(num_classes,)` logits.
  `input_shape` is the shape of one image, channels last (digits: `(8, 8, 1)`); the training
  loop and the NTK records pass each example FLATTENED, as a vector of `prod(input_shape)`
  entries, so a model must accept that (this one reshapes any input to a vector). Batching is
  the caller's `jax.vmap`; members of a pack are stacked with `eqx.filter_vmap`. Trainable
  parameters are the model's inexact (floating) array leaves; boolean or integer arrays (the
  padding mask here) are constants. The NTK of such a model is computed with
  `ntkbench.kernels.ntk(model, x, method="auto")`; `ntkbench.kernels.explain_method` says which
  method that picks (here the hybrid kernel: all six Linears by the dense-layer identity, the
  layer norms matrix-free).

Optionally the model offers `padded(pad_to)`: the same function inside a `pad_to`-wide shape, so
that members of several widths can share one vmapped pack (pad each width's stack, then
concatenate). `ResidualMLP.padded` zero-pads every width-sized axis, and a boolean mask keeps the
padded units at exactly zero: layer-norm statistics are taken over the real units only, the
padded parameters are exactly zero and get exactly zero gradients, and outputs, gradients and
NTK equal those of the unpadded network (up to float reassociation of the sums).

(No `from __future__ import annotations` here: Equinox modules with string annotations need
their module in `sys.modules`, which not every way of loading a config file provides.)

Architecture (`w = width`, two residual blocks):

    x -> Linear(in, w) -> [LayerNorm -> Linear(w, w) -> relu -> Linear(w, w)] + residual
      -> [same block] -> LayerNorm -> Linear(w, num_classes)
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

import ntkbench

NUM_BLOCKS = 2


def _pad_trailing(a: Array, shape: tuple[int, ...], fill=0) -> Array:
    """Pad the trailing `len(shape)` axes of `a` (any leading stack axes kept) up to `shape`."""
    lead = a.ndim - len(shape)
    pads = [(0, 0)] * lead + [(0, s - a.shape[lead + i]) for i, s in enumerate(shape)]
    return jnp.pad(a, pads, constant_values=fill)


def _resized_linear(lin: eqx.nn.Linear, in_features: int, out_features: int) -> eqx.nn.Linear:
    """`lin` zero-padded to `(out_features, in_features)` (stacked weights keep their lead)."""
    new = eqx.nn.Linear(in_features, out_features, use_bias=lin.use_bias, key=jax.random.key(0))
    weight = _pad_trailing(lin.weight, (out_features, in_features))
    if not lin.use_bias:
        return eqx.tree_at(lambda m: m.weight, new, weight)
    bias = _pad_trailing(lin.bias, (out_features,))
    return eqx.tree_at(lambda m: (m.weight, m.bias), new, (weight, bias))


class MaskedLayerNorm(eqx.Module):
    """Layer norm over the units where `mask` is True; exactly zero elsewhere.

    With an all-True mask this is `eqx.nn.LayerNorm(w)` (same `eps`, biased variance).
    """

    weight: Float[Array, " w"]
    bias: Float[Array, " w"]
    eps: float = eqx.field(static=True, default=1e-5)

    def __call__(self, h: Float[Array, " w"], mask: Bool[Array, " w"]) -> Float[Array, " w"]:
        count = jnp.sum(mask).astype(h.dtype)
        mean = jnp.sum(jnp.where(mask, h, 0.0)) / count
        centered = jnp.where(mask, h - mean, 0.0)
        var = jnp.sum(centered * centered) / count
        out = centered * jax.lax.rsqrt(var + self.eps) * self.weight + self.bias
        return jnp.where(mask, out, 0.0)


class Block(eqx.Module):
    """`h + fc2(relu(fc1(norm(h))))`, pre-norm residual block."""

    norm: MaskedLayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __call__(self, h: Array, mask: Array) -> Array:
        z = self.norm(h, mask)
        z = jnp.where(mask, jax.nn.relu(self.fc1(z)), 0.0)
        return jnp.where(mask, h + self.fc2(z), 0.0)


class ResidualMLP(eqx.Module):
    """Residual MLP with layer norms (see the module docstring); one example in, logits out.

    Example:
        >>> net = ResidualMLP(64, 16, 10, key=jax.random.key(0))
        >>> net(jnp.ones((8, 8, 1))).shape, net.padded(32)(jnp.ones(64)).shape
        ((10,), (10,))

    Attributes:
        embed, blocks, norm, head: the layers (`eqx.nn.Linear`s, `MaskedLayerNorm`s).
        mask: `(W,)` boolean, True on the real units (`W` = the padded width; not trainable).
    """

    embed: eqx.nn.Linear
    blocks: tuple[Block, ...]
    norm: MaskedLayerNorm
    head: eqx.nn.Linear
    mask: Bool[Array, " w"]

    def __init__(self, in_size: int, width: int, num_classes: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 2 + 2 * NUM_BLOCKS)
        ones, zeros = jnp.ones((width,)), jnp.zeros((width,))
        self.embed = eqx.nn.Linear(in_size, width, key=keys[0])
        self.blocks = tuple(
            Block(
                MaskedLayerNorm(ones, zeros),
                eqx.nn.Linear(width, width, key=keys[2 + 2 * b]),
                eqx.nn.Linear(width, width, key=keys[3 + 2 * b]),
            )
            for b in range(NUM_BLOCKS)
        )
        self.norm = MaskedLayerNorm(ones, zeros)
        self.head = eqx.nn.Linear(width, num_classes, key=keys[1])
        self.mask = jnp.ones((width,), bool)

    def __call__(self, x: Array) -> Float[Array, " o"]:
        h = jnp.where(self.mask, self.embed(jnp.reshape(x, (-1,))), 0.0)
        for block in self.blocks:
            h = block(h, self.mask)
        return self.head(self.norm(h, self.mask))

    def padded(self, pad_to: int) -> "ResidualMLP":
        """The same function inside a `pad_to`-wide shape (works on a stacked pack too).

        Every width-sized axis is zero-padded (the mask with False), so the padded parameters are
        exactly zero, their gradients are exactly zero (every padded unit is masked to zero, and
        layer-norm statistics skip it), and the outputs, gradients of the real parameters and
        NTK are those of `self`.

        Args:
            pad_to: the new width, at least the current one.

        Returns:
            A `ResidualMLP` with `(pad_to,)` masks and `pad_to`-wide layers.
        """
        width = self.mask.shape[-1]
        if int(pad_to) < width:
            raise ValueError(
                f"pad_to={pad_to} is smaller than the width {width}; use pad_to >= {width}."
            )
        w = int(pad_to)

        def norm(n: MaskedLayerNorm) -> MaskedLayerNorm:
            return MaskedLayerNorm(
                _pad_trailing(n.weight, (w,)), _pad_trailing(n.bias, (w,)), n.eps
            )

        return eqx.tree_at(
            lambda m: (m.embed, m.blocks, m.norm, m.head, m.mask),
            self,
            (
                _resized_linear(self.embed, self.embed.in_features, w),
                tuple(
                    Block(norm(b.norm), _resized_linear(b.fc1, w, w), _resized_linear(b.fc2, w, w))
                    for b in self.blocks
                ),
                norm(self.norm),
                _resized_linear(self.head, w, self.head.out_features),
                _pad_trailing(self.mask, (w,), fill=False),
            ),
        )


def model_fn(width: int, key: PRNGKeyArray, *, input_shape: tuple, num_classes: int) -> ResidualMLP:
    """One member: a `ResidualMLP` of `width` units on `prod(input_shape)` inputs."""
    return ResidualMLP(math.prod(input_shape), int(width), int(num_classes), key=key)


def get_config():
    """The `quick` preset on digits with three widths, two seeds and 40 epochs."""
    c = ntkbench.get_config("quick")
    c.name = "residual_mlp"
    c.widths = (16, 64, 256)
    c.depth = (NUM_BLOCKS,)  # labels the results: the number of residual blocks
    c.num_seeds = 2
    c.epochs = 40
    return c
