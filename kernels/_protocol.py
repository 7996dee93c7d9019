"""The structured-NTK protocol: what a model must offer for the fast dense-layer kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float


@runtime_checkable
class StructuredModel(Protocol):
    """A model whose trainable parameters are all dense layers `u_l = W_l h_l + b_l`.

    The structured NTK (docs/definitions.md §1) needs, for every example, the input `h_l` of each dense layer
    and the backprop signal `δ_l = ∂logits/∂u_l`. A model exposes both through two methods; it
    is duck-typed (`isinstance(model, StructuredModel)` only checks that the methods exist).

    Contract:
        - ALL trainable (inexact-array) parameters of the model are the `W_l` `(out_l, in_l)` and,
          where `has_bias`, the `b_l` `(out_l,)` of the layers in `structured_layout()`. Any other
          trainable parameter (a conv kernel, a LayerNorm scale, ...) would be silently missing
          from the NTK; `ntk(..., method="structured")` checks the parameter count and refuses.
        - `structured_forward(x, eps)` adds `eps[l]` `(out_l,)` to the pre-activation of dense
          layer `l` and returns the logits `(O,)` and the layer inputs `h_l` `(in_l,)`, one per
          layer, in the order of `structured_layout()`. With `eps` all zeros the logits equal
          `model(x)`.
        - Padded (masked) units must have `h = 0` and `δ = 0`; then their contributions vanish.

    Optional, for per-parameter weights (`ntk(..., weights=...)`): `structured_leaves(tree)`
    returns the leaves of `tree`, a pytree shaped like the model's trainable parameters
    (`eqx.filter(model, eqx.is_inexact_array)`, or weights of that structure), at the places of
    every layer's `W_l` and `b_l`: `((W_l, b_l), ...)` in layout order, `b_l` None where
    `has_bias` is False. Called on the parameters themselves it must return the parameter arrays
    (checked). It is not part of the runtime check: models without it keep working unweighted.

    `ntkbench.models.MLP` implements it; a stacked (vmapped) pack of such models does too, since
    the kernels are vmapped over members and only ever see one member.
    """

    def structured_layout(self) -> tuple[tuple[int, int, bool], ...]:
        """`(in_l, out_l, has_bias)` of every dense layer in forward order (static Python ints)."""
        ...

    def structured_forward(
        self, x: Array, eps: Sequence[Float[Array, " out_l"]]
    ) -> tuple[Float[Array, " o"], Sequence[Float[Array, " in_l"]]]:
        """Logits and dense-layer inputs of one example, with `eps[l]` added to layer `l`."""
        ...


def structured_leaves(model, tree, layout, method: str = "structured") -> tuple[tuple, ...]:
    """`model.structured_leaves(tree)`: the `(W_l, b_l)` leaves of `tree` per dense layer (see
    `StructuredModel`), after checking once on the model's own parameters that they are exactly
    the parameter arrays of the layout, in order."""
    fn = getattr(model, "structured_leaves", None)
    if not callable(fn):
        raise TypeError(
            f"weights with method={method!r} need {type(model).__name__}.structured_leaves(tree) "
            "-> ((W_l, b_l), ...), the leaves of a parameter-shaped pytree at every dense layer's "
            "weight and bias (see StructuredModel); add it, or use method='jacobian' or 'implicit'."
        )
    params = eqx.filter(model, eqx.is_inexact_array)
    own = tuple(tuple(pair) for pair in fn(params))
    arrays = {id(leaf) for leaf in jax.tree.leaves(params)}
    ok = len(own) == len(layout)
    for pair, (i, o, has_bias) in zip(own, layout) if ok else ():
        w, b = pair if len(pair) == 2 else (None, None)
        ok = ok and id(w) in arrays and getattr(w, "shape", None) == (o, i)
        ok = ok and (id(b) in arrays and b.shape == (o,) if has_bias else b is None)
    if not ok:
        raise ValueError(
            f"{type(model).__name__}.structured_leaves(params) must return the (W_l (out_l, "
            "in_l), b_l (out_l,) or None) parameter arrays of every layer of structured_layout(), "
            f"in order; got shapes {jax.tree.map(lambda a: getattr(a, 'shape', a), own)}."
        )
    return tuple(tuple(pair) for pair in fn(tree))


def supports_structured(model) -> bool:
    """Whether `model` offers the structured protocol (`structured_layout`, `structured_forward`).

    Example:
        >>> from ntkbench.models import MLP
        >>> supports_structured(MLP(4, 2, width=8, depth=1, key=jax.random.key(0)))
        True
    """
    return isinstance(model, StructuredModel)


def num_trainable(model) -> int:
    """Number of trainable parameters (elements of inexact array leaves) of one member."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(int(np.prod(leaf.shape)) for leaf in leaves))


def check_structured(model, method: str = "structured") -> tuple[tuple[int, int, bool], ...]:
    """Validated `structured_layout()` of `model`; raises with a fix when the contract fails."""
    if not supports_structured(model):
        raise TypeError(
            f"method={method!r} needs a model implementing the StructuredModel protocol "
            f"(`structured_layout()` and `structured_forward(x, eps)`); {type(model).__name__} "
            "does not. Use method='auto', 'jacobian' or 'implicit' for this model."
        )
    layout = tuple((int(i), int(o), bool(b)) for i, o, b in model.structured_layout())
    expected = sum(i * o + (o if b else 0) for i, o, b in layout)
    actual = num_trainable(model)
    if expected != actual:
        raise ValueError(
            f"{type(model).__name__}.structured_layout() accounts for {expected} parameters but the "
            f"model has {actual} trainable (inexact-array) parameters, so the structured NTK would "
            "miss some of them. Either make every trainable parameter a dense layer of the layout "
            "(and non-trainable arrays integer/boolean), or use method='jacobian' or 'implicit'. "
            "If this is a stacked pack, vmap the kernel over members: "
            "eqx.filter_vmap(ntk, in_axes=(eqx.if_array(0), None))(pack, x)."
        )
    return layout
