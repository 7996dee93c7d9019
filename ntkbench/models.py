"""Equinox models that map ONE example to `O` logits (docs/definitions.md §9).

Batching is the caller's `jax.vmap`; ensembles are `eqx.filter_vmap` over stacked members.

`MLP(..., pad_to=W)` builds a network of true width `w` inside a `W`-wide shape. The weights of
the true network are drawn at their true shape (so the init distribution and fan-in are exactly
those of the unpadded net, and the values do not depend on `W`), then zero-padded; boolean masks
zero the padded hidden units. Padded parameters therefore get exactly zero gradient and never move
under Adam or SGD, and the function, gradients and NTK equal those of the unpadded network.

`MLP` implements the `structured` NTK protocol of `ntkbench.kernels` (`structured_layout`,
`structured_forward` and, for per-parameter weights, `structured_leaves`): all its trainable
parameters are dense layers. The CNN does not (its NTK uses the implicit or Jacobian method).

Parametrizations (docs/definitions.md, "Parametrizations"; `ntkbench.parametrization`): both
models take `parametrization` ("standard", "ntk" or "mup") and `base_width`. A layer then
computes `u = W (a·h) + b` with the forward multiplier `a` of its kind (input, hidden, output,
fixed) at the member's TRUE width (a traced int in a padded MLP, so every member of a pack uses
its own), its weights are drawn at their true shape times the table's init gain, and
`lr_multipliers(optimizer)` gives every parameter's learning-rate multiplier. `a·h` is what the
structured NTK sees as the layer's input, so the dense-layer identity holds exactly. "standard"
runs exactly the code, and gives the bits, of a model without a parametrization.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ntkbench.parametrization import LayerKind, layer_scales

Init = Literal["lecun_normal", "xavier_uniform", "he_uniform"]

_INITIALIZERS = {
    # Flax/JAX lecun_normal: truncated normal on [-2, 2], std sqrt(1/fan_in) after truncation.
    "lecun_normal": jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=-2),
    "xavier_uniform": jax.nn.initializers.glorot_uniform(in_axis=-1, out_axis=-2),
    "he_uniform": jax.nn.initializers.he_uniform(in_axis=-1, out_axis=-2),
}


def init_dense(
    key: PRNGKeyArray, out_size: int, in_size: int, init: Init, dtype=jnp.float32
) -> tuple[Float[Array, "out in"], Float[Array, " out"]]:
    """Weight `(out, in)` and zero bias of one dense layer, drawn at its true shape."""
    if init not in _INITIALIZERS:
        raise ValueError(f"Unknown init {init!r}; choose one of {sorted(_INITIALIZERS)}.")
    w = _INITIALIZERS[init](key, (out_size, in_size), dtype)
    return w, jnp.zeros((out_size,), dtype)


def _mlp_scales(parametrization: str, in_size: int, width, depth: int, base_width: int,
                optimizer: str = "adam"):
    """`layer_scales` of every dense layer of an MLP: input, `depth - 1` hidden, output."""
    kinds = [LayerKind.INPUT] + [LayerKind.HIDDEN] * (depth - 1) + [LayerKind.OUTPUT]
    fan_ins = [in_size] + [width] * depth
    return [layer_scales(parametrization, optimizer, kind, fan_in=f, width=width,
                         base_width=base_width) for kind, f in zip(kinds, fan_ins)]


def _cnn_scales(parametrization: str, image_shape, filters: int, num_conv: int, hidden: int,
                base_width: int, optimizer: str = "adam"):
    """`layer_scales` of the CNN's layers: the first convolution (input: fixed fan-in `9·C`),
    the others (hidden: fan-in `9·filters`), the dense layer (output: its fan-in, the pooled
    features, grows with the filters; its fan-out `hidden` is fixed) and the readout (fixed)."""
    h, w, c = image_shape
    features = (h // 2**num_conv) * (w // 2**num_conv) * filters
    kinds = ([LayerKind.INPUT] + [LayerKind.HIDDEN] * (num_conv - 1)
             + [LayerKind.OUTPUT, LayerKind.FIXED])
    fan_ins = [9 * c] + [9 * filters] * (num_conv - 1) + [features, hidden]
    return [layer_scales(parametrization, optimizer, kind, fan_in=f, width=filters,
                         base_width=base_width) for kind, f in zip(kinds, fan_ins)]


def _pad2(w: Array, rows: int, cols: int) -> Array:
    return jnp.pad(w, ((0, rows - w.shape[0]), (0, cols - w.shape[1])))


class MLP(eqx.Module):
    """`depth` hidden ReLU layers of `width` units and a linear readout to `out_size` logits.

    Example:
        >>> model = MLP(64, 10, width=32, depth=3, key=jax.random.key(0), pad_to=128)
        >>> model(jnp.ones(64)).shape
        (10,)

    Attributes:
        weights: `depth + 1` arrays; hidden layer `l` is `(W, in_l)`, the readout `(out, W)`,
            with `W = pad_to or width`.
        biases: `depth + 1` arrays `(W,)`, readout `(out,)`.
        masks: `depth` boolean arrays `(W,)`, True on the `width` real units (not trainable).
        width: int32 scalar, the true width (not trainable; differs across a padded pack).
    """

    weights: tuple[Float[Array, "o i"], ...]
    biases: tuple[Float[Array, " o"], ...]
    masks: tuple[Bool[Array, " w"], ...]
    width: Int[Array, ""]
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    padded_width: int = eqx.field(static=True)
    parametrization: str = eqx.field(static=True, default="standard")
    base_width: int = eqx.field(static=True, default=64)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int,
        depth: int,
        *,
        key: PRNGKeyArray,
        pad_to: int | None = None,
        init: Init = "lecun_normal",
        parametrization: str = "standard",
        base_width: int = 64,
        dtype=jnp.float32,
    ):
        width, depth = int(width), int(depth)
        if width < 1 or depth < 1 or in_size < 1 or out_size < 1:
            raise ValueError(
                f"MLP needs positive sizes, got in_size={in_size}, out_size={out_size}, "
                f"width={width}, depth={depth}."
            )
        padded = width if pad_to is None else int(pad_to)
        if padded < width:
            raise ValueError(f"pad_to={padded} is smaller than width={width}; use pad_to >= width.")
        keys = jax.random.split(key, depth + 1)
        sizes = [in_size] + [width] * depth + [out_size]
        padded_sizes = [in_size] + [padded] * depth + [out_size]
        weights, biases = [], []
        with jax.ensure_compile_time_eval():  # Python numbers: the sizes are static
            gains = [float(s.init_gain) for s in _mlp_scales(parametrization, in_size, width,
                                                              depth, base_width)]
        for l, k in enumerate(keys):
            w, b = init_dense(k, sizes[l + 1], sizes[l], init, dtype)
            if gains[l] != 1.0:  # the standard draw is kept bit for bit
                w = w * jnp.asarray(gains[l], dtype)
            weights.append(_pad2(w, padded_sizes[l + 1], padded_sizes[l]))
            biases.append(jnp.pad(b, (0, padded_sizes[l + 1] - sizes[l + 1])))
        self.weights = tuple(weights)
        self.biases = tuple(biases)
        self.masks = tuple(jnp.arange(padded) < width for _ in range(depth))
        self.width = jnp.asarray(width, jnp.int32)
        self.in_size, self.out_size, self.depth, self.padded_width = (
            in_size, out_size, depth, padded,
        )
        self.parametrization, self.base_width = str(parametrization), int(base_width)

    def multipliers(self) -> tuple[Array, ...] | None:
        """The forward multiplier `a_l` of every dense layer at this member's true width, or
        None under the standard parametrization (all 1: nothing is multiplied)."""
        if self.parametrization == "standard":
            return None
        scales = _mlp_scales(self.parametrization, self.in_size, self.width, self.depth,
                             self.base_width)
        return tuple(s.multiplier for s in scales)

    def lr_multipliers(self, optimizer: str):
        """Every trainable parameter's learning-rate multiplier (a pytree like
        `eqx.filter(self, eqx.is_inexact_array)` of scalars), at this member's true width.

        Example:
            >>> m = MLP(4, 2, width=128, depth=2, key=jax.random.key(0), parametrization="mup",
            ...         base_width=64)
            >>> [float(v) for v in m.lr_multipliers("adam").weights]
            [1.0, 0.5, 1.0]
        """
        scales = _mlp_scales(self.parametrization, self.in_size, self.width, self.depth,
                             self.base_width, optimizer)
        params = eqx.filter(self, eqx.is_inexact_array)
        return eqx.tree_at(lambda t: (t.weights, t.biases), params,
                           (tuple(s.lr_mult for s in scales),
                            tuple(s.bias_lr_mult for s in scales)))

    def structured_layout(self) -> tuple[tuple[int, int, bool], ...]:
        """`(in_size, out_size, has_bias)` of every dense layer, in forward order (padded sizes)."""
        sizes = [self.in_size] + [self.padded_width] * self.depth + [self.out_size]
        return tuple((sizes[l], sizes[l + 1], True) for l in range(self.depth + 1))

    def structured_leaves(self, tree) -> tuple[tuple[object, object], ...]:
        """The `(W_l, b_l)` leaves of `tree`, a pytree of this model's structure (its trainable
        parameters `eqx.filter(self, eqx.is_inexact_array)`, or per-parameter weights of that
        structure), one pair per dense layer in the order of `structured_layout()`.

        Example:
            >>> model = MLP(4, 2, width=8, depth=1, key=jax.random.key(0))
            >>> w = jax.tree.map(lambda p: 1.0, eqx.filter(model, eqx.is_inexact_array))
            >>> model.structured_leaves(w)
            ((1.0, 1.0), (1.0, 1.0))
        """
        return tuple(zip(tree.weights, tree.biases))

    def structured_forward(
        self, x: Array, eps: Sequence[Array] | None = None
    ) -> tuple[Float[Array, " o"], tuple[Array, ...]]:
        """Forward pass with additive perturbations of every pre-activation.

        Args:
            x: one example, any shape with `in_size` elements.
            eps: one array `(out_l,)` per dense layer, added to `W_l h_l + b_l`; None for zeros.

        Returns:
            The logits `(out_size,)` and the inputs `h_l` of every dense layer.
        """
        h = jnp.reshape(x, (-1,))
        inputs = []
        scale = self.multipliers()
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if scale is not None:
                h = scale[l].astype(h.dtype) * h  # u = W (a h) + b: a·h is the layer's input
            inputs.append(h)
            u = w @ h + b
            if eps is not None:
                u = u + eps[l]
            if l < self.depth:
                h = jnp.where(self.masks[l], jax.nn.relu(u), 0.0)
            else:
                h = u
        return h, tuple(inputs)

    def __call__(self, x: Array) -> Float[Array, " o"]:
        return self.structured_forward(x)[0]

    def padded(self, pad_to: int) -> MLP:
        """The same network inside a `pad_to`-wide shape, as `MLP(..., pad_to=pad_to)` builds it.

        Works on a stacked pack too (it pads the trailing axes). The zero padding is done on the
        host, exactly, so the real entries keep their bits.
        """
        pad_to = int(pad_to)
        if pad_to < self.padded_width:
            raise ValueError(f"pad_to={pad_to} is smaller than the current width "
                             f"{self.padded_width}; use pad_to >= {self.padded_width}.")
        sizes = [self.in_size] + [pad_to] * self.depth + [self.out_size]

        def pad(a, shape):
            a = np.asarray(a)
            lead = a.ndim - len(shape)
            return jnp.asarray(np.pad(a, [(0, 0)] * lead + [
                (0, s - a.shape[lead + i]) for i, s in enumerate(shape)]))

        return self._resized(
            pad_to,
            tuple(pad(W, (sizes[l + 1], sizes[l])) for l, W in enumerate(self.weights)),
            tuple(pad(b, (sizes[l + 1],)) for l, b in enumerate(self.biases)),
            tuple(pad(m, (pad_to,)) for m in self.masks),
        )

    def unpadded(self) -> MLP:
        """The same network at its true width (one member, concrete `width` only)."""
        w = int(self.width)
        sizes = [self.in_size] + [w] * self.depth + [self.out_size]
        return self._resized(
            w,
            tuple(W[: sizes[l + 1], : sizes[l]] for l, W in enumerate(self.weights)),
            tuple(b[: sizes[l + 1]] for l, b in enumerate(self.biases)),
            tuple(m[:w] for m in self.masks),
        )

    def _resized(self, padded_width: int, weights, biases, masks) -> MLP:
        """This network with new arrays at another padded width (no re-initialization)."""
        net = object.__new__(MLP)
        fields = dict(weights=weights, biases=biases, masks=masks, width=self.width,
                      in_size=self.in_size, out_size=self.out_size, depth=self.depth,
                      padded_width=padded_width, parametrization=self.parametrization,
                      base_width=self.base_width)
        for name, value in fields.items():
            object.__setattr__(net, name, value)
        return net


class CNN(eqx.Module):
    """The noise-scaling CNN: `num_conv` conv layers of `filters` filters, a dense layer of
    `hidden` units, He uniform (the paper: 3 x 32, dense 64; docs/definitions.md, "models").

    Each conv block is a 3x3 'SAME' convolution, ReLU and 2x2 max pooling. Input is one image
    `(H, W, C)` (channels last, as the datasets store them; a flat vector is reshaped), output
    `out_size` logits. In a sweep, `width` is the number of filters and `depth` the number of
    conv layers.

    Example:
        >>> cnn = CNN((8, 8, 1), 10, key=jax.random.key(0), filters=4)
        >>> cnn(jnp.ones(64)).shape
        (10,)
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    dense: Float[Array, "h f"]
    dense_bias: Float[Array, " h"]
    readout: Float[Array, "o h"]
    readout_bias: Float[Array, " o"]
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    parametrization: str = eqx.field(static=True, default="standard")
    base_width: int = eqx.field(static=True, default=32)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        out_size: int,
        *,
        key: PRNGKeyArray,
        filters: int = 32,
        num_conv: int = 3,
        hidden: int = 64,
        init: Init = "he_uniform",
        parametrization: str = "standard",
        base_width: int = 32,
        dtype=jnp.float32,
    ):
        self.image_shape = tuple(image_shape)
        self.out_size = out_size
        self.parametrization, self.base_width = str(parametrization), int(base_width)
        if image_shape[0] >> num_conv < 1 or image_shape[1] >> num_conv < 1:
            raise ValueError(f"Image shape {image_shape} is too small for {num_conv} pooling "
                             f"stages (needs >= {2**num_conv}x{2**num_conv}); use fewer conv "
                             "layers (depth).")
        with jax.ensure_compile_time_eval():  # Python numbers: the sizes are static
            gains = [float(s.init_gain) for s in _cnn_scales(self.parametrization, image_shape,
                                                               filters, num_conv, hidden,
                                                               self.base_width)]
        h, w, c = image_shape
        keys = jax.random.split(key, num_conv + 2)
        convs = []
        in_ch = c
        for l, k in enumerate(keys[:num_conv]):
            conv = eqx.nn.Conv2d(in_ch, filters, 3, padding="SAME", key=k, dtype=dtype)
            fan_in = in_ch * 9
            kernel = _INITIALIZERS[init](k, (filters, fan_in), dtype).reshape(conv.weight.shape)
            if gains[l] != 1.0:  # the standard draw is kept bit for bit
                kernel = kernel * jnp.asarray(gains[l], dtype)
            conv = eqx.tree_at(lambda cv: (cv.weight, cv.bias), conv,
                               (kernel, jnp.zeros_like(conv.bias)))
            convs.append(conv)
            in_ch = filters
            h, w = h // 2, w // 2
        features = h * w * filters
        self.convs = tuple(convs)
        self.dense, self.dense_bias = init_dense(keys[-2], hidden, features, init, dtype)
        self.readout, self.readout_bias = init_dense(keys[-1], out_size, hidden, init, dtype)
        if gains[-2] != 1.0:
            self.dense = self.dense * jnp.asarray(gains[-2], dtype)
        if gains[-1] != 1.0:
            self.readout = self.readout * jnp.asarray(gains[-1], dtype)

    def _scales(self, optimizer: str = "adam"):
        filters, num_conv = self.convs[0].out_channels, len(self.convs)
        return _cnn_scales(self.parametrization, self.image_shape, filters, num_conv,
                           self.dense.shape[0], self.base_width, optimizer)

    def lr_multipliers(self, optimizer: str):
        """Every trainable parameter's learning-rate multiplier (a pytree like
        `eqx.filter(self, eqx.is_inexact_array)` of scalars): convolutions in order, the dense
        layer (an output-kind layer: its fan-in grows with the filters), the readout (fixed)."""
        s = self._scales(optimizer)
        params = eqx.filter(self, eqx.is_inexact_array)
        convs = tuple(eqx.tree_at(lambda cv: (cv.weight, cv.bias), cv,
                                  (si.lr_mult, si.bias_lr_mult))
                      for cv, si in zip(params.convs, s))
        return eqx.tree_at(lambda t: (t.convs, t.dense, t.dense_bias, t.readout,
                                      t.readout_bias), params,
                           (convs, s[-2].lr_mult, s[-2].bias_lr_mult, s[-1].lr_mult,
                            s[-1].bias_lr_mult))

    def __call__(self, x: Array) -> Float[Array, " o"]:
        h = jnp.transpose(jnp.reshape(x, self.image_shape), (2, 0, 1))
        a = None
        if self.parametrization != "standard":
            with jax.ensure_compile_time_eval():  # the CNN's sizes are static
                a = [float(s.multiplier) for s in self._scales()]
        for l, conv in enumerate(self.convs):
            h = jax.nn.relu(conv(h if a is None or a[l] == 1.0 else a[l] * h))
            h = eqx.nn.MaxPool2d(2, 2)(h)
        h = jnp.reshape(h, (-1,))
        if a is not None and a[-2] != 1.0:
            h = a[-2] * h
        h = jax.nn.relu(self.dense @ h + self.dense_bias)
        if a is not None and a[-1] != 1.0:
            h = a[-1] * h
        return self.readout @ h + self.readout_bias


def stack(members: Sequence[eqx.Module]) -> eqx.Module:
    """Stack same-shaped members (e.g. padded to one width) along a new leading member axis."""
    arrays = [eqx.filter(m, eqx.is_array) for m in members]
    static = eqx.filter(members[0], eqx.is_array, inverse=True)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *arrays)
    return eqx.combine(stacked, static)


def concat(packs: Sequence[eqx.Module]) -> eqx.Module:
    """Concatenate stacked ensembles (same padded shape) along their member axis."""
    arrays = [eqx.filter(m, eqx.is_array) for m in packs]
    static = eqx.filter(packs[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree.map(lambda *xs: jnp.concatenate(xs), *arrays), static)


def member(stacked: eqx.Module, i: int) -> eqx.Module:
    """Member `i` of a stacked ensemble."""
    arrays, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[i], arrays), static)
