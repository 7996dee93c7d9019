"""Empirical NTK kernels (installed as `ntkbench.kernels`; depends on nothing else of ntkbench).

Conventions (docs/definitions.md §1-3): a model maps ONE example to `O` logits; the NTK has the rank-4 shape
`(n1, n2, O, O)` and the matrix form `(n1·O, n2·O)` with row index `i·O + a`; the trace is
normalized by `N·O`. Every function works under `jax.jit`, under `eqx.filter_vmap` over a stacked
pack of members, and with the member axis sharded over a mesh.

Weighted kernels: `ntk`, `ntk_diagonal`, `ntk_trace`, `ntk_vp`, `ntk_vp_fn`, `layer_ntks`,
`ntk_diagonal_and_vp`, `cosine_ntk_vp_fn` and `slq_entropy` take `weights=`, a pytree shaped like
the trainable parameters (`eqx.filter(model, eqx.is_inexact_array)`) of nonnegative scalars (may
be traced, e.g. per member of a pack) or arrays broadcastable to each parameter, and then compute
`Θ_w[(i,a),(j,b)] = Σ_p w_p ∂f_a(x_i)/∂θ_p ∂f_b(x_j)/∂θ_p`, i.e. `J diag(w) Jᵀ`: the kernel of
gradient descent with per-parameter (e.g. per-layer, μP) learning rates `η_p = w_p η`. Every
method supports it; structured models also need `structured_leaves` (see `StructuredModel`).
`weights=None` is the plain NTK, computed exactly as without the argument.

NTK:
    `ntk` (methods `NtkMethod`: jacobian, implicit, structured, hybrid, auto; `block_size` for
    bounded memory), `as_matrix`, `resolve_method`, `explain_method` (what "auto" picks and why).
Without forming the NTK:
    `ntk_diagonal`, `ntk_trace` (docs/definitions.md §2), `ntk_vp` and `ntk_vp_fn` (NTK-vector products).
Packs of members:
    `pack_map` (every member of a stacked pack, batched or one at a time: the caller's choice).
Dense networks (the `StructuredModel` protocol, `supports_structured`; its optional
`structured_leaves` maps per-parameter weights to layers):
    `layer_ntks` -> `LayerNTKs` (per-layer NTKs and conjugate kernels).
Users' own Equinox models (method "hybrid"):
    the dense-layer identity for every `eqx.nn.Linear` called once per example at the top level of
    the forward pass, matrix-free for the rest; `analyze_linears` -> `HybridPlan` of `LinearInfo`
    says which Linears are recognized and why not.
Matrix-free spectra for large N:
    `slq_entropy` -> `SpectralEstimate` (entropy and effective rank of the cosine-normalized NTK,
    docs/definitions.md §3, with standard errors), `cosine_ntk_vp_fn`, `slq`, `lanczos`, `hutchinson_trace`,
    `hutchpp_trace` -> `TraceEstimate`; `ntk_diagonal_and_vp` (the diagonal and `v ↦ Θ v` from
    one pass, `structured_vp_fn` for dense networks); with the top of the spectrum handled
    exactly: `deflated_slq` (after `top_subspace`) and `frobenius_hutchpp` -> `HutchppGram`
    (`tr(K_a K_b)` of one or two kernels on shared probes), `mean_cov`, `delta_method`.
"""

from ._deflated import HutchppGram as HutchppGram
from ._deflated import deflated_slq as deflated_slq
from ._deflated import delta_method as delta_method
from ._deflated import frobenius_hutchpp as frobenius_hutchpp
from ._deflated import mean_cov as mean_cov
from ._deflated import top_subspace as top_subspace
from ._implicit import ntk_vp_fn as ntk_vp_fn
from ._linears import HybridPlan as HybridPlan
from ._linears import LinearInfo as LinearInfo
from ._linears import analyze_linears as analyze_linears
from ._methods import NtkMethod as NtkMethod
from ._methods import explain_method as explain_method
from ._methods import resolve_method as resolve_method
from ._ntk import as_matrix as as_matrix
from ._ntk import layer_ntks as layer_ntks
from ._ntk import ntk as ntk
from ._ntk import ntk_diagonal as ntk_diagonal
from ._ntk import ntk_trace as ntk_trace
from ._ntk import ntk_vp as ntk_vp
from ._packs import pack_map as pack_map
from ._products import Matvec as Matvec
from ._products import ntk_diagonal_and_vp as ntk_diagonal_and_vp
from ._products import structured_vp_fn as structured_vp_fn
from ._protocol import StructuredModel as StructuredModel
from ._protocol import supports_structured as supports_structured
from ._slq import SpectralEstimate as SpectralEstimate
from ._slq import cosine_ntk_vp_fn as cosine_ntk_vp_fn
from ._slq import lanczos as lanczos
from ._slq import slq as slq
from ._slq import slq_entropy as slq_entropy
from ._structured import LayerNTKs as LayerNTKs
from ._trace_estimators import TraceEstimate as TraceEstimate
from ._trace_estimators import hutchinson_trace as hutchinson_trace
from ._trace_estimators import hutchpp_trace as hutchpp_trace
