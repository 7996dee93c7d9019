"""The on-device eigensolvers of the spectral step (`EIGH` and `SUBSPACE` of `spectrum.py`).

The full `eigh` with its top columns kept, and the warm-started block subspace iteration: a
Chebyshev filter (the scaled three-term recurrence of Zhou and Saad) damping the unwanted part of
the spectrum, a Rayleigh-Ritz projection after each filter, and a residual test on the columns
the misalignments read. All of it is plain `jax.numpy`/`lax` on one member's `Θ̃`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ntkbench.observables import cosine_normalize

_HIGHEST = lax.Precision.HIGHEST


def device_cosine(K: Array, dt) -> Array:
    theta = cosine_normalize(K.astype(dt))
    return 0.5 * (theta + theta.T)


def eigh_top(theta: Array, k: int) -> tuple[Array, Array]:
    vecs, vals = lax.linalg.eigh(theta, symmetrize_input=False)
    return vals, vecs[:, ::-1][:, :k]


def _rayleigh_ritz(theta: Array, y: Array):
    """Orthonormalize `y`, project: Ritz vectors `x`, `Θ̃x` and Ritz values, descending."""
    q, _ = jnp.linalg.qr(y)
    aq = jnp.dot(theta, q, precision=_HIGHEST)
    h = jnp.dot(q.T, aq, precision=_HIGHEST)
    ritz, s = jnp.linalg.eigh(0.5 * (h + h.T))
    ritz, s = ritz[::-1], s[:, ::-1]
    return jnp.dot(q, s, precision=_HIGHEST), jnp.dot(aq, s, precision=_HIGHEST), ritz


def _chebyshev(theta, x, ax, degree, low, high, top):
    """Degree-`degree` Chebyshev filter of `x` damping `[low, high]`, scaled to ~1 at `top`.

    The scaled three-term recurrence of Zhou and Saad; `ax = Θ̃x` is given (saves one product).
    """
    tiny = jnp.finfo(x.dtype).eps * jnp.maximum(jnp.abs(top), 1.0)
    half = jnp.maximum(0.5 * (high - low), tiny)
    centre = 0.5 * (high + low)
    sigma = half / jnp.maximum(top - centre, tiny)
    tau = 2.0 / sigma
    y = (ax - centre * x) * (sigma / half)

    def step(_, state):
        x, y, sigma = state
        sigma_new = 1.0 / (tau - sigma)
        ay = jnp.dot(theta, y, precision=_HIGHEST)
        y_new = (ay - centre * y) * (2.0 * sigma_new / half) - (sigma * sigma_new) * x
        return y, y_new, sigma_new

    return lax.fori_loop(1, degree, step, (x, y, sigma))[1]


def subspace_top(theta, lam, start, num_tested, k, tol, max_iterations, degree):
    """Top-`k` eigenvectors of `theta` from `start`; returns vectors, iterations, residual, ok."""
    m = theta.shape[0]
    top = lam[-1]
    scale = jnp.maximum(jnp.abs(top), jnp.finfo(theta.dtype).tiny)
    high = lam[m - k - 1] if k < m else lam[0]
    tested = jnp.arange(k) < num_tested

    def residual(x, ax, ritz):
        r = jnp.linalg.norm(ax - x * ritz[None, :], axis=0) / scale
        return jnp.max(jnp.where(tested, r, 0.0))

    def body(state):
        x, ax, ritz, it, _ = state
        x, ax, ritz = _rayleigh_ritz(theta, _chebyshev(theta, x, ax, degree, lam[0], high, top))
        return x, ax, ritz, it + 1, residual(x, ax, ritz)

    def cond(state):
        return (state[4] > tol) & (state[3] < max_iterations)

    x, ax, ritz = _rayleigh_ritz(theta, start)
    x, ax, ritz, it, res = lax.while_loop(cond, body, (x, ax, ritz, 0, residual(x, ax, ritz)))
    return x, it, res, res <= tol

