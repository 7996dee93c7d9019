"""Stochastic trace estimators of an operator known only through products `v ↦ A v`.

`hutchinson_trace` and `hutchpp_trace` (Hutch++: an exact sketched top subspace plus Hutchinson
on the rest), each returning a `TraceEstimate` with its standard error over probes, and the
Monte-Carlo helpers the SLQ estimators of `_slq.py` and `_deflated.py` share: Rademacher probes,
the mean with its standard error, and a linear control variate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

Matvec = Callable[[Float[Array, "*shape"]], Float[Array, "*shape"]]


class TraceEstimate(NamedTuple):
    """A stochastic estimate and its standard error (std over probes / sqrt(num_probes))."""

    estimate: Float[Array, ""]
    stderr: Float[Array, ""]


def rademacher(key: PRNGKeyArray, num: int, shape, dtype) -> Array:
    return jax.random.rademacher(key, (num, *shape), dtype=dtype)


def mean_stderr(samples: Float[Array, " k"]) -> TraceEstimate:
    k = samples.shape[0]
    se = jnp.std(samples, ddof=1) / jnp.sqrt(k) if k > 1 else jnp.full((), jnp.inf, samples.dtype)
    return TraceEstimate(jnp.mean(samples), se)


def hutchinson_trace(
    matvec_fn: Matvec,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    num_probes: int = 64,
    dtype=jnp.float32,
) -> TraceEstimate:
    """Hutchinson estimate `tr(A) ≈ mean_k zₖᵀ A zₖ` with Rademacher probes.

    For the NTK itself prefer the exact `ntk_trace` (same cost as ~O matvecs); this is for
    operators without a cheap diagonal.

    Example:
        >>> a = jnp.diag(jnp.arange(1.0, 5.0))
        >>> hutchinson_trace(lambda v: a @ v, (4,), key=jax.random.key(0)).estimate
        Array(10., dtype=float32)

    Args:
        matvec_fn: `v ↦ A v` for `v` of shape `shape` (vmappable).
        shape: shape of the vectors `A` acts on (e.g. `(N, O)` for the NTK).
        key: PRNG key for the probes.
        num_probes: number of probes (the standard error falls like `1/sqrt(num_probes)`).
        dtype: probe dtype.

    Returns:
        `TraceEstimate(estimate, stderr)`.
    """
    z = rademacher(key, num_probes, shape, dtype)
    az = jax.vmap(matvec_fn)(z)
    axes = tuple(range(1, z.ndim))
    return mean_stderr(jnp.sum(z * az, axis=axes))


def hutchpp_trace(
    matvec_fn: Matvec,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    num_probes: int = 66,
    dtype=jnp.float32,
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021): exact trace on a sketched top subspace plus Hutchinson on
    the rest; far lower variance than Hutchinson for fast-decaying spectra such as the NTK's.

    Uses `num_probes` matvecs in all: a third to sketch `Q = orth(A S)`, a third for
    `tr(Qᵀ A Q)`, a third for Hutchinson on `(I − QQᵀ) A (I − QQᵀ)`. The standard error is the
    one of the Hutchinson part (the sketched part is exact).

    Example:
        >>> a = jnp.diag(jnp.arange(1.0, 5.0))
        >>> float(hutchpp_trace(lambda v: a @ v, (4,), key=jax.random.key(0), num_probes=12).estimate)
        10.0

    Args:
        matvec_fn: `v ↦ A v` for `v` of shape `shape` (vmappable); `A` symmetric.
        shape: shape of the vectors `A` acts on.
        key: PRNG key.
        num_probes: total matvec budget (>= 6).
        dtype: probe dtype.

    Returns:
        `TraceEstimate(estimate, stderr)`.
    """
    if num_probes < 6:
        raise ValueError(
            f"hutchpp_trace needs num_probes >= 6 (3 groups of >= 2), got {num_probes}."
        )
    k = num_probes // 3
    m = 1
    for s in shape:
        m *= s
    k = min(k, m)
    ks, kg = jax.random.split(key)
    flat = lambda v: jnp.reshape(matvec_fn(jnp.reshape(v, shape)), (m,))
    mv = jax.vmap(flat, in_axes=1, out_axes=1)
    s = rademacher(ks, k, (m,), dtype).T  # (m, k)
    q, _ = jnp.linalg.qr(mv(s))
    exact = jnp.trace(q.T @ mv(q))
    g = rademacher(kg, num_probes - 2 * k, (m,), dtype).T
    g = g - q @ (q.T @ g)
    rest = mean_stderr(jnp.sum(g * mv(g), axis=0))
    return TraceEstimate(exact + rest.estimate, rest.stderr)


def control_variate(samples: Array, controls: Array, control_mean) -> TraceEstimate:
    """Mean of `samples` with the linear control variate `controls` of known mean.

    `ŝ = mean(s) − ĉ (mean(q) − E q)` with the regression coefficient `ĉ = cov(s, q) / var(q)`;
    the standard error is that of the residuals (`ddof=2`). Its bias is `O(1/num_probes)`.
    """
    k = samples.shape[0]
    if k < 3:
        return mean_stderr(samples)
    q = controls - jnp.mean(controls)
    var_q = jnp.sum(q * q)
    c = jnp.where(
        var_q > 0,
        jnp.sum(q * (samples - jnp.mean(samples))) / jnp.where(var_q > 0, var_q, 1.0),
        0.0,
    )
    resid = samples - c * (controls - control_mean)
    se = jnp.sqrt(jnp.sum((resid - jnp.mean(resid)) ** 2) / (k - 2) / k)
    return TraceEstimate(jnp.mean(resid), se)
