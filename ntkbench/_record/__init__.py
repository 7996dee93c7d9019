"""The NTK record step run inside a pack's program: form the NTK (or only its products), reduce
it to the observables, carry the top eigenvectors to the next record.

`Recorder` is all the other groups use. Inside: the spectral step (`spectrum`: all eigenvalues
and the top eigenvectors of the cosine-normalized NTK) with its eigensolvers on the device
(`subspace`) and on the host (`host_lapack`, called from jit through `host_ffi`), and the
matrix-free records for large kernels (`matrix_free`). Depends on `ntkbench._config`,
`ntkbench.observables` and `ntkbench.kernels`.
"""

from ntkbench._record.recording import RecordCarry, Recorder, RecordInputs

__all__ = [
    "RecordCarry", "Recorder", "RecordInputs",
]
