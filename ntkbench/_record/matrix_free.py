"""Matrix-free NTK records for large N: every observable from NTK-vector products, with errors.

`ntkbench.observables.spectral_record` forms the `(M, M)` NTK (`M = N·O`) and eigendecomposes it: `O(M²)` memory and
`O(M³)` time cap N at a few hundred. `matrix_free_record` touches the NTK only through

- its diagonal `D` `(N, O)` (per-example squared gradient norms, one pass), which gives the
  trace exactly and the cosine normalization `Θ̃ = D^{-1/2} Θ D^{-1/2}`;
- products `v ↦ Θ v` (`(N, O) -> (N, O)`): for `StructuredModel`s (`ntkbench.models.MLP`) from
  the layer inputs `h_l` and backprop signals `δ_l`, computed once with the diagonal; for any
  other model one linearization and then a jvp and a vjp over the batch per product.

Memory is `O((num_deflate + num_probes) · num_steps · M)` (the Lanczos bases, vmapped) plus
the features, never `M²`.

What is estimated, and how (the definitions of `ntkbench.observables`):

- `trace = tr(Θ)/M`: exact, `mean(D)`.
- `entropy`, `erank` of `Θ̃`: `H = ln t − tr(Θ̃ ln Θ̃)/t` with `t = tr(Θ̃)` exact (the number
  of nonzero diagonal entries) and `tr(Θ̃ ln Θ̃)` by deflated stochastic Lanczos quadrature
  (`kernels.deflated_slq`): the top `num_deflate` directions of `Θ̃` (a subspace-iteration sketch)
  enter through one Lanczos quadrature each, without probe noise, and `num_probes` Rademacher
  probes projected off them estimate the rest, with `gᵀΘ̃g` as control variate; `num_steps`
  Lanczos steps per quadratic form. The O class outliers of the cosine NTK carry most of the
  probe variance, so deflating them cuts the standard error 5 to 8-fold at equal cost.
  `entropy_stderr` is the probe standard error; `erank_stderr = erank · entropy_stderr`.
- `label_alignment = yᵀΘy / (‖Θ‖_F ‖y‖²)`: `yᵀΘy` exact from the product `Θy`;
  `‖Θ‖_F² = tr(Θ²)` by Hutch++ on `Θ²` (`kernels.frobenius_hutchpp`): a sketch `Q` (one step of
  subspace iteration from `[y, S]`; the product `Θy` of its first step gives `yᵀΘy`), the exact
  part `‖ΘQ‖_F²` and Hutchinson on the rest, `E ‖Θ (I − QQᵀ) g‖²`. The sketch captures the
  few large NTK eigenvalues that dominate `‖Θ‖_F` (the top 10 carry 95-98% of it for the MLPs
  measured), so the residual, and with it the error, is small. The standard error is the delta
  method on the Hutchinson part, `A · se(F)/(2F)`. These products are of `Θ`, not `Θ̃`, so the
  Lanczos runs of the entropy cannot be reused for them.
- `kernel_distance = 1 − <Θ, Θ_ref>_F / (‖Θ‖_F ‖Θ_ref‖_F)` against a `reference` member: the
  same Hutch++ on shared probes for the three quantities `tr(Θ²)`, `tr(Θ_ref²)` and
  `tr(Θ Θ_ref) = E (Θg)ᵀ(Θ_ref g)`, with one sketch from `Θ + Θ_ref`; its standard
  error is the delta method with the 3x3 covariance of the per-probe residual terms (their
  fluctuations are strongly correlated, so the error of `S` vanishes as `Θ → Θ_ref`).

The error bars cover the Monte-Carlo (probe) error. The Lanczos (Gauss quadrature) error of
`num_steps` steps and the float32 rounding are not in them; the defaults are chosen so that both
are well below the standard error (`benchmarks/bench_matrix_free.py --part errors`, see
`docs/matrix_free.md`). The documented 95% interval is `estimate ± COVERAGE_Z · stderr`
(`COVERAGE_Z = 2.3`, calibrated on realistic NTKs: the Student-t quantile 2.1 of the residual
probes covered 93-98% of trials, depending on the quantity).

Not estimated (NaN in the record):

- `eigvec_misalignment` needs the top `n = round(erank)` eigenvectors of `Θ̃` before and
  after, with `n` in the hundreds to thousands: a Krylov space of a few tens of vectors does not
  resolve them, and computing them is the `O(M²)` memory this record avoids.
- `label_alignment_traced` (the N×N output-traced kernel `Θ_tr[i, j] = Σ_a Θ[(i,a),(j,a)]`
  against `Y Yᵀ`) is possible matrix-free but not cheap: one product `Θ_tr w` costs `O`
  NTK-vector products (one per logit), so the numerator `Σ_c y_cᵀ Θ_tr y_c` costs `C·O`
  products and every Hutchinson probe of `‖Θ_tr‖_F²` another `O`: about `(C + 20)·O ≈ 300`
  products for 10 classes, a quarter of the SLQ at the defaults. It is left out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ntkbench import kernels
from ntkbench._config import NTK_EXACT, NTK_RECORD_KEYS, NTK_STDERR
from ntkbench.kernels import MATMUL_PRECISION, check_inputs
from ntkbench.observables import EIGENVALUE_FLOOR

#: Random probes of the SLQ (chosen by measurement; see docs/matrix_free.md).
DEFAULT_NUM_PROBES = 20
#: Lanczos steps per quadratic form (chosen by measurement; see docs/matrix_free.md).
DEFAULT_NUM_STEPS = 50
#: Top directions of the cosine-normalized NTK deflated from the SLQ (see docs/matrix_free.md).
DEFAULT_NUM_DEFLATE = 20
#: NTK-vector products (per kernel) of the Hutch++ estimate of the Frobenius norms.
DEFAULT_NUM_FROBENIUS_PROBES = 96

#: Half-width of the 95% interval in standard errors, `estimate ± COVERAGE_Z·stderr`, set by
#: measurement: over 320 trials per quantity at M = 1280 and 2560 (docs/matrix_free.md) the
#: 95th percentile of |error| / stderr was at most 2.21 (the label alignment at M = 2560), above
#: the Student-t quantile of the residual probes (2.10 for 18 degrees of freedom), which covered
#: only 93.4% there: the probe errors have heavier tails than normal. tests/test_matrix_free.py
#: checks the coverage.
COVERAGE_Z = 2.3

#: The scalars `matrix_free_record` returns: the record keys of the stored NTK quantities
#: (`NTK_RECORD_KEYS`, one table for both record paths) with their standard errors; those only
#: an exact record has are NaN, except the ones the record step alone fills in.
RECORD_KEYS = tuple(NTK_RECORD_KEYS[name] for name in NTK_EXACT + NTK_STDERR
                    if name not in ("misalignment_clipped",))


def after(x: Array, dep: Array) -> Array:
    """`x` unchanged, but as a value computed from `dep`, so that XLA runs its consumers later.

    `jax.lax.optimization_barrier` does not do this on CPU (it is expanded away before the
    thunk executor schedules by data dependencies), and `x + 0·y` is not folded for floats
    (`0·inf` is NaN), so this is a real dependency. `dep` is made finite first: the value
    of `x` never changes.
    """
    v = jnp.sum(jnp.ravel(dep)[:1])
    v = jnp.where(jnp.isfinite(v), v, 0.0).astype(x.dtype)
    return x + 0.0 * v


def _entropy_term(lam: Array) -> Array:
    lam = jnp.maximum(lam, EIGENVALUE_FLOOR)
    return lam * jnp.log(lam)


def _cosine(d: Array, vp: kernels.Matvec) -> kernels.Matvec:
    pos = d > 0
    s = jnp.where(pos, 1.0 / jnp.sqrt(jnp.where(pos, d, 1.0)), 0.0)
    return lambda v: s * vp(s * v)


def record_from_products(
    d: Float[Array, "n o"],
    vp: kernels.Matvec,
    y_onehot: Float[ArrayLike, "n o"],
    *,
    key: PRNGKeyArray,
    num_probes: int = DEFAULT_NUM_PROBES,
    num_steps: int = DEFAULT_NUM_STEPS,
    num_deflate: int = DEFAULT_NUM_DEFLATE,
    num_frobenius_probes: int = DEFAULT_NUM_FROBENIUS_PROBES,
    vp_ref: kernels.Matvec | None = None,
) -> dict[str, Float[Array, ""]]:
    """`matrix_free_record` from the NTK diagonal and product (any source of `Θ v`).

    The LAPACK calls (QR and small eigh) form one chain of data dependencies, the Frobenius part
    first (`after`): on CPU, XLA runs independent operations concurrently on its intra-op thread pool, and
    two batched (e.g. vmapped over members) LAPACK calls in flight at once deadlock it when the
    pool is small (reproduced with jaxlib 0.10.2 on 2 cores: batched `eigh` next to batched `qr`
    hangs on the first call). Keep other batched LAPACK work of the same jitted program
    (e.g. `spectral_record`) out of this chain's way likewise.

    Example:
        >>> a = jax.random.normal(jax.random.key(0), (12, 30))
        >>> k = a @ a.T
        >>> vp = lambda v: (k @ v.reshape(-1)).reshape(4, 3)
        >>> y = jax.nn.one_hot(jnp.arange(4) % 3, 3)
        >>> rec = record_from_products(jnp.diag(k).reshape(4, 3), vp, y, key=jax.random.key(1),
        ...                            num_probes=4, num_steps=12, num_deflate=2)
        >>> bool(jnp.isnan(rec["kernel_distance"]))
        True

    Args:
        d: the NTK diagonal `(N, O)`.
        vp: `v ↦ Θ v` on `(N, O)` (vmappable).
        y_onehot: `(N, O)` labels.
        key, num_probes, num_steps, num_deflate, num_frobenius_probes: see `matrix_free_record`.
        vp_ref: `v ↦ Θ_ref v` of the reference kernel, or None.

    Returns:
        dict of scalars, keys `RECORD_KEYS`.
    """
    if num_probes < 3:
        raise ValueError(
            f"num_probes must be >= 3 (the control variate needs 3), got {num_probes}."
        )
    n, o = d.shape
    dtype = d.dtype
    y = jnp.asarray(y_onehot, dtype)
    if y.shape != (n, o):
        raise ValueError(
            f"y_onehot must be the (N, O) = {(n, o)} one-hot labels of x, got shape {y.shape}."
        )
    k_slq, k_frob = jax.random.split(key)
    nan = jnp.full((), jnp.nan, dtype)
    with jax.default_matmul_precision(MATMUL_PRECISION):
        # Frobenius norms (and the inner product with the reference) on shared probes.
        matvecs = (vp,) if vp_ref is None else (vp, vp_ref)
        est = kernels.frobenius_hutchpp(
            matvecs, (n, o), y, key=k_frob, num_probes=num_frobenius_probes, dtype=dtype
        )
        mean, cov = kernels.mean_cov(est.exact, est.samples)
        yy = jnp.sum(y * y)
        y_ky = jnp.sum(y * est.extra_products[0])  # Θy, reused from the sketch
        align, align_se = kernels.delta_method(lambda f: y_ky / (jnp.sqrt(f[0]) * yy), mean, cov)
        if vp_ref is None:
            dist, dist_se = nan, nan
        else:
            dist, dist_se = kernels.delta_method(lambda f: 1.0 - f[2] / jnp.sqrt(f[0] * f[1]), mean, cov)

        # Everything below waits for the above: no two LAPACK calls (QR, eigh) run at once.
        d = after(d, est.samples)

        # Entropy of the cosine-normalized NTK; its trace is the number of nonzero diagonals.
        t = jnp.sum(d > 0).astype(dtype)
        s = kernels.deflated_slq(
            _cosine(d, vp),
            (n, o),
            _entropy_term,
            key=k_slq,
            num_probes=num_probes,
            num_steps=num_steps,
            num_deflate=num_deflate,
            trace=t,
            dtype=dtype,
        )
        safe_t = jnp.maximum(t, 1.0)
        h = jnp.log(safe_t) - s.estimate / safe_t
        h_se = s.stderr / safe_t

    erank = jnp.exp(h)
    return {
        "trace": jnp.mean(d),
        "entropy": h,
        "entropy_stderr": h_se,
        "erank": erank,
        "erank_stderr": erank * h_se,
        "label_alignment": align,
        "label_alignment_stderr": align_se,
        "kernel_distance": dist,
        "kernel_distance_stderr": dist_se,
        "label_alignment_traced": nan,
        "eigvec_misalignment": nan,
    }


def matrix_free_record(
    model,
    x: Float[Array, "n ..."],
    y_onehot: Float[ArrayLike, "n o"],
    *,
    key: PRNGKeyArray,
    num_probes: int = DEFAULT_NUM_PROBES,
    num_steps: int = DEFAULT_NUM_STEPS,
    num_deflate: int = DEFAULT_NUM_DEFLATE,
    num_frobenius_probes: int = DEFAULT_NUM_FROBENIUS_PROBES,
    reference=None,
    method: str = "auto",
    block_size: int | None = None,
    weights=None,
) -> dict[str, Float[Array, ""]]:
    """NTK observables of one member without forming the `(M, M)` NTK, with standard errors.

    See the module docstring for what is estimated and how. Pure and jittable; vmap it over a
    stacked pack with `eqx.filter_vmap(fn, in_axes=(eqx.if_array(0), None, None))` (the same key
    for every member gives every member the same probes; split the key for independent ones).

    Cost in NTK-vector products: `(num_deflate + num_probes) · num_steps` for the entropy (all
    Lanczos runs vmapped together) and `3·(num_deflate + 5)` for its sketch;
    `num_frobenius_probes` for `‖Θ‖_F` and `yᵀΘy` (twice that, for both kernels, with a
    `reference`); plus one pass for the diagonal (and, for MLPs, the features).

    Example:
        >>> from ntkbench.models import MLP
        >>> model = MLP(8, 3, width=16, depth=2, key=jax.random.key(0))
        >>> x = jax.random.uniform(jax.random.key(1), (20, 8))
        >>> y = jax.nn.one_hot(jnp.arange(20) % 3, 3)
        >>> rec = matrix_free_record(model, x, y, key=jax.random.key(2), num_probes=8,
        ...                          num_steps=10, num_deflate=4)
        >>> sorted(rec) == sorted(RECORD_KEYS), rec["erank"].shape
        (True, ())

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(N, ...)` examples.
        y_onehot: `(N, O)` one-hot labels (flattened in the NTK's `i·O + a` order).
        key: PRNG key for all probes.
        num_probes: random SLQ probes (>= 3; standard error `∝ 1/sqrt(num_probes)`).
        num_steps: Lanczos steps per quadratic form (capped at `M`).
        num_deflate: top directions of `Θ̃` handled without probe noise (>= O recommended:
            the O class outliers dominate the variance); 0 for plain SLQ.
        num_frobenius_probes: NTK-vector products (per kernel) of the Hutch++ estimate of the
            Frobenius norms (>= 6).
        reference: another member of the same structure (e.g. the network at initialization)
            for the kernel distance, or None (then `kernel_distance` is NaN).
        method: `"auto"`, `"structured"` or `"implicit"` (see `ntk_diagonal_and_vp`).
        block_size: examples per block for the per-example passes (diagonal, features).
        weights: per-parameter weights of the kernel (`ntkbench.kernels.ntk`'s `weights`: the
            learning-rate-weighted NTK), used for the reference kernel too; None: plain NTK.

    Returns:
        dict of scalars (`RECORD_KEYS`): `trace` (exact), `entropy`, `erank`,
        `label_alignment`, `kernel_distance`, each with `*_stderr`, and `label_alignment_traced`,
        `eigvec_misalignment` (NaN: see the module docstring).
    """
    check_inputs(x, None)
    d, vp = kernels.ntk_diagonal_and_vp(model, x, method=method, block_size=block_size,
                                        weights=weights)
    vp_ref = None
    if reference is not None:
        _, vp_ref = kernels.ntk_diagonal_and_vp(reference, x, method=method,
                                                block_size=block_size, weights=weights)
    return record_from_products(
        d,
        vp,
        y_onehot,
        key=key,
        num_probes=num_probes,
        num_steps=num_steps,
        num_deflate=num_deflate,
        num_frobenius_probes=num_frobenius_probes,
        vp_ref=vp_ref,
    )
