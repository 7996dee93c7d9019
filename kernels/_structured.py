"""Structured NTK of dense networks (docs/definitions.md §1): conjugate kernel ⊙ backprop-signal Gram.

For a dense layer `u = W h + b`, `∂f_a(x_i)/∂W = δ_ia h_iᵀ` and `∂f_a(x_i)/∂b = δ_ia`, so

    Θ_l[(i,a),(j,b)] = (<h_il, h_jl> + [has_bias]) · <δ_ial, δ_jbl>,   Θ = Σ_l Θ_l.

The `δ_l` are the derivatives of the logits w.r.t. an additive perturbation `eps_l` of the
pre-activation (one reverse pass per logit, batched: `jacrev` over `eps`). Each term is two
large Gram matmuls, `H_l H_lᵀ` `(n1, n2)` and `Δ_l Δ_lᵀ` `(n1·O, n2·O)`, multiplied
elementwise; nothing of size `P` (the parameter count) is ever formed.

With per-parameter weights (`ntk(..., weights=...)`), scalars `ω_l` on `W_l` and `β_l` on `b_l`
give `Θ_l = (ω_l <h_il, h_jl> + β_l [has_bias]) · <δ_ial, δ_jbl>`, at the same cost. A weight
of `W_l` that varies along one axis only, `r sᵀ` with `r` per output unit (`(out_l, 1)`) or `s`
per input (`(in_l,)`), and bias weights `β` `(out_l,)` factorize too:
`Θ_l = <h_il, s ⊙ h_jl> · <δ_ial, r ⊙ δ_jbl> + <δ_ial, β ⊙ δ_jbl>` (one more signal Gram). A full
`(out_l, in_l)` array does not; the jacobian and implicit methods take any weights.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._common import (
    block_len,
    check_inputs,
    check_weights,
    gram,
    map_examples,
    sample_major,
    tiled,
)
from ._protocol import check_structured, structured_leaves


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


class LayerWeights(NamedTuple):
    """The weights of one dense layer in factorized form: `W_l`'s weight is
    `out[:, None] * inp[None, :]`, `b_l`'s is `bias`.

    Attributes:
        out: `()` or `(out_l,)`.
        inp: None (1) or `(in_l,)`.
        bias: `()` or `(out_l,)`; None for a layer without bias.
    """

    out: Array
    inp: Array | None
    bias: Array | None


def layer_weights(pairs, layout, method: str = "structured") -> tuple[LayerWeights, ...] | None:
    """Per-layer `(w_W, w_b)` (arrays broadcastable to `(out_l, in_l)` and `(out_l,)`, e.g. what
    `model.structured_leaves(weights)` returns; `LayerWeights` pass through) in the factorized
    form of `LayerWeights`; None for None. Raises for a weight that varies along both axes of
    `W_l`."""
    if pairs is None:
        return None
    pairs = tuple(pairs)
    if len(pairs) != len(layout):
        raise ValueError(
            f"Got weights for {len(pairs)} dense layers but the layout has {len(layout)}; give "
            "one (w_W, w_b) pair per layer."
        )
    out = []
    for l, (pair, (i, o, has_bias)) in enumerate(zip(pairs, layout)):
        if isinstance(pair, LayerWeights):  # already in factorized form
            out.append(pair)
            continue
        ww, wb = pair
        ww = jnp.asarray(ww)
        if ww.ndim > 2 or np.broadcast_shapes(ww.shape, (o, i)) != (o, i):
            raise ValueError(
                f"Dense layer {l}: the weight of W_l has shape {ww.shape}, which does not "
                f"broadcast to ({o}, {i})."
            )
        w2 = jnp.reshape(ww, (1,) * (2 - ww.ndim) + ww.shape)
        if w2.shape[0] > 1 and w2.shape[1] > 1:
            raise ValueError(
                f"Dense layer {l}: method={method!r} takes weights of W_l that are scalars or "
                f"vary along one axis only ((out, 1) or (in,)), not {ww.shape}; use "
                "method='jacobian' or 'implicit' for arbitrary per-parameter weights."
            )
        if w2.shape[1] > 1:  # per input (or a scalar spread over the inputs)
            w_out, w_in = jnp.ones((), w2.dtype), w2[0, :]
        else:
            w_out, w_in = (w2[:, 0] if w2.shape[0] > 1 else w2[0, 0]), None
        w_b = None
        if has_bias:
            wb = jnp.asarray(wb)
            if wb.ndim > 1 or np.broadcast_shapes(wb.shape, (o,)) != (o,):
                raise ValueError(
                    f"Dense layer {l}: the weight of b_l has shape {wb.shape}, which does not "
                    f"broadcast to ({o},)."
                )
            w_b = wb if wb.ndim == 0 or wb.shape[0] > 1 else wb[0]
        out.append(LayerWeights(w_out, w_in, w_b))
    return tuple(out)


def model_layer_weights(model, layout, weights, method: str = "structured"):
    """`LayerWeights` of every dense layer of a `StructuredModel` from a parameter-shaped
    `weights` pytree (see `ntkbench.kernels.ntk`); None for None."""
    if weights is None:
        return None
    weights = check_weights(eqx.filter(model, eqx.is_inexact_array), weights)
    return layer_weights(structured_leaves(model, weights, layout, method), layout, method)


def _weighted_term(h1, h2, d1, d2, w: LayerWeights):
    """One layer's weighted NTK term `(n1, O, n2, O)` (see the module docstring)."""
    c = gram(h1 if w.inp is None else h1 * w.inp, h2)
    if w.out.ndim == 0 and (w.bias is None or w.bias.ndim == 0):
        k = w.out * c if w.bias is None else w.out * c + w.bias
        return k[:, None, :, None] * gram(d1, d2, free=2)
    term = c[:, None, :, None] * gram(d1 * w.out, d2, free=2)
    return term if w.bias is None else term + gram(d1 * w.bias, d2, free=2)


def layer_terms(f1: Features, f2: Features, layout, lw=None):
    """Yield every layer's NTK term `(n1, O, n2, O)`: `K_l ⊙ G_l` with the conjugate kernel
    `C_l = H1 H2ᵀ` `(n1, n2)`, `K_l = C_l + [has_bias]` and the signal Gram `G_l`; weighted by
    the `LayerWeights` `lw` when given."""
    for l, (h1, h2, d1, d2, (_, _, has_bias)) in enumerate(
        zip(f1.inputs, f2.inputs, f1.deltas, f2.deltas, layout)
    ):
        if lw is not None:
            yield _weighted_term(h1, h2, d1, d2, lw[l])
            continue
        c = gram(h1, h2)
        g = gram(d1, d2, free=2)
        k = c + 1.0 if has_bias else c
        yield k[:, None, :, None] * g


def weighted_diagonal(h, d, w: LayerWeights):
    """One layer's weighted NTK diagonal `(..., O)` from `h` `(..., in_l)` and `δ`
    `(..., O, out_l)`: `<h, s ⊙ h> <δ_a, r ⊙ δ_a> + <δ_a, β ⊙ δ_a>`; for scalars
    `(ω |h|² + β) |δ_a|²`."""
    hh = jnp.sum(h * h if w.inp is None else h * h * w.inp, axis=-1)
    dd = d * d
    if w.out.ndim == 0 and (w.bias is None or w.bias.ndim == 0):
        k = w.out * hh if w.bias is None else w.out * hh + w.bias
        return k[..., None] * jnp.sum(dd, axis=-1)
    term = hh[..., None] * jnp.sum(dd * w.out, axis=-1)
    return term if w.bias is None else term + jnp.sum(dd * w.bias, axis=-1)


def _tile(f1: Features, f2: Features, layout, lw=None) -> Float[Array, "n1 n2 o o"]:
    acc = None
    for term in layer_terms(f1, f2, layout, lw):
        acc = term if acc is None else acc + term
    return sample_major(acc)


def ntk_structured(
    model, x1: Array, x2: Array | None = None, block_size: int | None = None, weights=None
) -> Float[Array, "n1 n2 o o"]:
    """Structured NTK (see the module docstring); `model` must implement `StructuredModel`.

    Memory: the features `n·(Σ in_l + O·Σ out_l)` floats (computed `block_size` examples at a
    time) plus the output; with `block_size`, one `(b, b, O, O)` tile of intermediates. For a
    pack of members see `ntkbench.kernels.pack_map`. `weights`: see `ntkbench.kernels.ntk` and
    the module docstring (the model must also implement `structured_leaves`).
    """
    layout, f1, f2, n1, n2, o = _prepare(model, x1, x2, block_size)
    lw = model_layer_weights(model, layout, weights)
    like = jax.ShapeDtypeStruct((n1, n2, o, o), f1.deltas[0].dtype)
    return tiled(
        lambda r: r,
        lambda r, _, c: _tile(r, c, layout, lw),
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


def diagonal_structured(
    model, x: Array, block_size: int | None = None, weights=None
) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = Σ_l (|h_il|² + [has_bias]) |δ_ial|²` (weighted: `weighted_diagonal`),
    without forming the NTK."""
    layout = check_structured(model)
    lw = model_layer_weights(model, layout, weights)

    def diag(xi):
        f = example_features(model, layout, xi)
        out = None
        for l, (h, d, (_, _, has_bias)) in enumerate(zip(f.inputs, f.deltas, layout)):
            if lw is not None:
                term = weighted_diagonal(h, d, lw[l])
            else:
                hh = jnp.sum(h * h) + (1.0 if has_bias else 0.0)
                term = hh * jnp.sum(d * d, axis=-1)
            out = term if out is None else out + term
        return out

    return map_examples(diag, x, block_len(x.shape[0], block_size))


class LayerNTKs(NamedTuple):
    """Per-layer NTK contributions and conjugate kernels of a structured model.

    Attributes:
        ntks: `(L, n1, n2, O, O)`; `ntks.sum(0)` is the NTK. Entry `l` is the contribution of
            the weight and bias of dense layer `l` (layout order), weighted by their weights
            when `weights` are given (then the sum is the weighted NTK).
        conjugate_kernels: one `(n1, n2)` array per dense layer, `H_l H_lᵀ` (the Gram of the
            layer's inputs, without the bias term, never weighted; layer 0: the raw inputs). A
            tuple, not a stack: under `eqx.filter_vmap` layer 0's kernel does not depend on the
            member, and stacking it with member-dependent ones fails on explicit-sharding meshes
            (JAX 0.10).
    """

    ntks: Float[Array, "l n1 n2 o o"]
    conjugate_kernels: tuple[Float[Array, "n1 n2"], ...]


def layer_ntks_structured(
    model, x1: Array, x2: Array | None = None, block_size: int | None = None, weights=None
) -> LayerNTKs:
    """Per-layer NTKs (weighted with `weights`) and conjugate kernels (see `LayerNTKs`); memory
    `L` times the NTK."""
    layout, f1, f2, n1, n2, o = _prepare(model, x1, x2, block_size)
    lw = model_layer_weights(model, layout, weights)
    like = jax.ShapeDtypeStruct((len(layout), n1, n2, o, o), f1.deltas[0].dtype)

    def tile(r, c):
        return jnp.stack([sample_major(t) for t in layer_terms(r, c, layout, lw)])

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
