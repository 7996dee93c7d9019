"""What a pack carries through training: its device inputs `PackData` (never checkpointed) and
its state `PackState` (checkpointed), with each member's best-so-far `Best`.

The member axis comes first in every field, except the `SHARED` fields of `PackData`, which are
the same for all members (replicated over a mesh).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int


class PackData(NamedTuple):
    """Device inputs of a pack; never checkpointed (rebuilt identically on resume).

    Fields in `SHARED` are the same for every member (replicated over a mesh); the others have
    a leading member axis.
    """

    x: Float[Array, "n_all d"]  # the whole training split, flattened
    y: Int[Array, " n_all"]
    idx: Int[Array, "m n"]  # per-member training samples (padded slots point anywhere)
    weight: Float[Array, "m n"]  # 1/n_member on real samples, 0 on padding
    x_member: Float[Array, "m n d"] | None  # per-member inputs (noise axis), else None
    x_eval: Float[Array, "c b d"]  # the evaluation split, in chunks of `eval_batch`
    y_eval: Int[Array, "c b"]
    w_eval: Float[Array, "c b"]  # 1/n_eval on real samples, 0 on padding
    x_ntk: Float[Array, "t d"]  # the NTK samples (draw-major)
    y_ntk: Int[Array, " t"]
    eval_epochs: Bool[Array, " e"]  # whether record k is evaluated
    ntk_epochs: Bool[Array, " e"]  # whether record k has an NTK
    curvature_epochs: Bool[Array, " e"]  # whether record k has curvature
    curvature_key: Any  # per-member keys of the curvature records' start vectors, or None
    lr: Any  # every member's learning rate of every parameter: a tree like the parameters, (m,)
    init: Any  # trainable parameters at initialization (linearized model), or None
    record: Any  # per-member constants of the NTK record (`Recorder.prepare`), or None


SHARED = ("x", "y", "x_eval", "y_eval", "w_eval", "x_ntk", "y_ntk", "eval_epochs", "ntk_epochs",
          "curvature_epochs")


class Best(NamedTuple):
    """Each member at its lowest test loss so far (the first one on ties: the exact `k*`)."""

    params: Any
    lin_params: Any
    loss: Float[Array, " m"]
    epoch: Int[Array, " m"]


class PackState(eqx.Module):
    """Everything that changes during training (checkpointed as its array leaves)."""

    model: eqx.Module  # stacked members; inexact leaves are the trainable parameters
    opt_state: Any
    diverged: Bool[Array, " m"]
    epoch: Int[Array, ""]
    best: Best
    lin_params: Any  # the linearized model's parameters (`linearized=True`), else None
    lin_opt_state: Any
    record: Any  # carry of the NTK record step, or None

