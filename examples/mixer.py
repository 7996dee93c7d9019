"""Example config: a small MLP-Mixer on digits.

Run it with `ntkbench run --config=examples/mixer.py --workdir=runs/mixer`.

A config file for a user's own model defines two things:

- `get_config()`: the sweep, a preset's `ConfigDict` with some fields overridden (here `quick`
  on digits with three widths, two seeds, 40 epochs). Command-line overrides
  (`--config.epochs=100`) apply on top, as for presets.
- `model_fn(width, key, *, input_shape, num_classes) -> eqx.Module`: builds ONE member of width
  `width` from its init key. The model maps ONE example to `(num_classes,)` logits.
  `input_shape` is the shape of one image, channels last (digits: `(8, 8, 1)`); the training
  loop and the NTK records pass each example FLATTENED, as a vector of `prod(input_shape)`
  entries, so a model must accept that (this one reshapes any input to its tokens). Batching is
  the caller's `jax.vmap`; members of a pack are stacked with `eqx.filter_vmap`. Trainable
  parameters are the model's inexact (floating) array leaves.

This model has no `padded` method, so every width is its own pack.

Architecture (`w = width`, `T = input_shape[0]` tokens of `prod(input_shape[1:])` pixels: on
digits 8 tokens, the image rows, of 8 pixels):

    tokens (T, d) -> Linear(d, w) per token
      -> 2 x mixer block:  h + token-mixing MLP across the T tokens (per channel, on LayerNorm(h))
                           h + channel-mixing MLP across the w channels (per token, on LayerNorm(h))
      -> LayerNorm per token -> mean over tokens -> Linear(w, num_classes)

Every Linear except the head runs under a `jax.vmap` (per token or per channel), so the hybrid
NTK kernel computes their contribution matrix-free; only the head uses the dense-layer identity
(`ntkbench.kernels.explain_method` lists this).

(No `from __future__ import annotations` here: Equinox modules with string annotations need
their module in `sys.modules`, which not every way of loading a config file provides.)
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

import ntkbench

NUM_BLOCKS = 2
TOKEN_HIDDEN = 2  # token-mixing hidden size, in multiples of T
CHANNEL_HIDDEN = 2  # channel-mixing hidden size, in multiples of w


class MlpBlock(eqx.Module):
    """`fc2(gelu(fc1(v)))` on one vector."""

    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, size: int, hidden: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.fc1 = eqx.nn.Linear(size, hidden, key=k1)
        self.fc2 = eqx.nn.Linear(hidden, size, key=k2)

    def __call__(self, v: Array) -> Array:
        return self.fc2(jax.nn.gelu(self.fc1(v)))


class MixerBlock(eqx.Module):
    """Token mixing then channel mixing, each pre-norm and residual, on `(T, w)` activations."""

    token_norm: eqx.nn.LayerNorm
    token_mlp: MlpBlock
    channel_norm: eqx.nn.LayerNorm
    channel_mlp: MlpBlock

    def __init__(self, num_tokens: int, width: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.token_norm = eqx.nn.LayerNorm(width)
        self.token_mlp = MlpBlock(num_tokens, TOKEN_HIDDEN * num_tokens, key=k1)
        self.channel_norm = eqx.nn.LayerNorm(width)
        self.channel_mlp = MlpBlock(width, CHANNEL_HIDDEN * width, key=k2)

    def __call__(self, h: Float[Array, "t w"]) -> Float[Array, "t w"]:
        z = jax.vmap(self.token_norm)(h)
        h = h + jax.vmap(self.token_mlp)(z.T).T  # per channel, across tokens
        z = jax.vmap(self.channel_norm)(h)
        return h + jax.vmap(self.channel_mlp)(z)  # per token, across channels


class Mixer(eqx.Module):
    """MLP-Mixer on image rows as tokens (see the module docstring); one example in, logits out.

    Example:
        >>> net = Mixer((8, 8, 1), 16, 10, key=jax.random.key(0))
        >>> net(jnp.ones(64)).shape
        (10,)
    """

    embed: eqx.nn.Linear
    blocks: tuple[MixerBlock, ...]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    num_tokens: int = eqx.field(static=True)

    def __init__(self, input_shape: tuple, width: int, num_classes: int, *, key: PRNGKeyArray):
        self.num_tokens = int(input_shape[0])
        token_size = math.prod(input_shape[1:])
        keys = jax.random.split(key, 2 + NUM_BLOCKS)
        self.embed = eqx.nn.Linear(token_size, width, key=keys[0])
        self.blocks = tuple(MixerBlock(self.num_tokens, width, key=k) for k in keys[2:])
        self.norm = eqx.nn.LayerNorm(width)
        self.head = eqx.nn.Linear(width, num_classes, key=keys[1])

    def __call__(self, x: Array) -> Float[Array, " o"]:
        tokens = jnp.reshape(x, (self.num_tokens, -1))
        h = jax.vmap(self.embed)(tokens)
        for block in self.blocks:
            h = block(h)
        return self.head(jnp.mean(jax.vmap(self.norm)(h), axis=0))


def model_fn(width: int, key: PRNGKeyArray, *, input_shape: tuple, num_classes: int) -> Mixer:
    """One member: a `Mixer` of `width` channels on `input_shape[0]` tokens."""
    return Mixer(tuple(input_shape), int(width), int(num_classes), key=key)


def get_config():
    """The `quick` preset on digits with three widths, two seeds and 40 epochs."""
    c = ntkbench.get_config("quick")
    c.name = "mixer"
    c.widths = (16, 32, 64)
    c.depth = (NUM_BLOCKS,)  # labels the results: the number of mixer blocks
    c.num_seeds = 2
    c.epochs = 40
    return c
