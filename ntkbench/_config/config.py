"""Sweep configuration: a frozen, validated `SweepConfig`, built from a preset's `ConfigDict`.

The command line edits a preset's `ConfigDict` (`--config.FIELD=VALUE`); the library only ever
sees the frozen `SweepConfig`. Every check here runs before any compile or compute and raises
`ConfigError` with one line that says what to fix. docs/configuration.md describes each field.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from ntkbench._config.errors import ConfigError
from ntkbench._config.schema import AXES
from ntkbench.kernels import NtkMethod


class NtkSpectrum(enum.Enum):
    """How NTK records reduce the kernel (`ntk_spectrum`): form it and take its exact spectrum,
    estimate everything from NTK-vector products (`SLQ`), or choose by size (`AUTO`)."""

    EXACT = "exact"
    SLQ = "slq"
    AUTO = "auto"


class Parametrization(enum.Enum):
    """How a network's initialization, forward multipliers and per-layer learning rates scale
    with its width (docs/definitions.md, "Parametrizations"; `ntkbench.parametrization`)."""

    STANDARD = "standard"  # SP: LeCun init, no multipliers, one learning rate
    NTK = "ntk"  # unit-variance weights, forward multiplier 1/sqrt(fan_in)
    MUP = "mup"  # maximal update parametrization (Tensor Programs V, the form of microsoft/mup)


class Optimizer(enum.Enum):
    """The optimizers a sweep trains with (full batch or minibatch)."""

    ADAM = "adam"
    SGD = "sgd"  # with `momentum` (0: plain SGD)


class NtkKernel(enum.Enum):
    """Which kernel an NTK record reduces when the per-layer learning rates differ (under the
    `ntk` and `mup` parametrizations; under `standard` the two are the same kernel)."""

    LR_WEIGHTED = "lr_weighted"  # Σ_l (η_l/η) J_l J_lᵀ: the kernel of the training dynamics
    PARAMETER = "parameter"  # Σ_l J_l J_lᵀ: the parameter-space NTK of the function


class Eigensolver(enum.Enum):
    """How the spectral step of an exact record computes the eigenvalues and top eigenvectors
    of the cosine-normalized NTK (`ntk_eigensolver`; docs/spectrum.md compares them)."""

    AUTO = "auto"
    HOST_LAPACK = "host_lapack"
    SUBSPACE = "subspace"
    EIGH = "eigh"


DATASETS = ("digits", "digits_shifted", "synthetic", "mnist5k", "mnist", "fashion_mnist",
            "cifar10", "cifar4")
MODELS = ("mlp", "cnn", "custom")
OPTIMIZERS = tuple(o.value for o in Optimizer)
PARAMETRIZATIONS = tuple(p.value for p in Parametrization)
NTK_KERNELS = tuple(k.value for k in NtkKernel)
LOSSES = ("cross_entropy", "mse")
INITS = ("lecun_normal", "xavier_uniform", "he_uniform")
NTK_METHODS = tuple(m.value for m in NtkMethod)
NTK_SPECTRA = tuple(m.value for m in NtkSpectrum)
EIGENSOLVERS = tuple(m.value for m in Eigensolver)
#: NTK methods whose kernel a matrix-free record can use: it needs NTK-vector products, which
#: the structured and implicit methods give (`auto` picks between them).
SLQ_METHODS = ("auto", "structured", "implicit")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated, immutable sweep (docs/configuration.md describes every field)."""

    name: str = "custom"
    # data
    dataset: str = "digits"
    data_dir: str = ""
    n_train: tuple[int, ...] = (100,)
    num_data_draws: int = 1
    data_per_seed: bool = False
    noise: tuple[float, ...] = (0.0,)
    noise_std: float = 0.01
    n_eval: int = 0
    eval_every: int = 1
    eval_batch: int = 2048
    # models
    model: str = "mlp"
    model_file: str = ""
    model_digest: str = ""
    init: str = "lecun_normal"
    parametrization: tuple[str, ...] = ("standard",)
    base_width: int = 64
    widths: tuple[int, ...] = (8, 32, 128, 512)
    depth: tuple[int, ...] = (3,)
    cnn_dense: int = 64
    num_seeds: int = 4
    init_per_data: bool = False
    # training
    epochs: int = 300
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_by: str = ""
    lr_table: str = ""
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9
    batch_size: int = 0
    loss: str = "cross_entropy"
    seed: int = 0
    linearized: bool = False
    chunk_epochs: int = 50
    # NTK records
    n_test: int = 128
    ntk_test_draws: int = 1
    ntk_every: int = 10
    ntk_early_every: int = 0
    ntk_early_until: int = 0
    ntk_method: str = "auto"
    ntk_kernel: str = "lr_weighted"
    ntk_spectrum: str = "exact"
    ntk_exact_max: int = 4096
    ntk_eigensolver: str = "auto"
    ntk_num_vectors: int = 64
    ntk_float64: bool = False
    slq_probes: int = 20
    slq_steps: int = 50
    slq_deflate: int = 20
    slq_frobenius_probes: int = 96
    kernel_velocity: bool = False
    curvature_every: int = 0
    curvature_steps: int = 20
    ntk_snapshots: bool = True
    layer_ntks: bool = False
    # run settings (never change results)
    max_packs_per_group: int = 4
    min_pack_efficiency: float = 0.95
    pack_memory_mb: int = 2048
    checkpoint_every_epochs: int = 100
    checkpoint_every_minutes: float = 10.0
    checkpoint_max_overhead: float = 0.05

    def __post_init__(self):
        # Every construction (direct, `dataclasses.replace`, a stored manifest) normalizes the
        # field types (lists to tuples, strings from the command line to numbers) and checks
        # the result: an invalid SweepConfig cannot exist.
        for field in dataclasses.fields(self):
            parse, kind = _KINDS.get(str(field.type), (None, str))
            value = getattr(self, field.name)
            new = str(value) if parse is None else parse(field.name, value, kind)
            if new is not value:
                object.__setattr__(self, field.name, new)
        validate(self)

    def lr_axes(self) -> tuple[str, ...]:
        """The axes a learning-rate table is aligned with (`lr_by`, e.g. ("depth", "width"))."""
        return tuple(a.strip() for a in self.lr_by.split(",") if a.strip())

    def lr_of(self, point: dict[str, Any] | Any) -> float:
        """The learning rate of a sweep point (a member, or a dict of its axis values): its entry
        of `lr_table` (keyed by its values of the `lr_axes()`), or `lr` without a table.

        Example:
            >>> c = SweepConfig(widths=(8, 64), lr_by="width", lr_table="8=3e-3, 64=1e-3")
            >>> c.lr_of({"width": 64, "depth": 3})
            0.001
        """
        axes = self.lr_axes()
        if not axes:
            return self.lr
        get = point.get if isinstance(point, dict) else lambda a: getattr(point, a)
        return _parse_lr_table(self.lr_table, axes)[tuple(get(a) for a in axes)]

    def lr_points(self) -> dict[tuple, float]:
        """Every point of the `lr_axes()` grid of this sweep with its learning rate."""
        axes = self.lr_axes()
        values = self.axis_values()
        points = itertools.product(*(values[a] for a in axes))
        return {p: self.lr_of(dict(zip(axes, p))) for p in points}

    @property
    def records_ntk(self) -> bool:
        """Whether the sweep records NTKs at all (`ntk_every > 0`)."""
        return self.ntk_every > 0

    def axis_values(self) -> dict[str, tuple]:
        """The coordinate values of every sweep axis, in `AXES` order."""
        values = {"parametrization": self.parametrization, "depth": self.depth,
                  "width": self.widths, "n_train": self.n_train,
                  "noise": self.noise, "data_draw": tuple(range(self.num_data_draws)),
                  "seed": tuple(range(self.num_seeds))}
        return {a: values[a] for a in AXES}

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axis_values().values())

    @property
    def num_members(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def num_records(self) -> int:
        """Loss records per member: initialization plus one per epoch."""
        return self.epochs + 1

    def ntk_epochs(self) -> tuple[int, ...]:
        """Records with an NTK: every `ntk_every` epochs, every `ntk_early_every` epochs before
        `ntk_early_until`, and the final one."""
        if not self.records_ntk:
            return ()
        epochs = set(range(0, self.epochs + 1, self.ntk_every)) | {self.epochs}
        if self.ntk_early_every > 0:
            epochs |= set(range(0, min(self.ntk_early_until, self.epochs), self.ntk_early_every))
        return tuple(sorted(epochs))

    def curvature_epochs(self) -> tuple[int, ...]:
        """Records with curvature (sharpness, preconditioned sharpness, the training-set NTK's
        top eigenvalue): every `curvature_every` epochs and the final one; none when 0."""
        if self.curvature_every <= 0:
            return ()
        return tuple(sorted(set(range(0, self.epochs + 1, self.curvature_every))
                            | {self.epochs}))

    def eval_epochs(self) -> tuple[int, ...]:
        """Records with test metrics: every `eval_every` epochs and the final one."""
        return tuple(sorted(set(range(0, self.epochs + 1, self.eval_every)) | {self.epochs}))

    def spectrum(self, num_classes: int) -> str:
        """`"exact"` or `"slq"`: how NTK records reduce the kernel (`auto` chooses by size)."""
        if self.ntk_spectrum != "auto":
            return self.ntk_spectrum
        return "slq" if self.n_test * num_classes > self.ntk_exact_max else "exact"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A stable hash of everything that changes results (not where files live)."""
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_RESULTS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def diff(self, other: SweepConfig) -> dict[str, tuple[Any, Any]]:
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}
#: Fields an extension may grow: the values of the sweep axes (and the learning-rate table,
#: whose existing points must keep their rates).
EXTENSIBLE = ("parametrization", "widths", "depth", "n_train", "noise", "num_seeds",
              "num_data_draws", "lr_table")
#: Axes a learning-rate table may vary over (replicates share their point's rate).
LR_AXES = ("parametrization", "depth", "width", "n_train", "noise")
#: Fields that never change results. The planner bounds only shape the packs of members added
#: later (a sweep keeps the plan in its manifest); checkpoint settings may change between runs.
NOT_RESULTS = ("name", "data_dir", "model_file", "checkpoint_every_epochs",
               "checkpoint_every_minutes", "checkpoint_max_overhead", "max_packs_per_group",
               "min_pack_efficiency", "pack_memory_mb")
#: Fields a rerun on an existing workdir takes from the request, not from the manifest.
RUN_SETTINGS = NOT_RESULTS[1:]


def _as_tuple(name: str, value: Any, kind: type) -> tuple:
    if isinstance(value, str):
        value = [p.strip().strip("'\"").strip() for p in
                 value.replace("(", "").replace(")", "").split(",") if p.strip()]
    if not isinstance(value, (list, tuple)):
        value = (value,)
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"config.{name}={value!r} must be a list of {kind.__name__}s, e.g. "
                          f"config.{name}=(8, 32, 128).") from None
    if kind is int and any(float(v) != int(float(v)) for v in value):
        raise ConfigError(f"config.{name}={value!r} must hold whole numbers.")
    if kind is int:
        for v in out:
            _check_int(name, v)
    return out


#: Integers must fit int64 (JAX keys, zarr shapes and NumPy all take 64-bit integers).
_INT_BOUND = 2**63


def _check_int(name: str, value: int) -> None:
    if not -_INT_BOUND < value < _INT_BOUND:
        raise ConfigError(f"config.{name}={value} is too large: integers must lie within "
                          f"+-(2^63 - 1) (e.g. config.{name}={FIELDS[name].default!r}).")


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
        raise ConfigError(f"config.{name}={value!r} is not a valid {kind.__name__}; e.g. "
                          f"config.{name}={FIELDS[name].default!r}.") from None
    if kind is int and isinstance(value, float) and value != int(value):
        raise ConfigError(f"config.{name}={value!r} must be a whole number.")
    if kind is int:
        _check_int(name, out)
    return out


_KINDS = {"tuple[int, ...]": (_as_tuple, int), "tuple[float, ...]": (_as_tuple, float),
          "tuple[str, ...]": (_as_tuple, str),
          "int": (_scalar, int), "float": (_scalar, float), "bool": (_scalar, bool)}


def from_config_dict(cfg: ml_collections.ConfigDict | dict) -> SweepConfig:
    """Validate a preset or user `ConfigDict` (or dict) into a frozen `SweepConfig`.

    Raises:
        ConfigError: one line naming the field and how to fix it.
    """
    if not isinstance(cfg, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"A config must be an ml_collections.ConfigDict or a dict, not "
                          f"{type(cfg).__name__}; return one from get_config().")
    raw = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"Unknown config field(s) {', '.join(unknown)}; valid fields are "
                          f"{', '.join(sorted(FIELDS))}.")
    return SweepConfig(**raw)


def stored(d: dict) -> SweepConfig:
    """The `SweepConfig` recorded in a manifest (fields of newer versions get their defaults)."""
    return SweepConfig(**{k: v for k, v in d.items() if k in FIELDS})


def _canonical(c: SweepConfig) -> dict[str, Any]:
    """Everything that defines the members and their results, axis values as sets."""
    d = {k: v for k, v in c.to_dict().items() if k not in NOT_RESULTS}
    for name in ("widths", "depth", "n_train", "noise"):
        d[name] = tuple(sorted(d[name]))
    return d


def same_sweep(a: SweepConfig, b: SweepConfig) -> bool:
    """True when `a` and `b` train the same members to the same results (axis values may be
    listed in another order; names and paths are ignored)."""
    return _canonical(a) == _canonical(b)


def extend(old: SweepConfig, new: SweepConfig) -> SweepConfig:
    """The sweep `old` grown by the members of `new`.

    `new` keeps every value of every axis of `old` and may add values or raise the counts;
    every other field that changes results must be equal. `old`'s axis values come first, so
    every existing member keeps its position in the results grid and its pack.

    Raises:
        ConfigError: one line naming what an extension cannot change or drop.
    """
    a, b = old.to_dict(), new.to_dict()
    fixed = {k: (a[k], b[k]) for k in a if k not in EXTENSIBLE + NOT_RESULTS and a[k] != b[k]}
    if fixed:
        listing = "; ".join(f"{k}: {x!r} -> {y!r}" for k, (x, y) in fixed.items())
        raise ConfigError(f"an extension only adds members (new values of "
                          f"{', '.join(EXTENSIBLE)}), but {listing} would change the existing "
                          "ones; use a new workdir for a different sweep.")
    merged = {}
    for name in ("parametrization", "widths", "depth", "n_train", "noise"):
        dropped = [v for v in a[name] if v not in b[name]]
        if dropped:
            raise ConfigError(f"config.{name}={tuple(b[name])} drops "
                              f"{', '.join(map(str, dropped))} of the existing sweep; an "
                              f"extension keeps every value: list {tuple(a[name])} plus the new "
                              "ones.")
        merged[name] = tuple(a[name]) + tuple(v for v in b[name] if v not in a[name])
    for name in ("num_seeds", "num_data_draws"):
        if b[name] < a[name]:
            raise ConfigError(f"config.{name}={b[name]} is smaller than the existing sweep's "
                              f"{a[name]}; an extension keeps every member: use "
                              f"config.{name} >= {a[name]}.")
        merged[name] = b[name]
    axes = old.lr_axes()
    if axes:  # the table of the grown grid; the existing points keep their rates
        grown = dataclasses.replace(old, lr_by="", lr_table="", **merged).axis_values()
        table = {}
        for point in itertools.product(*(grown[ax] for ax in axes)):
            p = dict(zip(axes, point))
            if all(p[ax] in old.axis_values()[ax] for ax in axes) and (
                    old.lr_of(p) != new.lr_of(p)):
                raise ConfigError(f"config.lr_table changes the learning rate of the existing "
                                  f"point {p} from {old.lr_of(p)} to {new.lr_of(p)}; an "
                                  "extension keeps existing members as they are.")
            table[point] = new.lr_of(p)
        merged["lr_table"] = format_lr_table(table)
    return dataclasses.replace(old, **{k: getattr(new, k) for k in RUN_SETTINGS}, **merged)


def with_run_settings(stored_config: SweepConfig, asked: SweepConfig) -> SweepConfig:
    """The stored sweep with the run settings (checkpoints, planner bounds, paths) asked for."""
    return dataclasses.replace(stored_config, **{k: getattr(asked, k) for k in RUN_SETTINGS})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(c: SweepConfig, name: str, choices: Sequence[str]) -> None:
    value = getattr(c, name)
    _check(value in choices, f"config.{name}={value!r} is unknown; choose one of "
                             f"{', '.join(choices)}.")


_AXIS_KIND = {"parametrization": str, "depth": int, "width": int, "n_train": int,
              "noise": float}


def _parse_lr_table(text: str, axes: Sequence[str]) -> dict[tuple, float]:
    """`{point: lr}` of a table `"v1/v2=lr, ..."` (a point's values of `axes`, joined by `/`)."""
    table = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        key, sep, rate = entry.partition("=")
        parts = [v.strip().strip("'\"") for v in key.split("/")]
        if not sep or len(parts) != len(axes):
            raise ConfigError(
                f"config.lr_table entry {entry!r} must read VALUE=LR with one value per lr_by "
                f"axis ({'/'.join(axes)}), e.g. lr_table='{'/'.join(['8'] * len(axes))}=1e-3'.")
        try:
            point = tuple(_AXIS_KIND[a](v) for a, v in zip(axes, parts))
            table[point] = float(rate)
        except ValueError:
            raise ConfigError(f"config.lr_table entry {entry!r}: {'/'.join(parts)} must be "
                              f"values of {'/'.join(axes)} and {rate.strip()!r} a number."
                              ) from None
    return table


def format_lr_table(table: dict[tuple, float]) -> str:
    """A learning-rate table in its canonical text form (`"8=0.003, 64=0.001"`)."""
    return ", ".join(f"{'/'.join(str(v) for v in point)}={rate!r}"
                     for point, rate in table.items())


def _check_lr_table(c: SweepConfig) -> None:
    """Checks `lr_by`/`lr_table`, and keeps of the table exactly the sweep's points, in grid
    order and canonical form: a table may list more points (a preset's table stays valid when
    the axis is overridden with fewer values), and the fingerprint sees only the rates used."""
    axes = c.lr_axes()
    _check(all(a in LR_AXES for a in axes) and len(set(axes)) == len(axes),
           f"config.lr_by={c.lr_by!r} must name distinct axes among {', '.join(LR_AXES)}, "
           "separated by commas, e.g. lr_by='width' or lr_by='depth,width'.")
    _check(bool(axes) == bool(c.lr_table.strip()),
           "config.lr_table and config.lr_by go together: lr_by names the axes, lr_table gives "
           "a learning rate per point of them (e.g. lr_by='width', lr_table='8=3e-3, 64=1e-3');"
           " leave both empty for one lr everywhere.")
    if not axes:
        return
    table = _parse_lr_table(c.lr_table, axes)
    values = c.axis_values()
    points = list(itertools.product(*(values[a] for a in axes)))
    missing = ["/".join(map(str, p)) for p in points if p not in table]
    more = " ..." if len(missing) > 4 else ""
    _check(not missing, f"config.lr_table has no learning rate for {', '.join(missing[:4])}{more}"
           f" ({'/'.join(axes)}); add an entry VALUE=LR for each point of the sweep, or drop "
           "the table (lr_by='', lr_table='') for one lr everywhere.")
    _check(all(math.isfinite(table[p]) and table[p] > 0 for p in points),
           f"config.lr_table={c.lr_table!r} must give positive numbers.")
    object.__setattr__(c, "lr_table", format_lr_table({p: table[p] for p in points}))


def validate(c: SweepConfig) -> None:
    """Static checks (no data needed); dataset-size checks happen when the data is loaded."""
    for name, choices in (("dataset", DATASETS), ("model", MODELS), ("init", INITS),
                          ("optimizer", OPTIMIZERS), ("loss", LOSSES),
                          ("ntk_method", NTK_METHODS), ("ntk_spectrum", NTK_SPECTRA),
                          ("ntk_eigensolver", EIGENSOLVERS), ("ntk_kernel", NTK_KERNELS)):
        _one_of(c, name, choices)
    _check(all(p in PARAMETRIZATIONS for p in c.parametrization),
           f"config.parametrization={c.parametrization} must name parametrizations among "
           f"{', '.join(PARAMETRIZATIONS)}, e.g. ('standard', 'ntk', 'mup').")
    _check(c.base_width > 0, f"config.base_width={c.base_width} must be positive (the width "
                             "at which every parametrization is the standard one).")
    for name in ("parametrization", "widths", "depth", "n_train", "noise"):
        vals = getattr(c, name)
        _check(len(vals) > 0, f"config.{name} is empty; give at least one value.")
        _check(len(set(vals)) == len(vals), f"config.{name}={vals} has duplicates; list each "
                                            "value once.")
    for name in ("widths", "depth", "n_train"):
        _check(all(v > 0 for v in getattr(c, name)),
               f"config.{name}={getattr(c, name)} must all be positive.")
    _check(all(0.0 <= f < 1.0 for f in c.noise), f"config.noise={c.noise} must lie in [0, 1).")
    for name in ("num_seeds", "num_data_draws", "epochs", "n_test", "ntk_test_draws",
                 "chunk_epochs", "max_packs_per_group", "pack_memory_mb", "eval_every",
                 "eval_batch", "ntk_num_vectors", "slq_steps", "cnn_dense",
                 "ntk_exact_max"):
        _check(getattr(c, name) > 0, f"config.{name}={getattr(c, name)} must be positive.")
    _check(c.curvature_steps >= 2, f"config.curvature_steps={c.curvature_steps} must be at "
           "least 2 (Lanczos steps; 20 resolve the top eigenvalue to ~1e-15 on realistic "
           "networks, docs/definitions.md §16).")
    for name in ("ntk_every", "batch_size", "checkpoint_every_epochs", "seed", "n_eval",
                 "curvature_every",
                 "ntk_early_every", "ntk_early_until", "slq_deflate"):
        _check(getattr(c, name) >= 0, f"config.{name}={getattr(c, name)} must be >= 0.")
    _check(c.slq_probes >= 3, f"config.slq_probes={c.slq_probes} must be >= 3 (the standard "
           "error and the control variate need 3); the default is 20.")
    _check(c.slq_frobenius_probes >= 8,
           f"config.slq_frobenius_probes={c.slq_frobenius_probes} must be >= 8 (a sketch, its "
           "exact part and 2 Hutchinson probes); the default is 96.")
    _check_lr_table(c)
    _check(math.isfinite(c.lr) and c.lr > 0, f"config.lr={c.lr} must be a positive number, "
                                             "e.g. 1e-3.")
    _check(0 <= c.b1 < 1 and 0 <= c.b2 < 1 and 0 <= c.momentum < 1,
           "config.b1, config.b2 and config.momentum must lie in [0, 1).")
    _check(math.isfinite(c.noise_std) and c.noise_std >= 0,
           f"config.noise_std={c.noise_std} must be a finite number >= 0, e.g. 0.01.")
    _check(0 < c.min_pack_efficiency <= 1, "config.min_pack_efficiency must lie in (0, 1].")
    _check(c.checkpoint_every_minutes >= 0, "config.checkpoint_every_minutes must be >= 0.")
    _check(0 <= c.checkpoint_max_overhead < 1,
           "config.checkpoint_max_overhead must lie in [0, 1) (0 = never postpone a save).")
    _check(not (c.layer_ntks and c.model != "mlp"),
           "config.layer_ntks needs dense layers (model='mlp'); set config.layer_ntks=false.")
    _check(not (c.kernel_velocity and c.ntk_spectrum == "slq"),
           "config.kernel_velocity compares consecutive formed NTKs; it cannot run with "
           "ntk_spectrum='slq' (kernel_distance_init is estimated instead).")
    _check(not (c.layer_ntks and c.ntk_spectrum == "slq"),
           "config.layer_ntks forms each layer's NTK; it cannot run with ntk_spectrum='slq'.")
    _check(not (c.ntk_spectrum == "slq" and c.ntk_method not in SLQ_METHODS),
           f"config.ntk_method={c.ntk_method!r} forms the kernel, but ntk_spectrum='slq' records "
           f"from NTK-vector products; use ntk_method {' or '.join(map(repr, SLQ_METHODS))}.")
    _check((c.model == "custom") == bool(c.model_file),
           "config.model='custom' is set by a config file that defines model_fn; pass such a "
           "file as the config (or set config.model to mlp or cnn).")
    if c.batch_size > 0:
        _check(all(c.batch_size <= n for n in c.n_train),
               f"config.batch_size={c.batch_size} exceeds n_train={c.n_train}; use a smaller "
               "batch or 0 for full batch.")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """`"I/N"` -> `(I, N)` with `0 <= I < N`."""
    if shard is None:
        return 0, 1
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            i, n = (int(v) for v in str(shard).split("/"))
        except ValueError:
            raise ConfigError(f"shard={shard!r} must look like I/N, e.g. 0/4.") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard={i}/{n} needs 0 <= I < N.")
    return i, n
