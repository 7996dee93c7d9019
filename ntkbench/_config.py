"""Sweep configuration: presets as locked `ConfigDict`s, validated into a frozen `SweepConfig`.

The command line edits a preset's `ConfigDict` (`--config.FIELD=VALUE`); the library only ever
sees the frozen, validated `SweepConfig`. Every check here runs before any compile or compute, and
raises `ConfigError` with one line that says what to fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

#: Sweep axes in storage order; every results array has these dimensions (length 1 when a
#: sweep does not vary the axis), followed by `epoch`.
AXES = ("depth", "width", "n_train", "noise", "data_draw", "seed")

DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar4")
MODELS = ("mlp", "cnn")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mse")
INITS = ("lecun_normal", "xavier_uniform", "he_uniform")


class ConfigError(ValueError):
    """An invalid sweep configuration; the message is one line saying how to fix it."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated, immutable sweep. Field meanings are documented in README.md."""

    name: str = "custom"
    dataset: str = "digits"
    data_dir: str = ""
    model: str = "mlp"
    init: str = "lecun_normal"
    widths: tuple[int, ...] = (8, 32, 128, 512)
    depth: tuple[int, ...] = (3,)
    num_seeds: int = 4
    n_train: tuple[int, ...] = (100,)
    num_data_draws: int = 1
    data_per_seed: bool = False
    noise: tuple[float, ...] = (0.0,)
    noise_std: float = 0.01
    n_test: int = 128
    ntk_test_draws: int = 1
    epochs: int = 300
    optimizer: str = "adam"
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9
    batch_size: int = 0
    loss: str = "cross_entropy"
    seed: int = 0
    ntk_every: int = 10
    ntk_method: str = "auto"
    ntk_snapshots: bool = True
    layer_ntks: bool = False
    chunk_epochs: int = 50
    max_packs_per_group: int = 4
    min_pack_efficiency: float = 0.95
    pack_memory_mb: int = 2048
    checkpoint_every_epochs: int = 100
    checkpoint_every_minutes: float = 10.0
    checkpoint_max_overhead: float = 0.05

    # ------------------------------------------------------------------ derived
    def axis_values(self) -> dict[str, tuple]:
        """The coordinate values of every sweep axis, in `AXES` order."""
        return {
            "depth": self.depth,
            "width": self.widths,
            "n_train": self.n_train,
            "noise": self.noise,
            "data_draw": tuple(range(self.num_data_draws)),
            "seed": tuple(range(self.num_seeds)),
        }

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axis_values().values())

    @property
    def num_members(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def num_records(self) -> int:
        """Loss records per member: initialization plus one per epoch (SPEC.md §4)."""
        return self.epochs + 1

    def ntk_epochs(self) -> tuple[int, ...]:
        """Records at which the NTK is measured: every `ntk_every` epochs and the final one."""
        if self.ntk_every <= 0:
            return ()
        return tuple(sorted(set(range(0, self.epochs + 1, self.ntk_every)) | {self.epochs}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, exclude: Sequence[str] = ("data_dir",)) -> str:
        """A stable hash of everything that changes results (not where the data lives)."""
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def diff(self, other: SweepConfig) -> dict[str, tuple[Any, Any]]:
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


_FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}


def _as_tuple(name: str, value: Any, kind: type) -> tuple:
    if isinstance(value, str):
        parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
        value = parts
    if not isinstance(value, (list, tuple)):
        value = (value,)
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config.{name}={value!r} must be a list of {kind.__name__}s, e.g. "
            f"--config.{name}='(8, 32, 128)'."
        ) from None
    if kind is int and any(float(v) != int(float(v)) for v in value):
        raise ConfigError(f"config.{name}={value!r} must hold whole numbers.")
    return out


def _scalar(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ConfigError(f"config.{name}={value!r} must be true or false.")
        return bool(value)
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config.{name}={value!r} is not a valid {kind.__name__}; e.g. "
            f"--config.{name}={_FIELDS[name].default!r}."
        ) from None
    if kind is int and isinstance(value, float) and value != int(value):
        raise ConfigError(f"config.{name}={value!r} must be a whole number.")
    return out


def from_config_dict(cfg: ml_collections.ConfigDict | dict) -> SweepConfig:
    """Validate a preset or user `ConfigDict` into a frozen `SweepConfig`.

    Raises:
        ConfigError: one line naming the field and how to fix it.
    """
    raw = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"Unknown config field(s) {', '.join(unknown)}; valid fields are "
            f"{', '.join(sorted(_FIELDS))}."
        )
    values = {}
    for name, field in _FIELDS.items():
        if name not in raw:
            continue
        value = raw[name]
        ftype = field.type if isinstance(field.type, str) else str(field.type)
        if ftype.startswith("tuple[int"):
            values[name] = _as_tuple(name, value, int)
        elif ftype.startswith("tuple[float"):
            values[name] = _as_tuple(name, value, float)
        elif ftype == "int":
            values[name] = _scalar(name, value, int)
        elif ftype == "float":
            values[name] = _scalar(name, value, float)
        elif ftype == "bool":
            values[name] = _scalar(name, value, bool)
        else:
            values[name] = str(value)
    config = SweepConfig(**values)
    validate(config)
    return config


#: Fields an extension (`ntkbench run --extend`) may grow: the values of the sweep axes.
EXTENSIBLE = ("widths", "depth", "n_train", "noise", "num_seeds", "num_data_draws")
#: Fields that never change results (not part of the comparison of two sweeps); the checkpoint
#: settings may change between the runs of one sweep.
#: The planner's bounds are among them: a sweep keeps the plan recorded in its manifest, and
#: they only shape the packs of members added later.
_NOT_RESULTS = ("name", "data_dir", "checkpoint_every_epochs", "checkpoint_every_minutes",
                "checkpoint_max_overhead", "max_packs_per_group", "min_pack_efficiency",
                "pack_memory_mb")
#: Fields a rerun on an existing workdir takes from the command line, not from the manifest.
RUN_SETTINGS = _NOT_RESULTS[1:]


def _canonical(c: SweepConfig) -> dict[str, Any]:
    """Everything that defines the set of members and their results, axis values as sets."""
    d = {k: v for k, v in c.to_dict().items() if k not in _NOT_RESULTS}
    for name in ("widths", "depth", "n_train", "noise"):
        d[name] = tuple(sorted(d[name]))
    return d


def same_sweep(a: SweepConfig, b: SweepConfig) -> bool:
    """True when `a` and `b` train the same members to the same results.

    Axis values may be listed in another order (an extended sweep stores its values in the
    order they were added); the preset name and `data_dir` are ignored.
    """
    return _canonical(a) == _canonical(b)


def extend(old: SweepConfig, new: SweepConfig) -> SweepConfig:
    """The sweep `old` grown by the members of `new` (`ntkbench run --extend`).

    `new` must keep every value of every axis of `old` and may add values (`widths`, `depth`,
    `n_train`, `noise`) or raise the counts (`num_seeds`, `num_data_draws`); every other field
    that changes results must be equal. The result lists `old`'s axis values first, in their
    order, then the added ones, so that every existing member keeps its position in the results
    grid and its pack.

    Raises:
        ConfigError: one line naming what an extension cannot change or drop.
    """
    a, b = old.to_dict(), new.to_dict()
    fixed = {k: (a[k], b[k]) for k in a
             if k not in EXTENSIBLE + _NOT_RESULTS and a[k] != b[k]}
    if fixed:
        listing = "; ".join(f"{k}: {x!r} -> {y!r}" for k, (x, y) in fixed.items())
        raise ConfigError(
            f"--extend only adds members (new values of {', '.join(EXTENSIBLE)}), but {listing} "
            "would change the existing ones; use a new --workdir for a different sweep.")
    merged = {}
    for name in ("widths", "depth", "n_train", "noise"):
        dropped = [v for v in a[name] if v not in b[name]]
        if dropped:
            raise ConfigError(
                f"config.{name}={tuple(b[name])} drops {', '.join(map(str, dropped))} of the "
                f"existing sweep; an extension keeps every value: list {tuple(a[name])} plus "
                "the new ones.")
        merged[name] = tuple(a[name]) + tuple(v for v in b[name] if v not in a[name])
    for name in ("num_seeds", "num_data_draws"):
        if b[name] < a[name]:
            raise ConfigError(
                f"config.{name}={b[name]} is smaller than the existing sweep's {a[name]}; an "
                f"extension keeps every member: use config.{name} >= {a[name]}.")
        merged[name] = b[name]
    out = dataclasses.replace(old, **{k: getattr(new, k) for k in RUN_SETTINGS}, **merged)
    validate(out)
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(c: SweepConfig) -> None:
    """Static checks (no data needed); dataset-size checks happen when the data is loaded."""
    _check(c.dataset in DATASETS, f"config.dataset={c.dataset!r} is unknown; choose one of {', '.join(DATASETS)}.")
    _check(c.model in MODELS, f"config.model={c.model!r} is unknown; choose one of {', '.join(MODELS)}.")
    _check(c.init in INITS, f"config.init={c.init!r} is unknown; choose one of {', '.join(INITS)}.")
    _check(c.optimizer in OPTIMIZERS, f"config.optimizer={c.optimizer!r} is unknown; choose adam or sgd.")
    _check(c.loss in LOSSES, f"config.loss={c.loss!r} is unknown; choose cross_entropy or mse.")
    for name in ("widths", "depth", "n_train", "noise"):
        vals = getattr(c, name)
        _check(len(vals) > 0, f"config.{name} is empty; give at least one value.")
        _check(len(set(vals)) == len(vals), f"config.{name}={vals} has duplicates; list each value once.")
    _check(all(w > 0 for w in c.widths), f"config.widths={c.widths} must all be positive.")
    _check(all(d > 0 for d in c.depth), f"config.depth={c.depth} must all be positive.")
    _check(all(n > 0 for n in c.n_train), f"config.n_train={c.n_train} must all be positive.")
    _check(all(0.0 <= f < 1.0 for f in c.noise), f"config.noise={c.noise} must lie in [0, 1).")
    for name in ("num_seeds", "num_data_draws", "epochs", "n_test", "ntk_test_draws", "chunk_epochs",
                 "max_packs_per_group", "pack_memory_mb"):
        _check(getattr(c, name) > 0, f"config.{name}={getattr(c, name)} must be positive.")
    for name in ("ntk_every", "batch_size", "checkpoint_every_epochs", "seed"):
        _check(getattr(c, name) >= 0, f"config.{name}={getattr(c, name)} must be >= 0.")
    _check(math.isfinite(c.lr) and c.lr > 0, f"config.lr={c.lr} must be a positive number, e.g. 1e-3.")
    _check(0 <= c.b1 < 1 and 0 <= c.b2 < 1 and 0 <= c.momentum < 1,
           "config.b1, config.b2 and config.momentum must lie in [0, 1).")
    _check(c.noise_std >= 0, f"config.noise_std={c.noise_std} must be >= 0.")
    _check(c.ntk_method in ("auto", "structured", "implicit", "jacobian"),
           f"config.ntk_method={c.ntk_method!r} is unknown; choose auto, structured, implicit or jacobian.")
    _check(0 < c.min_pack_efficiency <= 1, "config.min_pack_efficiency must lie in (0, 1].")
    _check(c.checkpoint_every_minutes >= 0, "config.checkpoint_every_minutes must be >= 0.")
    _check(0 <= c.checkpoint_max_overhead < 1,
           "config.checkpoint_max_overhead must lie in [0, 1) (0 = never postpone a due save).")
    _check(not (c.layer_ntks and c.model != "mlp"),
           "config.layer_ntks needs dense layers (model='mlp'); set --config.layer_ntks=false.")
    if c.model == "cnn":
        _check(c.widths == (c.widths[0],) and c.depth == (c.depth[0],),
               "config.model='cnn' has a fixed architecture: set one width and one depth "
               "(they only label the results), e.g. --config.widths='(32,)' --config.depth='(3,)'.")
    if c.batch_size > 0:
        _check(all(c.batch_size <= n for n in c.n_train),
               f"config.batch_size={c.batch_size} exceeds n_train={c.n_train}; use a smaller "
               "batch or 0 for full batch.")


# ---------------------------------------------------------------------------- presets


def _base(**overrides) -> ml_collections.ConfigDict:
    d = SweepConfig().to_dict()
    d.update(overrides)
    cd = ml_collections.ConfigDict(d)
    cd.lock()
    return cd


def quick() -> ml_collections.ConfigDict:
    """The default: digits, 3 hidden layers, widths 8..512, 4 seeds, 300 epochs (< 5 min, 2 cores)."""
    # A short sweep is compile-bound: fewer, more padded packs (3 instead of 4 programs) finish
    # sooner; long sweeps keep the default floor of 0.95, which trains faster once compiled.
    return _base(name="quick", widths=(8, 16, 32, 64, 128, 256, 512), depth=(3,), num_seeds=4,
                 n_train=(100,), n_test=64, epochs=300, lr=1e-3, ntk_every=10,
                 min_pack_efficiency=0.8)


def smoke() -> ml_collections.ConfigDict:
    """A seconds-long sweep for tests and CI."""
    return _base(name="smoke", dataset="synthetic", widths=(4, 16), depth=(2,), num_seeds=2,
                 n_train=(32,), n_test=16, epochs=20, lr=3e-3, ntk_every=5, chunk_epochs=10)


def paper_model_scaling() -> ml_collections.ConfigDict:
    """Paper §D model scaling: widths 8..4096 (log grid), depths 3 and 4, 100 samples, 20 seeds."""
    return _base(name="paper_model_scaling", dataset="mnist",
                 widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), depth=(3, 4),
                 num_seeds=20, n_train=(100,), n_test=128, epochs=1000, lr=1e-4, ntk_every=5,
                 chunk_epochs=100)


def paper_data_scaling() -> ml_collections.ConfigDict:
    """Paper §D data scaling: depth 4, width 8, n_train on a log grid, 20 draws of the data."""
    return _base(name="paper_data_scaling", dataset="mnist", widths=(8,), depth=(4,),
                 num_seeds=1, n_train=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                 num_data_draws=20, n_test=128, epochs=1000, lr=1e-3, ntk_every=5,
                 chunk_epochs=100)


def paper_transition() -> ml_collections.ConfigDict:
    """Paper §5 feature-kernel transition: widths 8..8192 at depths 3 and 4."""
    return _base(name="paper_transition", dataset="mnist",
                 widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192), depth=(3, 4),
                 num_seeds=20, n_train=(100,), n_test=128, epochs=1000, lr=1e-4, ntk_every=5,
                 chunk_epochs=100)


def paper_noise_scaling() -> ml_collections.ConfigDict:
    """Paper §D noise scaling: CIFAR-4, dense 3x256 (Xavier), SGD lr 1e-3, momentum 0.9, batch 128."""
    return _base(name="paper_noise_scaling", dataset="cifar4", model="mlp", init="xavier_uniform",
                 widths=(256,), depth=(3,), num_seeds=5, n_train=(2000,),
                 noise=(0.0, 0.1, 0.2, 0.4, 0.6, 0.8), n_test=400, ntk_test_draws=3, epochs=1000,
                 optimizer="sgd", lr=1e-3, momentum=0.9, batch_size=128, ntk_every=50,
                 chunk_epochs=50)


PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "quick": quick,
    "smoke": smoke,
    "paper_model_scaling": paper_model_scaling,
    "paper_data_scaling": paper_data_scaling,
    "paper_transition": paper_transition,
    "paper_noise_scaling": paper_noise_scaling,
}


def get_config(name: str) -> ml_collections.ConfigDict:
    """A locked preset `ConfigDict` by name."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)} or pass a .py config file.")
    return PRESETS[name]()
