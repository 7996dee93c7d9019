"""TEMPORARY stand-in (replaced by the measured spectral step): eigh-based cosine spectrum."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ntkbench.observables import cosine_normalize


class Spectrum(NamedTuple):
    eigenvalues: jax.Array
    vectors: jax.Array


def cosine_spectrum(K, num_vectors, *, method="auto", platform="cpu", prev_vectors=None,
                    float64=False):
    del method, platform, prev_vectors, float64
    vecs, vals = jax.lax.linalg.eigh(cosine_normalize(K))
    return Spectrum(vals, vecs[:, ::-1][:, :num_vectors])


def top_misalignment(prev_vectors, prev_erank, vectors):
    v = prev_vectors.shape[-1]
    n = jnp.clip(jnp.round(jnp.where(jnp.isfinite(prev_erank), prev_erank, 1.0)), 1, v)
    mask = (jnp.arange(v) < n).astype(vectors.dtype)
    u, w = prev_vectors * mask, vectors * mask
    r = u - w @ (w.T @ u)
    return jnp.where(jnp.isfinite(prev_erank), jnp.sum(r**2) / n, jnp.nan)
