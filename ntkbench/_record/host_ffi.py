"""Calling the host LAPACK spectral step (`ntkbench._record.host_lapack`) from a jitted program.

`host_call` is the entry point: on CPU an XLA FFI handler written with ctypes (`_ffi_target`,
registered once per process), on other platforms a `jax.pure_callback`. Under vmap the host
code gets the whole batch and loops over it, one member at a time.
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ntkbench._record.host_lapack import VOID_P, host_batch, lapack_prefix


def _host_spectrum_numpy(K, k: int, dt: np.dtype, out_dt: np.dtype):
    """`pure_callback` body (non-CPU platforms): returns new arrays."""
    K = np.asarray(K)
    lead, n = K.shape[:-2], K.shape[-1]
    w = np.empty(lead + (n,), out_dt)
    v = np.empty(lead + (n, k), out_dt)
    fb = np.empty(lead, np.bool_)
    host_batch(K, w, v, fb, dt)
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
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", VOID_P),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion),
                ("traits", ctypes.c_uint32), ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", VOID_P),
                ("dtype", ctypes.c_int), ("data", VOID_P), ("rank", ctypes.c_int64),
                ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Operands(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets have the same layout
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", VOID_P),
                ("size", ctypes.c_int64), ("types", VOID_P), ("args", ctypes.POINTER(VOID_P))]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("extension_start", ctypes.POINTER(_ExtensionBase)), ("api", VOID_P), ("ctx", VOID_P),
                ("stage", ctypes.c_int), ("args", _Operands), ("rets", _Operands)]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", VOID_P),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


class _Api(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", VOID_P),
                ("api_version", _ApiVersion), ("internal_api", VOID_P),
                ("error_create", ctypes.CFUNCTYPE(VOID_P, ctypes.POINTER(_ErrorCreateArgs)))]


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
        host_batch(K, w, v, fb, dt)
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
    name = f"ntkbench_cosine_spectrum_{lapack_prefix(dt)}"
    handler = ctypes.CFUNCTYPE(VOID_P, VOID_P)(functools.partial(_ffi_handler, dt=np.dtype(dt)))
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    jax.ffi.register_ffi_target_as_batch_partitionable(name)
    return name, handler


def host_call(K: Array, k: int, dt: np.dtype, out_dt) -> tuple[Array, Array, Array]:
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
