"""Training subsets and the noisy replacement of the noise-scaling experiment: pure JAX.

`draw_indices`, `noisy_replacement` and `apply_noisy_replacement` are jittable and vmappable
over keys (and over noise fractions), with static output shapes (docs/definitions.md, "data").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray


def draw_indices(
    key: PRNGKeyArray, labels: Int[ArrayLike, " n_total"], n: int
) -> Int[Array, " n"]:
    """`n` distinct training indices drawn uniformly at random, without replacement.

    One draw of the training data (docs/definitions.md §10 data scaling): every size-`n` subset is equally
    likely, classes are not balanced. Jittable (`n` static) and vmappable over `key`.

    Args:
        key: a PRNG key.
        labels: `(n_total,)` training labels; only their number is used.
        n: the subset size, a Python int with `0 <= n <= n_total`.

    Returns:
        int32 `(n,)` distinct indices into the training set, in random order.

    Example:
        >>> idx = draw_indices(jax.random.key(0), jnp.zeros(10, jnp.int32), 4)
        >>> idx.shape, len(set(idx.tolist()))
        ((4,), 4)
    """
    n_total = int(jnp.shape(labels)[0])
    n = int(n)
    if not 0 <= n <= n_total:
        raise ValueError(
            f"draw_indices: cannot draw n={n} distinct samples from a training set of {n_total};"
            f" use 0 <= n <= {n_total}."
        )
    return jax.random.permutation(key, n_total)[:n].astype(jnp.int32)


def check_noise_fractions(fraction: float | ArrayLike) -> np.ndarray:
    """Host-side check that each noise fraction lies in `[0, 1)`; call it before tracing.

    Args:
        fraction: a number or an array of them (e.g. the noise levels to vmap over).

    Returns:
        The fractions as a float64 NumPy array of the same shape.

    Raises:
        ValueError: a fraction outside `[0, 1)` or not finite.
    """
    f = np.asarray(fraction, np.float64)
    bad = f[~((f >= 0) & (f < 1))]
    if bad.size:
        raise ValueError(
            f"Noise fractions must lie in [0, 1) (0 = clean data; some sample of each class must"
            f" stay clean); got {bad.tolist()}."
        )
    return f


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def noisy_replacement(
    key: PRNGKeyArray,
    labels: Int[ArrayLike, " n"],
    fraction: float | Float[ArrayLike, ""],
    num_classes: int,
) -> tuple[Int[Array, " n"], Bool[Array, " n"]]:
    """Which samples to replace by noisy copies of other samples of their class (docs/definitions.md §10).

    In class `c` with `n_c` samples, `k_c = min(round(fraction * n_c), n_c - 1)` samples, chosen
    uniformly at random, are replaced (`round` halves to even; the cap keeps one clean source in
    a class so small that rounding would replace all of it). Each replaced sample independently
    copies a uniformly chosen non-replaced sample of the same class. The caller then forms

        x_noisy = x[src_idx] + noisy[:, None, ...] * std * normal

    (`apply_noisy_replacement` does exactly that). Output shapes do not depend on `fraction`, so
    this is jittable and vmappable over `key` and over a traced `fraction`; validate fractions
    on the host with `check_noise_fractions` (done here when `fraction` is concrete).

    Args:
        key: a PRNG key.
        labels: int `(n,)` labels in `[0, num_classes)`.
        fraction: the fraction of each class to replace, in `[0, 1)`; may be traced.
        num_classes: the number of classes (static).

    Returns:
        `(src_idx, noisy)`: int32 `(n,)` source of every sample (`i` itself when not replaced,
        else a non-replaced sample of the same class) and bool `(n,)` marking the replaced ones.
        `fraction = 0` gives `(arange(n), all False)`.

    Example:
        >>> labels = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> src, noisy = noisy_replacement(jax.random.key(0), labels, 0.5, 2)
        >>> int(noisy.sum()), bool(jnp.all(labels[src] == labels)), bool(jnp.any(noisy[src]))
        (4, True, False)
    """
    if _is_concrete(fraction):
        check_noise_fractions(fraction)
    if _is_concrete(labels):
        lab = np.asarray(labels)
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(
                f"noisy_replacement: labels must lie in [0, {num_classes}) for num_classes="
                f"{num_classes}; found {int(lab.min())}..{int(lab.max())}."
            )
    labels = jnp.asarray(labels, jnp.int32)
    n = labels.shape[0]
    key_order, key_src = jax.random.split(key)
    # Sort by (class, random priority): inside each class, the first k_c are replaced.
    order = jnp.lexsort((jax.random.uniform(key_order, (n,)), labels))
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    counts = jnp.bincount(labels, length=num_classes).astype(jnp.int32)
    starts = jnp.cumsum(counts) - counts
    fraction = jnp.asarray(fraction, jnp.float32)
    k = jnp.round(fraction * counts.astype(jnp.float32)).astype(jnp.int32)
    k = jnp.clip(k, 0, jnp.maximum(counts - 1, 0))
    start, count, k_c = starts[labels], counts[labels], k[labels]
    noisy = rank - start < k_c
    # Sources: positions start + k_c .. start + count - 1 in the sorted order are the clean ones.
    num_clean = jnp.maximum(count - k_c, 1)
    offset = jnp.floor(jax.random.uniform(key_src, (n,)) * num_clean).astype(jnp.int32)
    offset = jnp.minimum(offset, num_clean - 1)
    src = jnp.where(noisy, order[jnp.minimum(start + k_c + offset, n - 1)], jnp.arange(n))
    return src.astype(jnp.int32), noisy


def apply_noisy_replacement(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n *shape"],
    labels: Int[ArrayLike, " n"],
    fraction: float | Float[ArrayLike, ""],
    num_classes: int,
    std: float = 0.01,
) -> Float[Array, "n *shape"]:
    """Replace a `fraction` of each class by noisy copies of its other samples (docs/definitions.md §10).

    `key` splits into `(k_replace, k_noise)`; the replacement is
    `noisy_replacement(k_replace, labels, fraction, num_classes)` (call it with that key to get
    the `noisy` mask) and the result is `x[src_idx] + noisy * std * normal(k_noise)`. Pixels are
    not clipped back to `[0, 1]`. Jittable and vmappable over `key` and `fraction`.

    Args:
        key: a PRNG key.
        x: float `(n, ...)` samples (images or flattened images).
        labels: int `(n,)` labels.
        fraction: the fraction of each class to replace, in `[0, 1)`; may be traced.
        num_classes: the number of classes (static).
        std: the standard deviation of the Gaussian noise (the paper: 0.01).

    Returns:
        float `(n, ...)`, the dtype of `x`: the new samples; labels are unchanged.

    Example:
        >>> x = jnp.arange(8.0)[:, None]
        >>> labels = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> apply_noisy_replacement(jax.random.key(0), x, labels, 0.0, 2).shape
        (8, 1)
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    key_replace, key_noise = jax.random.split(key)
    src, noisy = noisy_replacement(key_replace, labels, fraction, num_classes)
    mask = noisy.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    noise = jax.random.normal(key_noise, x.shape, x.dtype)
    return x[src] + mask * jnp.asarray(std, x.dtype) * noise
