"""Shared helpers: parameter split, per-parameter weights, precise Gram products and the block
loop."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

# Gram products and contractions run at full float32 precision (on GPUs float32 matmuls default
# to TF32, which costs about 3 significant digits). Model passes are traced under the same setting.
HIGHEST = lax.Precision.HIGHEST
MATMUL_PRECISION = "highest"


def split(model) -> tuple[object, Callable[[object, Array], Array]]:
    """`(params, f)` with `params` the trainable leaves and `f(params, x)` one example's logits."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(p, x):
        return eqx.combine(p, static)(x)

    return params, f


def check_weights(params, weights):
    """`weights` validated against `params` (the trainable leaves, `split(model)[0]`): the same
    tree with every leaf a jnp array in its parameter's dtype; None stays None.

    Weights must have the structure of `eqx.filter(model, eqx.is_inexact_array)` (None where the
    model holds no trainable array) with leaves broadcastable to their parameter (a scalar per
    leaf, possibly traced, or an array). Only shapes are checked: values may be traced (their
    nonnegativity is the caller's promise).
    """
    if weights is None:
        return None
    want = jax.tree.structure(params)
    got = jax.tree.structure(weights)
    if got != want:
        have = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(weights)}
        need = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)}
        extra, missing = sorted(have - need)[:3], sorted(need - have)[:3]
        detail = (
            f"missing weights for {missing}, unexpected weights at {extra}"
            if extra or missing
            else "the same leaves but another tree structure (built from another model?)"
        )
        raise ValueError(
            "weights must have the structure of the model's trainable parameters, "
            "eqx.filter(model, eqx.is_inexact_array), one weight per parameter array (e.g. "
            f"jax.tree.map(lambda p: 1.0, eqx.filter(model, eqx.is_inexact_array))): {detail}."
        )

    def leaf(path, w, p):
        w = jnp.asarray(w, p.dtype)
        try:
            ok = np.broadcast_shapes(w.shape, p.shape) == p.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"The weight of parameter {jax.tree_util.keystr(path)} {p.shape} has shape "
                f"{w.shape}, which does not broadcast to it; use a scalar per parameter array or "
                "an array broadcastable to the parameter."
            )
        return w

    return jax.tree_util.tree_map_with_path(leaf, weights, params)


def weigh(tree, weights):
    """`tree` (leaves `(*lead, *leaf.shape)`: Jacobian rows, tangents) times the weights of
    `check_weights` (broadcast from the right); `tree` itself when `weights` is None."""
    if weights is None:
        return tree
    return jax.tree.map(lambda t, w: t * w, tree, weights)


def gram(a: Array, b: Array, free: int = 1) -> Array:
    """`Σ_k a[I, k] b[J, k]` at full precision, contracting all but the first `free` axes.

    `a` `(*I, *K)` and `b` `(*J, *K)` with `len(I) == len(J) == free` give `(*I, *J)`. One
    `dot_general` (no reshapes, which explicit-sharding meshes restrict).
    """
    contract = tuple(range(free, a.ndim))
    return lax.dot_general(a, b, ((contract, contract), ((), ())), precision=HIGHEST)


def check_inputs(x1: Array, x2: Array | None) -> None:
    """Raise a helpful error when the inputs are not batches of examples."""
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not hasattr(x, "ndim") or x.ndim < 1:
            raise ValueError(
                f"{name} must be a batch of examples with a leading sample axis, got "
                f"{getattr(x, 'shape', type(x))}; add one with x[None]."
            )
    if x2 is not None and x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x1 and x2 hold examples of different shapes {x1.shape[1:]} and {x2.shape[1:]}; "
            "both must be batches of the inputs the model takes."
        )


def block_len(n: int, block_size: int | None) -> int | None:
    """Samples per block (<= n), or None for one block."""
    if block_size is None:
        return None
    block_size = int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of samples, got {block_size}.")
    return None if block_size >= n else block_size


def num_blocks(n: int, b: int) -> int:
    return -(-n // b)


def block_start(i, n: int, b: int):
    """Start of block `i`; the last block is shifted back to end at `n` (it overlaps the one
    before and rewrites the same values), so no padding or final slice copy is ever needed."""
    return jnp.minimum(i * b, n - b)


def map_examples(fn: Callable[[Array], object], x: Array, b: int | None) -> object:
    """`jax.vmap(fn)(x)`, computed `b` examples at a time when `b` is given (`lax.map`).

    Args:
        fn: maps ONE example to a pytree of arrays.
        x: `(n, ...)` examples.
        b: examples per block, or None for all at once.

    Returns:
        The stacked results, leading axis `n`.
    """
    if b is None:
        return jax.vmap(fn)(x)
    return lax.map(fn, x, batch_size=b)


def take(tree, s, b: int):
    """Rows `[s, s + b)` of every leaf of `tree` (leading sample axis)."""
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, s, b), tree)


def tiled(
    row_fn: Callable[[object], object],
    tile_fn: Callable[[object, object, object], object],
    x1,
    x2,
    b1: int | None,
    b2: int | None,
    out_like,
    lead: int = 0,
    symmetric: bool = False,
):
    """Assemble a kernel `(*L, n1, n2, ...)` from tiles, one block of rows at a time.

    Args:
        row_fn: prepares what a row block needs once (e.g. its Jacobian rows) from `x1` rows.
        tile_fn: `(row, x1_rows, x2_rows) -> tile`, a pytree of arrays `(*L, b1, b2, ...)`.
        x1, x2: pytrees whose leaves have a leading sample axis `n1` (resp. `n2`).
        b1, b2: rows per block (None: all at once).
        out_like: pytree of `jax.ShapeDtypeStruct` `(*L, n1, n2, ...)` matching the tiles.
        lead: the number of leading axes `L` before the sample axes.
        symmetric: `x1` is `x2` and the kernel is symmetric (`K[i, j, a, b] = K[j, i, b, a]`):
            only tiles on and above the block diagonal are computed, each also written mirrored
            (half the work).

    Returns:
        The full kernel; only one row block's preparation and one tile are alive at a time and the
        output buffer is updated in place.
    """
    if b1 is None and b2 is None:
        return tile_fn(row_fn(x1), x1, x2)
    n1 = jax.tree.leaves(x1)[0].shape[0]
    n2 = jax.tree.leaves(x2)[0].shape[0]
    b1 = n1 if b1 is None else b1
    b2 = n2 if b2 is None else b2

    def row_body(i, out):
        s1 = block_start(i, n1, b1)
        xb1 = take(x1, s1, b1)
        row = row_fn(xb1)

        def col_body(j, out):
            s2 = block_start(j, n2, b2)
            tile = tile_fn(row, xb1, take(x2, s2, b2))

            def put(o, t):
                tail = (0,) * (o.ndim - 2 - lead)
                o = lax.dynamic_update_slice(o, t.astype(o.dtype), (0,) * lead + (s1, s2) + tail)
                if symmetric:
                    o = lax.dynamic_update_slice(
                        o, _mirror(t, lead).astype(o.dtype), (0,) * lead + (s2, s1) + tail
                    )
                return o

            return jax.tree.map(put, out, tile)

        return lax.fori_loop(i if symmetric else 0, num_blocks(n2, b2), col_body, out)

    out = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_like)
    return lax.fori_loop(0, num_blocks(n1, b1), row_body, out)


def _mirror(t: Array, lead: int) -> Array:
    """The tile at the transposed position of a symmetric kernel: swap the two sample axes and,
    for rank-4 `(n1, n2, O, O)` tails, the two logit axes."""
    axes = list(range(t.ndim))
    axes[lead], axes[lead + 1] = axes[lead + 1], axes[lead]
    if t.ndim - lead == 4:
        axes[-1], axes[-2] = axes[-2], axes[-1]
    return jnp.transpose(t, axes)


def out_size(f: Callable, params, x: Array) -> tuple[int, object]:
    """Number of logits `O` and their dtype, for a model mapping one example to `(O,)`."""
    out = jax.eval_shape(f, params, x[0])
    if len(out.shape) != 1:
        raise ValueError(
            f"The model must map ONE example to a vector of logits, but model(x[0]) has shape "
            f"{out.shape}. Batch with the leading axis of x (not inside the model) and flatten "
            "the output to (O,)."
        )
    return out.shape[0], out.dtype


def sample_major(t: Float[Array, "n1 o1 n2 o2"]) -> Float[Array, "n1 n2 o1 o2"]:
    """`(i, a, j, b)` layout to the rank-4 NTK layout `(i, j, a, b)`."""
    return jnp.transpose(t, (0, 2, 1, 3))
