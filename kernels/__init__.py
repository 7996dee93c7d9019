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
Curvature, matrix-free (top eigenvalues by Lanczos, `TopEigen(value, residual)`):
    `hessian_vp`, `hessian_vp_fn` (Hessian-vector products of any `loss_fn(model)`),
    `hessian_top_eigen` (the sharpness), `preconditioned_top_eigen` (of Adam's `D⁻¹H`, with
    `adam_preconditioner` from an optax Adam state), `ntk_top_eigen` (the weighted training-set
    NTK: the Gauss-Newton spectrum of MSE), `gauss_newton_vp_fn`, `top_eigen` (any symmetric
    operator).

The names are loaded on first use (`__init__.pyi` lists them, for readers and type checkers), so
that the library's config can check `ntk_method` against `NtkMethod` without importing JAX.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
