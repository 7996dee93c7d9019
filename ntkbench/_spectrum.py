"""The spectral step of an NTK record: all eigenvalues and the top eigenvectors of `Θ̃`.

A record needs ALL eigenvalues of the cosine-normalized NTK `Θ̃` (entropy and effective rank,
docs/definitions.md §3) but eigenvectors only for the misalignment (§8): the top `n = round(erank)` of this
record and of the previous one, `n` far below `M`. `cosine_spectrum` returns exactly that, the
eigenvalues and the top `num_vectors` eigenvectors (`num_vectors = n_max`, a config value), and
`top_misalignment` computes the misalignment from two such blocks. The carry of the record step
then holds `(M, n_max)` vectors per member instead of `(M, M)`.

Methods (`SpectrumMethod`; measured numbers and commands in `docs/spectrum.md`):

- `HOST_LAPACK` (the CPU default): ONE Householder tridiagonalization `sytrd` on the host (a
  host call, see below), then all eigenvalues from the tridiagonal matrix (`sterf`, `O(M²)`),
  its top `num_vectors` eigenvectors by MRRR (`stemr`, `O(M·n_max)`), both in float64, and the
  back-transformation by the Householder reflectors in blocks (`2·M²·n_max` flops). `sytrd` is
  the cost floor of any exact dense eigensolver (eigenvalues alone, LAPACK `syevd` with
  JOBZ='N', cost the same), so this gives exact LAPACK eigenpairs at about the eigenvalues-only
  cost, where `eigh` computes and back-transforms all `M` eigenvectors.
- `SUBSPACE`: the eigenvalues from the same host path without vectors, the top vectors by a
  Chebyshev-filtered block subspace iteration ON DEVICE started from the previous record's
  vectors (the filter interval comes from the exact eigenvalues), stopped by a residual test, and
  a full `eigh` fallback when it does not converge within `max_iterations` (or has no usable
  start). It never beats `HOST_LAPACK` on CPU: each filter step is a `(M, M) @ (M, n_max)`
  product, and the host part alone is already the floor.
- `EIGH`: the full on-device `eigh` of today's record (for GPU and TPU, where a host round
  trip per record is wrong), its top columns kept.
- `AUTO`: resolved from the explicit `platform` argument: `"cpu"` gives `HOST_LAPACK`, any other
  platform `EIGH`.

Batching (`vmap` over members). No method ever issues a batched LAPACK call on CPU: a batched
`eigh` (or `qr`) inside a program running on several CPU devices of one process can deadlock,
because jaxlib's LAPACK kernels hand the batch elements to XLA's intra-op thread pool and block
the calling worker. `HOST_LAPACK` gets the whole batch in one host call (an XLA FFI handler on
CPU, see `_host_call`) and loops over it in Python; the call is batch-partitionable, so under
`jit` with the member axis sharded (GSPMD), and inside `shard_map`, each device runs it on its
own members.
`EIGH` and `SUBSPACE` run the members one after the other (a `lax.map`, via
`jax.custom_batching.sequential_vmap`) when `platform` is None or `"cpu"`, and batched on other
platforms (the GPU/TPU eigensolvers batch safely). A `lax.map` over a member axis that GSPMD
shards is not what you want: on CPU use `HOST_LAPACK`, or `shard_map`.

Precision. `dtype` is the precision of the spectral step. The NTK may stay float32: with
`dtype=jnp.float64`, `HOST_LAPACK` normalizes and factorizes a float64 copy on the host (no
`jax_enable_x64` needed; the results are rounded to float32 unless x64 is enabled). The other
methods compute on device and need x64 for float64.
"""

from __future__ import annotations

import ctypes
import enum
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ntkbench.observables import cosine_normalize
from ntkbench.observables import entropy_from_eigenvalues as _entropy_from_eigenvalues

_HIGHEST = lax.Precision.HIGHEST


class SpectrumMethod(enum.Enum):
    """How `cosine_spectrum` computes the eigenvalues and top eigenvectors (all exact to
    LAPACK accuracy, or to the residual tolerance for `SUBSPACE`); see the module docstring."""

    AUTO = "auto"
    HOST_LAPACK = "host_lapack"
    SUBSPACE = "subspace"
    EIGH = "eigh"


class Spectrum(NamedTuple):
    """Result of `cosine_spectrum` for one member (a leading member axis under `vmap`).

    Attributes:
        eigenvalues: all `M` eigenvalues of `Θ̃`, ascending (not clipped).
        vectors: `(M, num_vectors)`, the top eigenvectors, columns in DESCENDING eigenvalue
            order (column 0 belongs to the largest eigenvalue); signs are arbitrary.
        entropy: `H = −Σ p ln p` of the clipped spectrum (docs/definitions.md §3).
        erank: `exp(H)`.
        iterations: subspace iterations run (0 for the direct methods).
        residual: `SUBSPACE`: the largest `‖Θ̃v − θv‖ / λ_max` over the tested columns; NaN for
            the direct methods (they are exact to LAPACK accuracy).
        fallback: True where the vectors did not come from the method's main path (`SUBSPACE`:
            full `eigh`; `HOST_LAPACK`: MRRR failed and a full `syevd` was used).
    """

    eigenvalues: Float[Array, " m"]
    vectors: Float[Array, "m k"]
    entropy: Float[Array, ""]
    erank: Float[Array, ""]
    iterations: Int[Array, ""]
    residual: Float[Array, ""]
    fallback: Bool[Array, ""]


def resolve_spectrum_method(method: str | SpectrumMethod, platform: str | None) -> SpectrumMethod:
    """The concrete method `cosine_spectrum(..., method=method, platform=platform)` runs.

    Example:
        >>> resolve_spectrum_method("auto", "cpu")
        <SpectrumMethod.HOST_LAPACK: 'host_lapack'>
        >>> resolve_spectrum_method("auto", "gpu")
        <SpectrumMethod.EIGH: 'eigh'>

    Args:
        method: a `SpectrumMethod` or its value.
        platform: the platform the record step runs on (`"cpu"`, `"gpu"`, `"cuda"`, `"tpu"`,
            ...), e.g. `jax.default_backend()` or the mesh's `devices.flat[0].platform`; only
            needed for `AUTO`.

    Returns:
        A `SpectrumMethod` other than `AUTO`.
    """
    try:
        method = SpectrumMethod(method)
    except ValueError:
        raise ValueError(
            f"Unknown spectrum method {method!r}; choose one of "
            f"{[m.value for m in SpectrumMethod]}."
        ) from None
    if method is not SpectrumMethod.AUTO:
        return method
    if platform is None:
        raise ValueError(
            "method='auto' needs the platform the record runs on: pass platform='cpu' (or "
            "jax.default_backend(), or the mesh devices' .platform), or choose a method."
        )
    return SpectrumMethod.HOST_LAPACK if platform.lower() == "cpu" else SpectrumMethod.EIGH


# --------------------------------------------------------------------------------------------
# Host LAPACK: one sytrd, sterf for all eigenvalues, stemr + blocked back-transformation.
# --------------------------------------------------------------------------------------------

_P = ctypes.c_void_p


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
    return ctypes.CFUNCTYPE(None, *([_P] * num_args))(get_pointer(capsule, get_name(capsule)))


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(_P)


def _int(v: int) -> np.ndarray:
    return np.array([v], np.int32)


def _char(c: str):
    return ctypes.c_char_p(c.encode())


def _prefix(dt: np.dtype) -> str:
    return {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}[np.dtype(dt)]


def _host_cosine(K: np.ndarray, dt: np.dtype) -> np.ndarray:
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
    fn = _lapack(_prefix(dt), "sytrd", 10)
    d, e, tau = np.empty(n, dt), np.zeros(n, dt), np.zeros(max(n - 1, 1), dt)
    query, info, size = np.empty(1, dt), _int(0), _int(n)
    fn(_char("L"), _ptr(size), _ptr(a), _ptr(size), _ptr(d), _ptr(e), _ptr(tau), _ptr(query),
       _ptr(_int(-1)), _ptr(info))
    lwork = max(int(query[0]), 1)
    work = np.empty(lwork, dt)
    fn(_char("L"), _ptr(size), _ptr(a), _ptr(size), _ptr(d), _ptr(e), _ptr(tau), _ptr(work),
       _ptr(_int(lwork)), _ptr(info))
    if info[0] != 0:
        raise RuntimeError(f"LAPACK {_prefix(dt)}sytrd failed with info={int(info[0])}.")
    return d, e, tau


def _sterf(d: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, int]:
    """All eigenvalues (ascending) of the tridiagonal matrix `(d, e)` (copies; O(n²))."""
    w, e = d.copy(), e.copy()
    info = _int(0)
    _lapack(_prefix(d.dtype), "sterf", 4)(_ptr(_int(d.shape[0])), _ptr(w), _ptr(e), _ptr(info))
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
    _lapack(_prefix(dt), "stemr", 21)(
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
    a = _host_cosine(K, dt)
    d, e, tau = _sytrd(a)
    d, e = d.astype(np.float64), e.astype(np.float64)
    w, info = _sterf(d, e)
    if info != 0:  # QL/QR did not converge (never seen): divide-and-conquer values instead
        w = _syevd(_host_cosine(K, np.float64), vectors=False)
    if k == 0:
        return w, np.empty((n, 0), dt), False
    z, info = _stemr_top(d, e, k)
    if info != 0:  # MRRR failed (never seen): a full syevd on a fresh copy
        _, vecs = _syevd(_host_cosine(K, dt), vectors=True)
        return w, np.ascontiguousarray(vecs[:, ::-1][:, :k]), True
    z = _back_transform(a, tau, z.astype(dt))
    return w, np.ascontiguousarray(z[:, ::-1]), False


def _syevd(a: np.ndarray, vectors: bool):
    """LAPACK `syevd` (JOBZ='V' or 'N') with the optimal workspace; `a` is overwritten."""
    n, dt = a.shape[0], a.dtype
    fn = _lapack(_prefix(dt), "syevd", 11)
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
        raise RuntimeError(f"LAPACK {_prefix(dt)}syevd failed with info={int(info[0])}.")
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


def _host_batch(K: np.ndarray, w_out: np.ndarray, v_out: np.ndarray, fb_out: np.ndarray,
                dt: np.dtype) -> None:
    """Fill `w_out (..., M)`, `v_out (..., M, k)`, `fb_out (...)` from raw NTKs `K (..., M, M)`."""
    n, k = K.shape[-1], v_out.shape[-1]
    b = int(np.prod(K.shape[:-2], dtype=np.int64))
    flat_k = K.reshape(b, n, n)
    flat_w, flat_v, flat_fb = w_out.reshape(b, n), v_out.reshape(b, n, k), fb_out.reshape(b)
    for i in range(b):  # one member at a time: never a batched LAPACK call
        flat_w[i], flat_v[i], flat_fb[i] = _host_one(flat_k[i], k, dt)


def _host_spectrum_numpy(K, k: int, dt: np.dtype, out_dt: np.dtype):
    """`pure_callback` body (non-CPU platforms): returns new arrays."""
    K = np.asarray(K)
    lead, n = K.shape[:-2], K.shape[-1]
    w = np.empty(lead + (n,), out_dt)
    v = np.empty(lead + (n, k), out_dt)
    fb = np.empty(lead, np.bool_)
    _host_batch(K, w, v, fb, dt)
    return w, v, fb


# The CPU path is an XLA FFI handler written with ctypes, not a `jax.pure_callback`: on several
# CPU devices of one process, a pure_callback inside `lax.cond` (the record step runs inside one)
# hangs now and then, because the callback first `device_put`s its operands onto CPU device 0
# and waits for them while device 0 is blocked; under plain `jit` with the member axis sharded,
# a pure_callback runs on device 0 for the whole pack behind collectives that can hang the same
# way. The FFI handler reads and writes XLA's buffers in place, runs on the calling device's
# thread, and is registered as batch-partitionable, so GSPMD gives every device its own members.


class _ExtensionBase(ctypes.Structure):
    pass


_ExtensionBase._fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
                           ("next", ctypes.POINTER(_ExtensionBase))]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion),
                ("traits", ctypes.c_uint32), ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P),
                ("dtype", ctypes.c_int), ("data", _P), ("rank", ctypes.c_int64),
                ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Operands(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets have the same layout
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P),
                ("size", ctypes.c_int64), ("types", _P), ("args", ctypes.POINTER(_P))]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("extension_start", ctypes.POINTER(_ExtensionBase)), ("api", _P), ("ctx", _P),
                ("stage", ctypes.c_int), ("args", _Operands), ("rets", _Operands)]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


class _Api(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P),
                ("api_version", _ApiVersion), ("internal_api", _P),
                ("error_create", ctypes.CFUNCTYPE(_P, ctypes.POINTER(_ErrorCreateArgs)))]


_FFI_DTYPES = {1: np.bool_, 11: np.float32, 12: np.float64}  # XLA_FFI_DataType PRED, F32, F64
_FFI_EXECUTE, _FFI_METADATA, _FFI_INTERNAL = 3, 1, 13  # stage, extension type, error code


def _ffi_view(address: int) -> np.ndarray:
    """A numpy view of an XLA_FFI_Buffer (no copy)."""
    buf = _Buffer.from_address(address)
    shape = tuple(int(buf.dims[i]) for i in range(buf.rank))
    dt = np.dtype(_FFI_DTYPES[buf.dtype])
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0:
        return np.empty(shape, dt)
    raw = (ctypes.c_char * (size * dt.itemsize)).from_address(buf.data)
    return np.frombuffer(raw, dt).reshape(shape)


def _ffi_handler(frame_address: int, dt: np.dtype):
    """XLA FFI handler: operands `K (..., M, M)`; results eigenvalues, vectors, fallback."""
    frame = _CallFrame.from_address(frame_address)
    try:
        if frame.extension_start and frame.extension_start.contents.type == _FFI_METADATA:
            ext = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension))
            meta = ext.contents.metadata.contents
            meta.api_version.major_version, meta.api_version.minor_version = 0, 1
            meta.traits = 0
            return None
        if frame.stage != _FFI_EXECUTE:
            return None
        K = _ffi_view(frame.args.args[0])
        w, v, fb = (_ffi_view(frame.rets.args[i]) for i in range(3))
        _host_batch(K, w, v, fb, dt)
        return None
    except BaseException as e:  # noqa: BLE001 (must not cross the C boundary: report to XLA)
        api = _Api.from_address(frame.api)
        message = f"ntkbench host spectrum failed: {type(e).__name__}: {e}".encode()
        args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message, _FFI_INTERNAL)
        return api.error_create(ctypes.byref(args))


@functools.cache
def _ffi_target(dt: np.dtype) -> tuple[str, object]:
    """Register (once per process) the CPU FFI target computing in `dt`: `(name, handler)`.

    The cache keeps the ctypes handler, whose C function pointer XLA calls, alive.
    """
    name = f"ntkbench_cosine_spectrum_{_prefix(dt)}"
    handler = ctypes.CFUNCTYPE(_P, _P)(functools.partial(_ffi_handler, dt=np.dtype(dt)))
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    jax.ffi.register_ffi_target_as_batch_partitionable(name)
    return name, handler


def _host_call(K: Array, k: int, dt: np.dtype, out_dt) -> tuple[Array, Array, Array]:
    """All eigenvalues, top-`k` vectors and the fallback flag of `Θ̃(K)`, on the host.

    Under vmap the host code gets the whole batch and loops over it. On CPU it is the FFI
    target above; on other platforms (not recommended: a host round trip per record) a
    `pure_callback`.
    """
    n = K.shape[-1]
    shapes = (jax.ShapeDtypeStruct((n,), out_dt), jax.ShapeDtypeStruct((n, k), out_dt),
              jax.ShapeDtypeStruct((), jnp.bool_))

    def cpu(K):
        return tuple(jax.ffi.ffi_call(_ffi_target(dt)[0], shapes, vmap_method="broadcast_all")(K))

    def other(K):
        body = functools.partial(_host_spectrum_numpy, k=k, dt=dt, out_dt=np.dtype(out_dt))
        return tuple(jax.pure_callback(body, shapes, K, vmap_method="expand_dims"))

    return lax.platform_dependent(K, cpu=cpu, default=other)


# --------------------------------------------------------------------------------------------
# Device paths: full eigh, and the warm-started Chebyshev-filtered subspace iteration.
# --------------------------------------------------------------------------------------------


def _device_cosine(K: Array, dt) -> Array:
    theta = cosine_normalize(K.astype(dt))
    return 0.5 * (theta + theta.T)


def _eigh_top(theta: Array, k: int) -> tuple[Array, Array]:
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


def _subspace_top(theta, lam, start, num_tested, k, tol, max_iterations, degree):
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


def _device_spectrum(K, prev_vectors, prev_erank, *, k, method, dt, out_dt, tol, max_iterations,
                     degree):
    """`EIGH` and `SUBSPACE` for one member (or a batch, under a plain vmap)."""
    nan = jnp.full((), jnp.nan, out_dt)
    theta = _device_cosine(K, out_dt)
    if method is SpectrumMethod.EIGH:
        lam, vecs = _eigh_top(theta, k)
        h = _entropy_from_eigenvalues(lam)
        return Spectrum(lam, vecs, h, jnp.exp(h), jnp.zeros((), jnp.int32), nan,
                        jnp.zeros((), jnp.bool_))
    lam, _, _ = _host_call(K, 0, dt, out_dt)
    h = _entropy_from_eigenvalues(lam)
    if prev_vectors is None:
        vecs = _eigh_top(theta, k)[1]
        return Spectrum(lam, vecs, h, jnp.exp(h), jnp.zeros((), jnp.int32), nan,
                        jnp.ones((), jnp.bool_))
    start = prev_vectors.astype(out_dt)
    needed = jnp.round(jnp.exp(h))
    if prev_erank is not None:
        prev_n = jnp.round(jnp.asarray(prev_erank, out_dt))
        needed = jnp.maximum(needed, jnp.where(jnp.isfinite(prev_n), prev_n, 0.0))
    needed = jnp.clip(needed, 1, k)
    usable = (jnp.all(jnp.isfinite(start)) & jnp.all(jnp.isfinite(lam))
              & (jnp.min(jnp.linalg.norm(start, axis=0)) > 0.5))

    # An unusable start runs no iteration and falls back; no constant-valued lax.cond branches
    # (inside shard_map both branches must vary over the mesh alike).
    start = jnp.where(usable, start, theta[:, :k])
    cap = jnp.where(usable, max_iterations, 0)
    x, it, res, ok = _subspace_top(theta, lam, start, needed, k, tol, cap, degree)
    ok = ok & usable
    vecs = lax.cond(ok, lambda: x, lambda: _eigh_top(theta, k)[1])
    res, fallback = jnp.where(usable, res, jnp.nan), ~ok
    return Spectrum(lam, vecs, h, jnp.exp(h), it, res.astype(out_dt), fallback)


def cosine_spectrum(
    K: Float[Array, "m m"],
    num_vectors: int,
    *,
    method: str | SpectrumMethod = SpectrumMethod.AUTO,
    platform: str | None = None,
    prev_vectors: Float[Array, "m k"] | None = None,
    prev_erank: Float[ArrayLike, ""] | None = None,
    dtype=jnp.float32,
    tol: float | None = None,
    max_iterations: int = 8,
    degree: int = 6,
) -> Spectrum:
    r"""All eigenvalues and the top `num_vectors` eigenvectors of `Θ̃ = cosine_normalize(K)`.

    One member per call: `jax.vmap` it (see the module docstring for how each method batches)
    or `lax.map` it over members; it works under `jit`, inside `lax.cond`/`lax.scan` and in
    `jax.shard_map`. Pair it with `top_misalignment`, carrying `(vectors, erank)` per member
    (`(M, k)` and a scalar).

    Args:
        K: raw NTK in matrix form `(M, M)` (cosine-normalized and symmetrized here).
        num_vectors: `k = n_max`, how many top eigenvectors to return, `1 <= k <= M`.
        method: a `SpectrumMethod` (or its value); `AUTO` needs `platform`.
        platform: the platform the step runs on (`jax.default_backend()`, or the mesh devices'
            `.platform`): resolves `AUTO`; for `EIGH`/`SUBSPACE`, None or `"cpu"` runs vmapped
            members one at a time, any other platform batches them.
        prev_vectors: `SUBSPACE` only: the previous record's `vectors (M, k)`, the warm start.
            None, or a block that is not finite or has a column of norm < 0.5 (e.g. a carry
            initialized with zeros or NaN), runs the full `eigh` (`fallback=True`).
        prev_erank: `SUBSPACE` only: the previous record's erank. The residual test covers the
            first `clip(max(round(erank), round(prev_erank)), 1, k)` columns (the ones this
            record's and the next record's misalignments read); the rest are only as accurate
            as the iteration made them. The direct methods return all `k` columns exact.
        dtype: precision of the step, `jnp.float32` or `jnp.float64`. Results have
            `jax.dtypes.canonicalize_dtype(dtype)` (float32 unless x64 is enabled). float64 on
            device (`EIGH`, `SUBSPACE`) needs x64; `HOST_LAPACK` computes in float64 on the
            host regardless.
        tol: `SUBSPACE` residual tolerance `‖Θ̃v − θv‖ ≤ tol·λ_max` per tested column; None:
            `2e-6` (float32) or `1e-12` (float64), about 10x LAPACK's own residuals.
        max_iterations: `SUBSPACE` cap on filter iterations before the `eigh` fallback.
        degree: `SUBSPACE` Chebyshev degree per iteration (`degree` products `(M,M)@(M,k)`
            per iteration, plus one for the Rayleigh-Ritz projection).

    Returns:
        `Spectrum(eigenvalues (M,) ascending, vectors (M, k) descending, entropy, erank,
        iterations, residual, fallback)`.

    Example:
        >>> K = jnp.diag(jnp.array([4.0, 1.0, 9.0])) + 0.1
        >>> s = cosine_spectrum(K, 1, method="host_lapack")
        >>> s.vectors.shape, round(float(s.eigenvalues.sum()), 4)  # trace of Θ̃ = M
        ((3, 1), 3.0)
    """
    method = resolve_spectrum_method(method, platform)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(
            f"K must be one NTK in matrix form (M, M), got shape {K.shape}; vmap or lax.map "
            "cosine_spectrum over members for a stacked pack."
        )
    m = K.shape[0]
    k = int(num_vectors)
    if not 1 <= k <= m:
        raise ValueError(f"num_vectors={num_vectors} must be in [1, M={m}] (n_max of the config).")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be jnp.float32 or jnp.float64, got {dtype}.")
    out_dt = jax.dtypes.canonicalize_dtype(dt)
    if method is not SpectrumMethod.HOST_LAPACK and out_dt != dt:
        raise ValueError(
            f"dtype=float64 with method {method.value!r} computes on device and needs "
            "jax.enable_x64(True); method='host_lapack' computes in float64 on the host "
            "without it."
        )
    if tol is None:
        tol = 2e-6 if dt == np.dtype(np.float32) else 1e-12
    if prev_vectors is not None and prev_vectors.shape != (m, k):
        raise ValueError(
            f"prev_vectors must be the previous record's vectors ({m}, {k}), got "
            f"{prev_vectors.shape}."
        )
    if method is SpectrumMethod.HOST_LAPACK:
        lam, vecs, fallback = _host_call(K, k, dt, out_dt)
        h = _entropy_from_eigenvalues(lam)
        return Spectrum(lam, vecs, h, jnp.exp(h), jnp.zeros((), jnp.int32),
                        jnp.full((), jnp.nan, out_dt), fallback)
    fn = functools.partial(
        _device_spectrum, k=k, method=method, dt=dt, out_dt=out_dt, tol=float(tol),
        max_iterations=int(max_iterations), degree=max(int(degree), 1))
    args = [K]
    if method is SpectrumMethod.SUBSPACE and prev_vectors is not None:
        args.append(prev_vectors)
        if prev_erank is not None:
            args.append(jnp.asarray(prev_erank))

    def one(*args):
        return fn(args[0], args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None)

    if platform is None or platform.lower() == "cpu":
        one = jax.custom_batching.sequential_vmap(one)
    return one(*args)


def top_misalignment(
    prev_vectors: Float[Array, "m k"],
    prev_erank: Float[ArrayLike, ""],
    vectors: Float[Array, "m k"],
) -> Float[Array, ""]:
    r"""Eigenvector misalignment `m = 1 − ‖U_nᵀ U'_n‖_F² / n`, `n = round(prev_erank)` (§8).

    `U_n`, `U'_n` are the first `n` columns of `prev_vectors` and `vectors` (top eigenvectors in
    descending order, as `cosine_spectrum` returns them). Evaluated without cancellation as
    `‖U_n − U'_n (U'_nᵀ U_n)‖_F² / n`; invariant to signs and to rotations inside the subspaces.
    `n` may be traced (masks, not slices). Cost `O(M·k²)`.

    NaN conventions: NaN where `prev_erank` is NaN (first record), and NaN where
    `round(prev_erank) > k` (the carry holds too few vectors; the caller records the flag
    `jnp.round(prev_erank) > k`). `n` is clipped below at 1.

    Args:
        prev_vectors: the previous record's `vectors (M, k)`.
        prev_erank: the previous record's effective rank (scalar, may be NaN).
        vectors: this record's `vectors (M, k)`.

    Returns:
        Scalar `m` in `[0, 1]` (or NaN, see above).

    Example:
        >>> u = jnp.eye(4)[:, :2]
        >>> float(top_misalignment(u, 2.0, u[:, ::-1])), float(top_misalignment(u, 1.0, u[:, ::-1]))
        (0.0, 1.0)
    """
    if prev_vectors.ndim != 2 or prev_vectors.shape != vectors.shape:
        raise ValueError(
            f"prev_vectors {prev_vectors.shape} and vectors {vectors.shape} must both be one "
            "member's (M, k) top eigenvectors; vmap over members."
        )
    dt = jnp.result_type(prev_vectors.dtype, vectors.dtype)
    k = vectors.shape[-1]
    prev_erank = jnp.asarray(prev_erank, dt)
    n = jnp.round(jnp.where(jnp.isfinite(prev_erank), prev_erank, 1.0))
    valid = jnp.isfinite(prev_erank) & (n <= k)
    n = jnp.clip(n, 1, k)
    mask = (jnp.arange(k) < n).astype(dt)
    u = prev_vectors.astype(dt) * mask
    w = vectors.astype(dt) * mask
    r = u - jnp.dot(w, jnp.dot(w.T, u, precision=_HIGHEST), precision=_HIGHEST)
    return jnp.where(valid, jnp.clip(jnp.sum(r * r) / n, 0.0, 1.0), jnp.nan)
