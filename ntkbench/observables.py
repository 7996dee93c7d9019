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
`misalignment_from_eigvecs`); the textbook `1 - ‖U_nᵀU'_n‖²/n` has a float32 floor of ~1e-7,
as large as the signal for wide nets late in training. If misalignments below ~1e-8 matter, run
the record on a float64 copy of the float32 NTK (`with jax.enable_x64(True)`, its own jit): that
cuts the misalignment error to ~3e-10 for ~2x the eigensolver time on CPU; the NTK may stay
float32.

The observables are implemented in the private group `ntkbench._observables` (spectral,
alignment, adaptation, record) and re-exported here. `spectral_record` computes all of one
record from one eigendecomposition.
"""

from ntkbench._observables import (
    EIGENVALUE_FLOOR,
    adaptation_rate,
    cosine_normalize,
    effective_rank,
    eigvec_misalignment,
    entropy,
    entropy_from_eigenvalues,
    kernel_distance,
    label_alignment,
    label_alignment_traced,
    ntk_trace,
    spectral_record,
    trace_ratio,
)

__all__ = [
    "EIGENVALUE_FLOOR", "adaptation_rate", "cosine_normalize", "effective_rank",
    "eigvec_misalignment", "entropy", "entropy_from_eigenvalues", "kernel_distance",
    "label_alignment", "label_alignment_traced", "ntk_trace", "spectral_record", "trace_ratio",
]
