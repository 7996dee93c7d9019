"""The host LAPACK spectral step: one `sytrd`, `sterf` for all eigenvalues, `stemr` for the top
eigenvectors and a blocked back-transformation, on numpy arrays.

This is `SpectrumMethod.HOST_LAPACK` of `ntkbench._record.spectrum` (its docstring explains when it is
used and why). LAPACK is reached through the `scipy.linalg.cython_lapack` symbols via ctypes; the
float64 factorization runs on the host CPU, member after member (`host_batch`), so no batched
LAPACK call ever runs inside XLA's intra-op thread pool (where several of them in flight can
deadlock a small pool). The call from a jitted program, an XLA FFI handler on CPU, is in
`ntkbench._record.host_ffi` (`_host_call` is the entry point).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

VOID_P = ctypes.c_void_p


@functools.cache
def _lapack(prefix: str, name: str, num_args: int):
    """A ctypes function for LAPACK routine `prefix + name` from scipy's bundled LAPACK.

    The function pointers come from `scipy.linalg.cython_lapack` (the same LAPACK that jaxlib
    uses on CPU); Fortran convention, every argument by pointer. ctypes releases the GIL during
    the call, so callbacks of several devices factorize concurrently.
    """
    from scipy.linalg import cython_lapack

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsule = cython_lapack.__pyx_capi__[prefix + name]
    return ctypes.CFUNCTYPE(None, *([VOID_P] * num_args))(get_pointer(capsule, get_name(capsule)))


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(VOID_P)


def _int(v: int) -> np.ndarray:
    return np.array([v], np.int32)


def _char(c: str):
    return ctypes.c_char_p(c.encode())


def lapack_prefix(dt: np.dtype) -> str:
    return {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}[np.dtype(dt)]


def host_cosine(K: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Symmetrized `Θ̃` in `dt`, as a fresh C-ordered array (as a Fortran array it is `Θ̃ᵀ = Θ̃`)."""
    K = np.asarray(K, dt)
    d = np.diagonal(K)
    positive = d > 0
    inv_sqrt = np.where(positive, 1.0 / np.sqrt(np.where(positive, d, 1.0)), 0.0).astype(dt)
    a = np.add(K, K.T)
    a *= inv_sqrt[:, None]
    a *= (0.5 * inv_sqrt)[None, :]
    return a


def _sytrd(a: np.ndarray):
    """In place: `a` (C order, symmetric, read as Fortran) -> reflectors; returns `d, e, tau`.

    With uplo='L' on the Fortran view, `a.T[i+2:, i]` holds reflector `i`'s tail.
    """
    n, dt = a.shape[0], a.dtype
    fn = _lapack(lapack_prefix(dt), "sytrd", 10)
    d, e, tau = np.empty(n, dt), np.zeros(n, dt), np.zeros(max(n - 1, 1), dt)
    query, info, size = np.empty(1, dt), _int(0), _int(n)
    fn(_char("L"), _ptr(size), _ptr(a), _ptr(size), _ptr(d), _ptr(e), _ptr(tau), _ptr(query),
       _ptr(_int(-1)), _ptr(info))
    lwork = max(int(query[0]), 1)
    work = np.empty(lwork, dt)
    fn(_char("L"), _ptr(size), _ptr(a), _ptr(size), _ptr(d), _ptr(e), _ptr(tau), _ptr(work),
       _ptr(_int(lwork)), _ptr(info))
    if info[0] != 0:
        raise RuntimeError(f"LAPACK {lapack_prefix(dt)}sytrd failed with info={int(info[0])}.")
    return d, e, tau


def _sterf(d: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, int]:
    """All eigenvalues (ascending) of the tridiagonal matrix `(d, e)` (copies; O(n²))."""
    w, e = d.copy(), e.copy()
    info = _int(0)
    _lapack(lapack_prefix(d.dtype), "sterf", 4)(_ptr(_int(d.shape[0])), _ptr(w), _ptr(e), _ptr(info))
    return w, int(info[0])


def _stemr_top(d: np.ndarray, e: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Top-`k` eigenvectors (ascending columns, Fortran `(n, k)`) of the tridiagonal `(d, e)`."""
    n, dt = d.shape[0], d.dtype
    d, e = d.copy(), e.copy()
    found, info = _int(0), _int(0)
    w = np.empty(n, dt)
    z = np.empty((n, k), dt, order="F")
    isuppz = np.empty(2 * k, np.int32)
    lwork, liwork = 18 * n, 10 * n
    work, iwork = np.empty(lwork, dt), np.empty(liwork, np.int32)
    bound = np.zeros(1, dt)
    _lapack(lapack_prefix(dt), "stemr", 21)(
        _char("V"), _char("I"), _ptr(_int(n)), _ptr(d), _ptr(e), _ptr(bound), _ptr(bound),
        _ptr(_int(n - k + 1)), _ptr(_int(n)), _ptr(found), _ptr(w), _ptr(z), _ptr(_int(n)),
        _ptr(_int(k)), _ptr(isuppz), _ptr(_int(0)), _ptr(work), _ptr(_int(lwork)), _ptr(iwork),
        _ptr(_int(liwork)), _ptr(info))
    return z, int(info[0]) if int(found[0]) == k else -1


def _back_transform(a: np.ndarray, tau: np.ndarray, z: np.ndarray, block: int = 128) -> np.ndarray:
    """`Q z` for `Q = H(1)···H(n−1)` of `sytrd` (uplo='L'), with blocks of `block` reflectors.

    Each block `H(j0)···H(j1−1) = I − V T Vᵀ` is applied as `z ← z − V (T⁻ᵀ...)`, with `T⁻¹ =
    diag(1/τ) + striu(VᵀV)` (the UT transform) solved triangularly: three level-3 BLAS calls of
    scipy's BLAS per block (faster than LAPACK `ormtr`'s 32-wide blocks on narrow `z`). A
    reflector with `τ = 0` is the identity (its column of `V` is zeroed).
    """
    from scipy.linalg import blas

    n, dt = a.shape[0], a.dtype
    gemm, syrk, trsm = blas.get_blas_funcs(("gemm", "syrk", "trsm"), dtype=dt)
    af = a.T  # the Fortran view: af[i, j] = A(i, j)
    z = np.asfortranarray(z)
    r = n - 1
    for j0 in range(((r - 1) // block) * block if r > 0 else -1, -1, -block):
        j1 = min(j0 + block, r)
        k = j1 - j0
        v = np.tril(af[j0 + 1:, j0:j1], -1)
        diag = np.arange(k)
        v[diag, diag] = 1.0
        t = tau[j0:j1]
        identity = t == 0
        v[:, identity] = 0.0
        v = np.asfortranarray(v)
        t_inv = np.triu(syrk(1.0, v, trans=1), 1)
        t_inv[diag, diag] = np.where(identity, 1.0, 1.0 / np.where(identity, 1.0, t))
        zs = z[j0 + 1:]
        w = trsm(1.0, t_inv, gemm(1.0, v, zs, trans_a=1))
        z[j0 + 1:] = gemm(-1.0, v, w, 1.0, zs)
    return z


def _host_one(K: np.ndarray, k: int, dt: np.dtype):
    """Eigenvalues (ascending), top-`k` vectors (descending, C order) and a fallback flag.

    Mixed precision: the O(M³) parts (`sytrd`, the back-transformation) run in `dt`, the
    tridiagonal eigenproblem (O(M²) `sterf`, O(M·k) `stemr`) always in float64. In float32 that
    halves the eigenvalue error and makes MRRR's vectors as accurate as `syevd`'s (float32
    MRRR loses up to 4x in the top-n subspace and 20x in orthogonality), for ~no time.
    """
    n = K.shape[0]
    if not np.all(np.isfinite(K)):
        return np.full(n, np.nan, dt), np.full((n, k), np.nan, dt), True
    a = host_cosine(K, dt)
    d, e, tau = _sytrd(a)
    d, e = d.astype(np.float64), e.astype(np.float64)
    w, info = _sterf(d, e)
    if info != 0:  # QL/QR did not converge (never seen): divide-and-conquer values instead
        w = _syevd(host_cosine(K, np.float64), vectors=False)
    if k == 0:
        return w, np.empty((n, 0), dt), False
    z, info = _stemr_top(d, e, k)
    if info != 0:  # MRRR failed (never seen): a full syevd on a fresh copy
        _, vecs = _syevd(host_cosine(K, dt), vectors=True)
        return w, np.ascontiguousarray(vecs[:, ::-1][:, :k]), True
    z = _back_transform(a, tau, z.astype(dt))
    return w, np.ascontiguousarray(z[:, ::-1]), False


def _syevd(a: np.ndarray, vectors: bool):
    """LAPACK `syevd` (JOBZ='V' or 'N') with the optimal workspace; `a` is overwritten."""
    n, dt = a.shape[0], a.dtype
    fn = _lapack(lapack_prefix(dt), "syevd", 11)
    w, info, size = np.empty(n, dt), _int(0), _int(n)
    jobz = _char("V" if vectors else "N")
    query, iquery = np.empty(1, dt), _int(0)
    fn(jobz, _char("L"), _ptr(size), _ptr(a), _ptr(size), _ptr(w), _ptr(query), _ptr(_int(-1)),
       _ptr(iquery), _ptr(_int(-1)), _ptr(info))
    lwork, liwork = max(int(query[0]), 1), max(int(iquery[0]), 1)
    work, iwork = np.empty(lwork, dt), np.empty(liwork, np.int32)
    fn(jobz, _char("L"), _ptr(size), _ptr(a), _ptr(size), _ptr(w), _ptr(work), _ptr(_int(lwork)),
       _ptr(iwork), _ptr(_int(liwork)), _ptr(info))
    if info[0] != 0:
        raise RuntimeError(f"LAPACK {lapack_prefix(dt)}syevd failed with info={int(info[0])}.")
    return (w, a.T) if vectors else w  # eigenvectors: columns of the Fortran array


def host_eigenvalues_floor(theta: np.ndarray) -> np.ndarray:
    """All eigenvalues of a symmetric matrix by LAPACK `syevd` with JOBZ='N' (optimal workspace).

    The cost floor of any exact dense symmetric eigensolver (one `sytrd` plus `sterf`); used by
    `benchmarks/bench_record.py`. Not part of the record step.

    Example:
        >>> host_eigenvalues_floor(np.diag([3.0, 1.0, 2.0]).astype(np.float32)).tolist()
        [1.0, 2.0, 3.0]
    """
    return _syevd(np.array(theta, order="F"), vectors=False)


def host_batch(K: np.ndarray, w_out: np.ndarray, v_out: np.ndarray, fb_out: np.ndarray,
                dt: np.dtype) -> None:
    """Fill `w_out (..., M)`, `v_out (..., M, k)`, `fb_out (...)` from raw NTKs `K (..., M, M)`."""
    n, k = K.shape[-1], v_out.shape[-1]
    b = int(np.prod(K.shape[:-2], dtype=np.int64))
    flat_k = K.reshape(b, n, n)
    flat_w, flat_v, flat_fb = w_out.reshape(b, n), v_out.reshape(b, n, k), fb_out.reshape(b)
    for i in range(b):  # one member at a time: never a batched LAPACK call
        flat_w[i], flat_v[i], flat_fb[i] = _host_one(flat_k[i], k, dt)
