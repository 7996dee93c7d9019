"""How a sweep builds its members: the model family (MLP, CNN, or a user's `model_fn`).

A family builds the unpadded members of one `(width, depth)` from their init keys, and, where the
model supports it, pads a stack of them to a wider shape so that several widths share one vmapped
pack. It also tells the planner what a member costs (FLOPs per example, parameters).

A user's model (docs/models.md): a config file defines
`model_fn(width, key, *, input_shape, num_classes) -> eqx.Module`; the module maps ONE example,
a flat vector of `prod(input_shape)` pixels (channels last), to `(num_classes,)` logits. An
optional method `padded(pad_to) -> eqx.Module` returns the same function in a `pad_to`-wide shape
(its padded parameters must be zero and receive zero gradients); then widths share packs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ntkbench._config import ConfigError, SweepConfig
from ntkbench._data import Dataset
from ntkbench.models import CNN, MLP


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """The members of a sweep: built per `(width, depth)`, padded where the model allows.

    Attributes:
        kind: "mlp", "cnn" or "custom".
        input_shape: one example's image shape `(H, W, C)`; members take it flattened.
        num_classes: logits per example.
        init: the MLP's initializer (MLP and CNN).
        cnn_dense: width of the CNN's dense layer.
        model_fn: the user's constructor (kind "custom").
    """

    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    init: str = "lecun_normal"
    cnn_dense: int = 64
    model_fn: Callable | None = None
    base_width: int = 64

    @property
    def in_size(self) -> int:
        return math.prod(self.input_shape)

    def build(self, width: int, depth: int, key, parametrization: str = "standard"
              ) -> eqx.Module:
        """One unpadded member."""
        para = dict(parametrization=parametrization, base_width=self.base_width)
        if self.kind == "mlp":
            return MLP(self.in_size, self.num_classes, width, depth, key=key, init=self.init,
                       **para)
        if self.kind == "cnn":
            return CNN(tuple(self.input_shape), self.num_classes, key=key, filters=width,
                       num_conv=depth, hidden=self.cnn_dense, init=self.init, **para)
        extra = para if parametrization != "standard" else {}
        return self.model_fn(width, key, input_shape=tuple(self.input_shape),
                             num_classes=self.num_classes, **extra)

    def build_stack(self, keys, width: int, depth: int,
                    parametrization: str = "standard") -> eqx.Module:
        """Unpadded members of one shape, one per key, stacked (one compile per shape)."""
        return _build_stack(self, keys, int(width), int(depth), str(parametrization))

    @functools.cached_property
    def paddable(self) -> bool:
        """Whether members of several widths can share a pack (the model can be padded)."""
        if self.kind == "mlp":
            return True
        if self.kind == "cnn":
            return False
        return callable(getattr(self._shape(8, 1), "padded", None))

    def pad_stack(self, stack: eqx.Module, pad_to: int) -> eqx.Module:
        """A stack of members padded to width `pad_to` (exact; padded units are masked)."""
        if self.kind == "mlp":
            return stack.padded(pad_to)
        if not self.paddable:
            raise ValueError(f"{self.kind} members cannot be padded to share a pack.")
        return eqx.filter_vmap(lambda m: m.padded(pad_to))(stack)

    def _shape(self, width: int, depth: int) -> eqx.Module:
        return jax.eval_shape(lambda k: self.build(width, depth, k), jax.random.key(0))

    @functools.lru_cache(maxsize=None)  # noqa: B019 (families live as long as a sweep)
    def num_params(self, width: int, depth: int) -> int:
        """Trainable parameters of one member."""
        leaves = [leaf for leaf in jax.tree.leaves(self._shape(width, depth))
                  if jnp.issubdtype(getattr(leaf, "dtype", jnp.int32), jnp.inexact)]
        return int(sum(math.prod(leaf.shape) for leaf in leaves))

    @functools.lru_cache(maxsize=None)  # noqa: B019
    def flops_per_example(self, width: int, depth: int) -> float:
        """Forward FLOPs of one example (the training step costs about 3x this)."""
        if self.kind == "mlp":
            return 2.0 * (self.in_size * width + (depth - 1) * width * width
                          + width * self.num_classes)
        model = self.build(width, depth, jax.random.key(0))
        x = jax.ShapeDtypeStruct((self.in_size,), jnp.float32)
        cost = jax.jit(lambda m, v: m(v)).lower(model, x).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float((cost or {}).get("flops", 2.0 * self.num_params(width, depth)))


@eqx.filter_jit
def _build_stack(family: ModelFamily, keys, width: int, depth: int,
                 parametrization: str) -> eqx.Module:
    # The family, width and depth are static (hashed by value): one compiled program per shape,
    # shared by every pack and sweep of a process, so a member's initial bits never depend on
    # its pack.
    return eqx.filter_vmap(lambda k: family.build(width, depth, k, parametrization))(keys)


def model_family(config: SweepConfig, data: Dataset, model_fn=None) -> ModelFamily:
    """How this sweep builds its members (`model_fn` for `model="custom"`)."""
    if config.model == "custom" and model_fn is None:
        raise ConfigError("config.model='custom' needs the config file's model_fn; pass the "
                          "file as the config (or model_fn= to ntkbench.run).")
    if config.model == "cnn" and min(data.input_shape[:2]) < 2 ** max(config.depth):
        raise ConfigError(f"config.model='cnn' with depth {max(config.depth)} needs images of at "
                          f"least {2 ** max(config.depth)} pixels a side; {config.dataset!r} has "
                          f"{data.input_shape[:2]}. Use fewer conv layers or model='mlp'.")
    if config.model == "custom" and set(config.parametrization) - {"standard"}:
        _check_custom_parametrization(model_fn, config)
    return ModelFamily(config.model, tuple(data.input_shape), data.num_classes, config.init,
                       config.cnn_dense, model_fn, config.base_width)


def _check_custom_parametrization(model_fn, config: SweepConfig) -> None:
    """A user's model takes part in the `ntk` and `mup` parametrizations only if its `model_fn`
    accepts `parametrization=` and `base_width=` keywords and the model it returns has
    `lr_multipliers(optimizer)` (docs/models.md); else the sweep is refused."""
    params = inspect.signature(model_fn).parameters
    takes = {"parametrization", "base_width"} <= set(params) or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes:
        raise ConfigError(
            f"config.parametrization={config.parametrization} needs a model_fn that accepts "
            "parametrization= and base_width= keywords and builds its layers with "
            "ntkbench.parametrization (docs/models.md); this model_fn does not: use "
            "parametrization=('standard',), or the built-in mlp or cnn.")
