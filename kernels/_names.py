"""The names of the NTK methods (`NtkMethod`), in a module that imports no JAX: the library's
config validates `ntk_method` against it without starting JAX."""

from __future__ import annotations

import enum


class NtkMethod(enum.Enum):
    """How `ntk` computes the kernel (all are exact; they differ in speed and memory).

    - `JACOBIAN`: per-example `jax.jacrev`, contracted over parameters. Memory `~ N·O·P`.
    - `IMPLICIT`: NTK-vector products (jvp of vjp over blocks of basis vectors); the Jacobian of
      `x1` is never formed. Fewer FLOPs than `JACOBIAN` when a forward pass is cheap relative to
      `O·P` (dense nets), more for weight-sharing layers (convolutions).
    - `STRUCTURED`: the dense-layer identity of docs/definitions.md §1 (`StructuredModel` protocol only);
      orders of magnitude faster for MLPs.
    - `HYBRID`: any model. The dense-layer identity for every `eqx.nn.Linear` the model calls
      once per example at the top level of its forward pass (see `ntkbench.kernels._linears`),
      the Jacobian or NTK-vector products for all other parameters (LayerNorms, convolutions,
      Linears applied per token under a vmap, ...).
    - `AUTO`: `STRUCTURED` if the model implements the protocol, else whichever of `JACOBIAN`,
      `IMPLICIT` and (if the model has a recognized Linear) `HYBRID` a static FLOP count (dots
      and convolutions of the jaxpr) says is cheaper; `explain_method` says why.
    """

    AUTO = "auto"
    JACOBIAN = "jacobian"
    IMPLICIT = "implicit"
    STRUCTURED = "structured"
    HYBRID = "hybrid"
