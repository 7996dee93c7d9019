"""Structured NTK of dense networks (docs/definitions.md §1): conjugate kernel ⊙ backprop-signal Gram.

For a dense layer `u = W h + b`, `∂f_a(x_i)/∂W = δ_ia h_iᵀ` and `∂f_a(x_i)/∂b = δ_ia`, so

    Θ_l[(i,a),(j,b)] = (<h_il, h_jl> + [has_bias]) · <δ_ial, δ_jbl>,   Θ = Σ_l Θ_l.

The `δ_l` are the derivatives of the logits w.r.t. an additive perturbation `eps_l` of the
pre-activation (one reverse pass per logit, batched: `jacrev` over `eps`). Each term is two
large Gram matmuls, `H_l H_lᵀ` `(n1, n2)` and `Δ_l Δ_lᵀ` `(n1·O, n2·O)`, multiplied
elementwise; nothing of size `P` (the parameter count) is ever formed.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._common import (
    block_len,
    check_inputs,
    gram,
    map_examples,
    sample_major,
    tiled,
)
from ._protocol import check_structured


class Features(NamedTuple):
    """Per-example ingredients of the structured NTK, one entry per dense layer.

    Attributes:
        inputs: `h_l` `(n, in_l)`.
        deltas: `δ_l` `(n, O, out_l)`, `δ_l[i, a] = ∂f_a(x_i)/∂u_l`.
    """

    inputs: tuple[Float[Array, "n in_l"], ...]
    deltas: tuple[Float[Array, "n o out_l"], ...]


def _dtype(model):
    leaves = [leaf for leaf in jax.tree.leaves(model) if eqx.is_inexact_array(leaf)]
    return jnp.result_type(*leaves) if leaves else jnp.float32


def _check_features(feats: Features, layout) -> None:
    if len(feats.inputs) != len(layout):
        raise ValueError(
            f"structured_forward returned {len(feats.inputs)} layer inputs but structured_layout "
            f"lists {len(layout)} layers; return one input per dense layer, in layout order."
        )
    for l, (h, (i, o, _)) in enumerate(zip(feats.inputs, layout)):
        if h.shape[-1:] != (i,) or feats.deltas[l].shape[-1:] != (o,):
            raise ValueError(
                f"Dense layer {l}: structured_layout says (in, out) = ({i}, {o}) but "
                f"structured_forward gives an input of shape {h.shape[-1:]} and a signal of "
                f"shape {feats.deltas[l].shape[-1:]}; make the layout match the forward pass."
            )


def example_features(model, layout, xi: Array) -> Features:
    """`h_l` `(in_l,)` and `δ_l` `(O, out_l)` of ONE example: a forward pass and O reverse passes
    (`jacrev` over the pre-activation perturbations; vmapped, each layer's backward is one matmul
    over all logits and examples)."""
    dtype = _dtype(model)
    eps = tuple(jnp.zeros((o,), dtype) for _, o, _ in layout)

    def fwd(e):
        logits, inputs = model.structured_forward(xi, e)
        return logits, tuple(inputs)

    deltas, inputs = jax.jacrev(fwd, has_aux=True)(eps)
    feats = Features(inputs, tuple(deltas))
    _check_features(feats, layout)
    return feats


def features(model, layout, x: Array, block_size: int | None = None) -> Features:
    """`Features` of every example of `x`, `block_size` examples at a time (None: all)."""
    return map_examples(
        lambda xi: example_features(model, layout, xi), x, block_len(x.shape[0], block_size)
    )


def layer_terms(f1: Features, f2: Features, layout):
    """Yield `(C_l, K_l, G_l)` per layer: the conjugate kernel `C_l = H1 H2ᵀ` `(n1, n2)`,
    `K_l = C_l + [has_bias]` and the signal Gram `G_l` `(n1, O, n2, O)`."""
    for h1, h2, d1, d2, (_, _, has_bias) in zip(f1.inputs, f2.inputs, f1.deltas, f2.deltas, layout):
        c = gram(h1, h2)
        g = gram(d1, d2, free=2)
        yield c, (c + 1.0 if has_bias else c), g


def _tile(f1: Features, f2: Features, layout) -> Float[Array, "n1 n2 o o"]:
    acc = None
    for _, k, g in layer_terms(f1, f2, layout):
        term = k[:, None, :, None] * g
        acc = term if acc is None else acc + term
    return sample_major(acc)


def ntk_structured(
    model, x1: Array, x2: Array | None = None, block_size: int | None = None
) -> Float[Array, "n1 n2 o o"]:
    """Structured NTK (see the module docstring); `model` must implement `StructuredModel`.

    Memory: the features `n·(Σ in_l + O·Σ out_l)` floats (computed `block_size` examples at a
    time) plus the output; with `block_size`, one `(b, b, O, O)` tile of intermediates. For a
    pack of members see `ntkbench.kernels.pack_map`.
    """
    layout, f1, f2, n1, n2, o = _prepare(model, x1, x2, block_size)
    like = jax.ShapeDtypeStruct((n1, n2, o, o), f1.deltas[0].dtype)
    return tiled(
        lambda r: r,
        lambda r, _, c: _tile(r, c, layout),
        f1,
        f2,
        block_len(n1, block_size),
        block_len(n2, block_size),
        like,
        symmetric=x2 is None,
    )


def _prepare(model, x1: Array, x2: Array | None, block_size: int | None):
    """Checked layout, both sides' features, the sample counts and the number of logits."""
    check_inputs(x1, x2)
    layout = check_structured(model)
    f1 = features(model, layout, x1, block_size)
    f2 = f1 if x2 is None else features(model, layout, x2, block_size)
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    return layout, f1, f2, n1, n2, f1.deltas[0].shape[1]


def diagonal_structured(model, x: Array, block_size: int | None = None) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = Σ_l (|h_il|² + [has_bias]) |δ_ial|²`, without forming the NTK."""
    layout = check_structured(model)

    def diag(xi):
        f = example_features(model, layout, xi)
        out = None
        for h, d, (_, _, has_bias) in zip(f.inputs, f.deltas, layout):
            hh = jnp.sum(h * h) + (1.0 if has_bias else 0.0)
            term = hh * jnp.sum(d * d, axis=-1)
            out = term if out is None else out + term
        return out

    return map_examples(diag, x, block_len(x.shape[0], block_size))


class LayerNTKs(NamedTuple):
    """Per-layer NTK contributions and conjugate kernels of a structured model.

    Attributes:
        ntks: `(L, n1, n2, O, O)`; `ntks.sum(0)` is the NTK. Entry `l` is the contribution of
            the weight and bias of dense layer `l` (layout order).
        conjugate_kernels: one `(n1, n2)` array per dense layer, `H_l H_lᵀ` (the Gram of the
            layer's inputs, without the bias term; layer 0: the raw inputs). A tuple, not a
            stack: under `eqx.filter_vmap` layer 0's kernel does not depend on the member, and
            stacking it with member-dependent ones fails on explicit-sharding meshes (JAX 0.10).
    """

    ntks: Float[Array, "l n1 n2 o o"]
    conjugate_kernels: tuple[Float[Array, "n1 n2"], ...]


def layer_ntks_structured(
    model, x1: Array, x2: Array | None = None, block_size: int | None = None
) -> LayerNTKs:
    """Per-layer NTKs and conjugate kernels (see `LayerNTKs`); memory `L` times the NTK."""
    layout, f1, f2, n1, n2, o = _prepare(model, x1, x2, block_size)
    like = jax.ShapeDtypeStruct((len(layout), n1, n2, o, o), f1.deltas[0].dtype)

    def tile(r, c):
        return jnp.stack(
            [sample_major(k[:, None, :, None] * g) for _, k, g in layer_terms(r, c, layout)]
        )

    ntks = tiled(
        lambda r: r,
        lambda r, _, c: tile(r, c),
        f1,
        f2,
        block_len(n1, block_size),
        block_len(n2, block_size),
        like,
        lead=1,
        symmetric=x2 is None,
    )
    cks = tuple(gram(h1, h2) for h1, h2 in zip(f1.inputs, f2.inputs))
    return LayerNTKs(ntks, cks)
