"""The NTK observables as pure JAX functions of kernels: trace, cosine normalization, entropy,
effective rank, label alignments, kernel distance, eigenvector misalignment, trace ratio and
adaptation rate (docs/definitions.md §2-8, §12), and `spectral_record`, all of one record from
one eigendecomposition.

Public as `ntkbench.observables`; the record step (`ntkbench._record`) and the summaries
(`ntkbench._analysis`) use them. Imports nothing else of ntkbench.
"""

from ntkbench._observables.adaptation import adaptation_rate, trace_ratio
from ntkbench._observables.alignment import (
    eigvec_misalignment,
    kernel_distance,
    label_alignment,
    label_alignment_traced,
)
from ntkbench._observables.record import spectral_record
from ntkbench._observables.spectral import (
    EIGENVALUE_FLOOR,
    cosine_normalize,
    effective_rank,
    entropy,
    entropy_from_eigenvalues,
    ntk_trace,
)

__all__ = [
    "EIGENVALUE_FLOOR", "adaptation_rate", "cosine_normalize", "effective_rank",
    "eigvec_misalignment", "entropy", "entropy_from_eigenvalues", "kernel_distance",
    "label_alignment", "label_alignment_traced", "ntk_trace", "spectral_record", "trace_ratio",
]
