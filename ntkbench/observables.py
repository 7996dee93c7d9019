"""NTK observables of docs/definitions.md §2-8: trace, cosine normalization, entropy, effective rank, trace
ratio, adaptation rate, label alignment and eigenvector misalignment.

Every function is pure `jax.numpy`, jittable and vmappable over a leading member axis. A matrix
argument is the NTK in matrix form `(M, M)`, `M = N·O`, row index `i·O + a` (docs/definitions.md §1), unless
its name says otherwise (`K4` is the rank-4 form `(N, N, O, O)`).

Precision. The training program runs in float32 and the eigendecomposition runs in the dtype of
its input (LAPACK `syevd` on CPU, cuSOLVER on GPU). `benchmarks/bench_record.py` measures the
float32 record against a float64 one on ReLU-MLP NTKs (M = 1280, widths 8 to 1024, at init and
trained): relative error of the effective rank 1e-7 (wide) to 1e-5 (width 8, whose NTK has ~900
near-zero eigenvalues; a zero eigenvalue perturbed by δ adds -δ ln δ to H), of which 2e-6 comes
from rounding the NTK to float32 alone; label alignment 1e-7; eigenvector misalignment absolute
error <= 7e-9 against per-epoch values of 5e-7 to 7e-4. These are far below the seed-to-seed
spread, so float32 is the default. The misalignment is computed without cancellation (see
`_misalignment_from_eigvecs`); the textbook `1 - ‖U_nᵀU'_n‖²/n` has a float32 floor of ~1e-7,
as large as the signal for wide nets late in training. If misalignments below ~1e-8 matter, run
the record on a float64 copy of the float32 NTK (`with jax.enable_x64(True)`, its own jit): that
cuts the misalignment error to ~3e-10 for ~2x the eigensolver time on CPU; the NTK may stay
float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array, ArrayLike, Float

EIGENVALUE_FLOOR = 1e-14
"""Absolute floor below which eigenvalues of the cosine-normalized NTK are clipped (docs/definitions.md §3)."""

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: these contractions feed small differences


def _check_square(K: Array, name: str = "K") -> None:
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(
            f"{name} must be one NTK in matrix form (M, M), got shape {K.shape}. Reshape a rank-4 "
            "(N, N, O, O) kernel with K4.transpose(0, 2, 1, 3).reshape(N*O, N*O), and wrap batched "
            "kernels in jax.vmap."
        )


def ntk_trace(K: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Normalized trace `T = tr(Θ) / M`, the mean squared gradient norm per (sample, logit).

    docs/definitions.md §2: this is the authors' `NTKTrace(normalize=True)`; the plain sum is `M·T`.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        Scalar `T`.

    Example:
        >>> float(ntk_trace(2.0 * jnp.eye(4)))
        2.0
    """
    _check_square(K)
    return jnp.trace(K) / K.shape[0]


def cosine_normalize(K: Float[Array, "m m"]) -> Float[Array, "m m"]:
    r"""Cosine-normalized NTK `Θ̃ = D^{-1/2} Θ D^{-1/2}`, `D = diag(Θ)` (docs/definitions.md §3).

    `Θ̃[i, j] = Θ[i, j] / sqrt(Θ[i, i] Θ[j, j])`, the NTK of unit-length gradients; entries with
    `Θ[i, i]·Θ[j, j] = 0` (a zero gradient) are set to 0.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        `Θ̃`, shape `(M, M)`, unit diagonal wherever the gradient is nonzero.

    Example:
        >>> cosine_normalize(jnp.array([[4.0, 2.0], [2.0, 1.0]])).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    _check_square(K)
    d = jnp.diagonal(K)
    positive = d > 0
    inv_sqrt = jnp.where(positive, 1.0 / jnp.sqrt(jnp.where(positive, d, 1.0)), 0.0)
    return K * inv_sqrt[:, None] * inv_sqrt[None, :]


def entropy_from_eigenvalues(eigenvalues: Float[Array, " m"]) -> Float[Array, ""]:
    r"""Spectral entropy `H = −Σ p_k ln p_k` of a spectrum (docs/definitions.md §3).

    The eigenvalues are clipped below at `EIGENVALUE_FLOOR` and normalized, `p_k = λ_k / Σ λ`.

    Example:
        >>> round(float(entropy_from_eigenvalues(jnp.ones(4))), 4)  # ln 4
        1.3863
    """
    lam = jnp.maximum(eigenvalues, EIGENVALUE_FLOOR)
    p = lam / jnp.sum(lam)
    return -jnp.sum(xlogy(p, p))



def kernel_distance(K: Float[Array, "m m"], K_ref: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Kernel distance `S(Θ, Θ') = 1 − <Θ, Θ'>_F / (‖Θ‖_F ‖Θ'‖_F)` (docs/definitions.md §12).

    On the raw (not cosine-normalized) NTKs in matrix form; in `[0, 1]` for PSD kernels, 0 when
    one is a positive multiple of the other (Fort et al. 2020).

    Example:
        >>> float(kernel_distance(jnp.eye(3), 2.0 * jnp.eye(3)))
        0.0
        >>> round(float(kernel_distance(jnp.diag(jnp.array([1.0, 0.0])),
        ...                             jnp.diag(jnp.array([0.0, 1.0])))), 4)
        1.0
    """
    _check_square(K)
    _check_square(K_ref, "K_ref")
    inner = jnp.sum(K * K_ref)
    return 1.0 - inner / (jnp.linalg.norm(K) * jnp.linalg.norm(K_ref))


def _cosine_eigh(K: Array, implementation=None) -> tuple[Array, Array]:
    """Ascending eigenvalues `(M,)` and eigenvectors `(M, M)` (columns) of `Θ̃`."""
    eigvecs, eigvals = jax.lax.linalg.eigh(cosine_normalize(K), implementation=implementation)
    return eigvals, eigvecs


def entropy(K: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Spectral entropy `H = −Σ_k p_k ln p_k` of the cosine-normalized NTK (docs/definitions.md §3).

    `λ_k` are the eigenvalues of `Θ̃ = cosine_normalize(K)`, clipped below at `1e-14`, and
    `p_k = λ_k / Σ λ`; natural logarithm. `0 ≤ H ≤ ln M`.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        Scalar `H`.

    Example:
        >>> round(float(entropy(jnp.eye(4))), 4)  # ln 4
        1.3863
    """
    _check_square(K)
    return entropy_from_eigenvalues(jnp.linalg.eigvalsh(cosine_normalize(K)))


def effective_rank(K: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Roy-Vetterli effective rank `erank = exp(H)` of the cosine-normalized NTK (docs/definitions.md §3).

    `H` is `entropy(K)`; `1 ≤ erank ≤ M`. Not the participation ratio `tr(Θ)² / ‖Θ‖_F²`.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        Scalar `erank`.

    Example:
        >>> round(float(effective_rank(jnp.eye(5))), 4)
        5.0
        >>> v = jnp.arange(1.0, 5.0)
        >>> round(float(effective_rank(jnp.outer(v, v))), 4)  # rank one
        1.0
    """
    return jnp.exp(entropy(K))


def trace_ratio(T0: Float[ArrayLike, "*b"], T_star: Float[ArrayLike, "*b"]) -> Float[Array, "*b"]:
    r"""Trace ratio `r = (T* − T0) / T0` (paper Eq. 5, docs/definitions.md §6), elementwise.

    Args:
        T0: trace at initialization, any shape.
        T_star: trace at the minimum test loss, same shape.

    Returns:
        `r`, the broadcast shape of the inputs.

    Example:
        >>> float(trace_ratio(2.0, 3.0))
        0.5
    """
    T0 = jnp.asarray(T0)
    return (jnp.asarray(T_star) - T0) / T0


def adaptation_rate(
    trace: Float[ArrayLike, " k"], train_loss: Float[ArrayLike, " k"], window: int = 20
) -> Float[Array, " k"]:
    r"""Trace adaptation rate `α = −dT̄ / dℓ̄` along the records (paper Eq. 4, docs/definitions.md §7).

    `T̄` and `ℓ̄` are running means of `T` and of `ℓ = ln L_train` over `window` consecutive
    records, each placed at the centre of its window, `c_j = j + (window − 1)/2`. The derivative
    is a ratio of central differences along the records, `α = −ΔT̄ / Δℓ̄`, at integer records:

    - even `window` (centres are half-integers): `Δ` is the difference of the two running means
      centred at `k ± 1/2`, which telescopes to `α_k = −(T_{k+h} − T_{k−h}) / (ℓ_{k+h} − ℓ_{k−h})`
      with `h = window / 2`: the mean slope over the window centred at `k`;
    - odd `window` (integer centres): `Δ` is the difference of the running means centred at `k ± 1`.

    A trace exactly linear in `ln L`, `T = a − α ln L`, gives `α` exactly. `α_k` needs the whole
    window: it is NaN for the first and last `⌈window/2⌉` records (the "half-windows" of docs/definitions.md
    §7, where it is not extrapolated), and wherever an input in its window is NaN. The records are
    assumed equally spaced: with the NTK recorded every `s` epochs, pass the recorded epochs only
    and `window = 20 / s` (see `ntkbench.analysis.summarize`).

    Args:
        trace: `T` per record, shape `(K,)`.
        train_loss: `L_train` (not its log) at the same records, shape `(K,)`.
        window: running-mean window in records, at least 2.

    Returns:
        `α` per record, shape `(K,)`, NaN where undefined.

    Example:
        >>> loss = jnp.exp(-jnp.linspace(0.0, 5.0, 50))
        >>> alpha = adaptation_rate(3.0 - 2.0 * jnp.log(loss), loss, window=10)
        >>> round(float(alpha[25]), 4), bool(jnp.isnan(alpha[0]))
        (2.0, True)
    """
    window = int(window)
    if window < 2:
        raise ValueError(
            f"window={window} records is too short for a running mean and a central difference; "
            "use window >= 2 (NTK recorded every s epochs: window = max(2, round(20 / s)))."
        )
    trace = jnp.asarray(trace)
    log_loss = jnp.log(jnp.asarray(train_loss, dtype=trace.dtype))
    if trace.ndim != 1 or log_loss.shape != trace.shape:
        raise ValueError(
            f"trace and train_loss must be 1-D and of equal length (one value per record), got "
            f"{trace.shape} and {log_loss.shape}; vmap over members."
        )
    num = trace.shape[0]
    half = (window + 1) // 2  # first record with a full window on both sides
    if num < 2 * half + 1:
        return jnp.full((num,), jnp.nan, trace.dtype)
    box = jnp.ones((window,), trace.dtype) / window
    t_bar = jnp.convolve(trace, box, mode="valid")  # (num - window + 1,), centre j + (window-1)/2
    l_bar = jnp.convolve(log_loss, box, mode="valid")
    if window % 2 == 0:
        dt, dl = t_bar[1:] - t_bar[:-1], l_bar[1:] - l_bar[:-1]  # at records j + window/2
    else:
        dt, dl = t_bar[2:] - t_bar[:-2], l_bar[2:] - l_bar[:-2]  # at records j + (window+1)/2
    alpha = -dt / dl
    return jnp.concatenate(
        [jnp.full((half,), jnp.nan, trace.dtype), alpha, jnp.full((half,), jnp.nan, trace.dtype)]
    )


def label_alignment(K: Float[Array, "m m"], y_onehot: Float[ArrayLike, "n o"]) -> Float[Array, ""]:
    r"""Label alignment `A = <Θ, L>_F / (‖Θ‖_F ‖L‖_F)`, `L = y yᵀ` (paper Eq. 16, docs/definitions.md §8).

    `y` is the one-hot label matrix flattened in the NTK's `i·O + a` order (uncentered), so
    `A = yᵀ Θ y / (‖Θ‖_F ‖y‖²)`. Uses the raw (not cosine-normalized) NTK.

    Args:
        K: NTK in matrix form `(M, M)`, `M = N·O`.
        y_onehot: labels `(N, O)`.

    Returns:
        Scalar `A ∈ [−1, 1]` (in `[0, 1]` for a PSD `Θ`).

    Example:
        >>> y = jax.nn.one_hot(jnp.array([0, 1, 1]), 2)
        >>> v = y.reshape(-1)
        >>> round(float(label_alignment(jnp.outer(v, v), y)), 4)
        1.0
    """
    _check_square(K)
    y = jnp.asarray(y_onehot, K.dtype).reshape(-1)
    if y.shape[0] != K.shape[0]:
        raise ValueError(
            f"y_onehot has {y.shape[0]} entries but K is {K.shape}; pass the (N, O) one-hot labels "
            "of the N inputs the NTK was measured on (N·O must equal M)."
        )
    return jnp.dot(y, jnp.dot(K, y, precision=_HIGHEST)) / (jnp.linalg.norm(K) * jnp.dot(y, y))


def label_alignment_traced(
    K4: Float[Array, "n n o o"], y_onehot: Float[ArrayLike, "n o"]
) -> Float[Array, ""]:
    r"""Output-traced label alignment `<Θ_tr, Y Yᵀ>_F / (‖Θ_tr‖_F ‖Y Yᵀ‖_F)` (docs/definitions.md §8).

    `Θ_tr[i, j] = Σ_a Θ[(i, a), (j, a)]` (`N × N`) against the `N × N` label kernel `Y Yᵀ`: the
    classic kernel-target alignment. Differs from `label_alignment`, which aligns the full
    `(N·O) × (N·O)` kernel with `y yᵀ`.

    Args:
        K4: NTK in rank-4 form `(N, N, O, O)` (sample axes first).
        y_onehot: labels `(N, O)`.

    Returns:
        Scalar alignment.

    Example:
        >>> y = jax.nn.one_hot(jnp.array([0, 1, 1]), 2)
        >>> K4 = jnp.einsum("ij,ab->ijab", y @ y.T, jnp.eye(2))
        >>> round(float(label_alignment_traced(K4, y)), 4)
        1.0
    """
    if K4.ndim != 4 or K4.shape[0] != K4.shape[1] or K4.shape[2] != K4.shape[3]:
        raise ValueError(
            f"K4 must be a rank-4 NTK (N, N, O, O), got shape {K4.shape}; for the matrix form "
            "(N·O, N·O) use K.reshape(N, O, N, O).transpose(0, 2, 1, 3)."
        )
    return _traced_alignment(jnp.einsum("ijaa->ij", K4), y_onehot)


def _traced_alignment(k_tr: Array, y_onehot: ArrayLike) -> Array:
    y = jnp.asarray(y_onehot, k_tr.dtype)
    if y.shape[0] != k_tr.shape[0]:
        raise ValueError(
            f"y_onehot has {y.shape[0]} rows but the NTK has {k_tr.shape[0]} samples; pass the "
            "(N, O) one-hot labels of the inputs the NTK was measured on."
        )
    yy = jnp.dot(y, y.T, precision=_HIGHEST)
    return jnp.sum(k_tr * yy) / (jnp.linalg.norm(k_tr) * jnp.linalg.norm(yy))


def _misalignment_from_eigvecs(u_before: Array, u_after: Array, n: Array) -> Array:
    """`1 − ‖U_nᵀ U'_n‖_F² / n`, evaluated as `‖U_nᵀ U'_⊥‖_F² / n` (no cancellation).

    Columns are eigenvectors in ascending eigenvalue order; `n` may be traced (masks, not slices).
    Since `U'` is orthogonal, `‖U_nᵀ U'_n‖² + ‖U_nᵀ U'_⊥‖² = n`, with `U'_⊥` the other `M − n`
    eigenvectors after. Summing the small cross terms directly keeps a small `m` accurate to
    ~eigenvector error, where `1 − (sum of n terms near 1) / n` would bottom out at the rounding
    error of the sum (~1e-7 in float32).
    """
    m = u_before.shape[-1]
    top = (jnp.arange(m) >= m - n).astype(u_before.dtype)  # the n largest eigenvalues' columns
    overlap = jnp.dot(u_before.T, u_after, precision=_HIGHEST) * top[:, None] * (1.0 - top)[None, :]
    return jnp.clip(jnp.sum(overlap**2) / n, 0.0, 1.0)


def _subspace_size(erank: Array, m: int) -> Array:
    return jnp.clip(jnp.round(erank), 1, m)


def eigvec_misalignment(
    K_before: Float[Array, "m m"], K_after: Float[Array, "m m"], n: int | Array | None = None
) -> Float[Array, ""]:
    r"""Top-`n` eigenvector misalignment `m = 1 − ‖U_nᵀ U'_n‖_F² / n` (paper Eq. 17, docs/definitions.md §8).

    `U_n`, `U'_n` are the `(M, n)` top-`n` eigenvectors of the cosine-normalized NTKs before and
    after; `n = round(erank(K_before))` by default. `m ∈ [0, 1]`: 0 when the two top-`n`
    subspaces coincide (whatever the signs or rotations of the vectors inside them), 1 when they
    are orthogonal. If eigenvalue `n` is degenerate with eigenvalue `n + 1` the subspace, and `m`,
    is not unique.

    Args:
        K_before: NTK at the earlier record, `(M, M)`.
        K_after: NTK at the later record, `(M, M)`.
        n: subspace size, an int or a scalar array (may be traced; clipped to `[1, M]`).

    Returns:
        Scalar `m`.

    Example:
        >>> K = jnp.diag(jnp.array([3.0, 2.0, 1.0, 1e-3]))
        >>> float(eigvec_misalignment(K, K, n=2))
        0.0
    """
    _check_square(K_before, "K_before")
    _check_square(K_after, "K_after")
    lam, u_before = _cosine_eigh(K_before)
    _, u_after = _cosine_eigh(K_after)
    m = K_before.shape[0]
    if n is None:
        n = jnp.exp(entropy_from_eigenvalues(lam))
    return _misalignment_from_eigvecs(u_before, u_after, _subspace_size(jnp.asarray(n), m))


def spectral_record(
    K: Float[Array, "m m"],
    y_onehot: Float[ArrayLike, "n o"],
    prev_eigvecs: Float[Array, "m m"] | None = None,
    prev_erank: Float[ArrayLike, ""] | None = None,
    *,
    implementation: jax.lax.linalg.EighImplementation | None = None,
) -> dict[str, Array]:
    r"""All NTK observables of one record from ONE eigendecomposition of `Θ̃`.

    Computes `trace` (§2), `entropy` and `erank` (§3), `label_alignment` and
    `label_alignment_traced` (§8) and the `eigvec_misalignment` against the previous record
    (§8), with `n = round(prev_erank)`. It returns the eigenvectors so that the caller can carry
    `(eigvecs, erank)` to the next record. `vmap` it over members (`in_axes=(0, None, 0, 0)`):
    `n` differs between members, so the top-`n` subspace is selected with masks, not slices.

    Cost: one `(M, M)` `eigh` with eigenvectors (the dominant `O(M³)` term, on CPU and GPU
    alike) plus one `(M, M) @ (M, M)` overlap product for the misalignment, in the dtype of `K`.
    float32 is accurate enough (see the module docstring).

    Args:
        K: NTK in matrix form `(M, M)`.
        y_onehot: labels of the NTK inputs `(N, O)`, `N·O = M`.
        prev_eigvecs: eigenvectors returned by the previous record `(M, M)`, or None (first record).
        prev_erank: effective rank returned by the previous record, scalar; None or NaN for the
            first record. The misalignment is NaN whenever it is NaN.
        implementation: `jax.lax.linalg.EighImplementation` for the eigensolver; None is the
            platform default (LAPACK `syevd` on CPU, cuSOLVER on GPU, QDWH on TPU).

    Returns:
        dict with scalars `trace`, `entropy`, `erank`, `label_alignment`,
        `label_alignment_traced`, `eigvec_misalignment`, and `eigvecs` `(M, M)` (ascending
        eigenvalue order, columns).

    Example:
        >>> y = jax.nn.one_hot(jnp.arange(4) % 2, 2)
        >>> r0 = spectral_record(jnp.eye(8), y)
        >>> r1 = spectral_record(jnp.eye(8), y, r0["eigvecs"], r0["erank"])
        >>> round(float(r0["erank"]), 4), bool(jnp.isnan(r0["eigvec_misalignment"]))
        (8.0, True)
    """
    _check_square(K)
    m = K.shape[0]
    eigvals, eigvecs = _cosine_eigh(K, implementation)
    h = entropy_from_eigenvalues(eigvals)
    y = jnp.asarray(y_onehot, K.dtype)
    if y.ndim != 2 or y.shape[0] * y.shape[1] != m:
        raise ValueError(
            f"y_onehot must be the (N, O) one-hot labels with N·O = {m}, got shape {y.shape}."
        )
    num_samples, num_outputs = y.shape
    k_tr = jnp.einsum("iaja->ij", K.reshape(num_samples, num_outputs, num_samples, num_outputs))
    if prev_eigvecs is None or prev_erank is None:
        misalignment = jnp.full((), jnp.nan, K.dtype)
    else:
        prev_erank = jnp.asarray(prev_erank, K.dtype)
        n = _subspace_size(jnp.where(jnp.isfinite(prev_erank), prev_erank, 1.0), m)
        misalignment = jnp.where(
            jnp.isfinite(prev_erank),
            _misalignment_from_eigvecs(prev_eigvecs.astype(K.dtype), eigvecs, n),
            jnp.nan,
        )
    return dict(
        trace=jnp.trace(K) / m,
        entropy=h,
        erank=jnp.exp(h),
        label_alignment=label_alignment(K, y),
        label_alignment_traced=_traced_alignment(k_tr, y),
        eigvec_misalignment=misalignment,
        eigvecs=eigvecs,
    )
