"""The coordinate check: how the typical size of every layer's activations moves with width.

The standard diagnostic of μP (Tensor Programs V, Fig. 5; microsoft/mup's `coord_check`): the
built-in MLP of a sweep trains a few full-batch steps at each width, under each of the sweep's
parametrizations, with the sweep's optimizer and learning rate (and, under `ntk` and `mup`, its
per-layer rates); at every step `t = 0 .. steps` (0: the initialization) the mean absolute entry
of every layer's pre-activation `u_l = W_l (a_l h_l) + b_l` (the last one: the logits) is
recorded, and its change since initialization `mean|u_t − u_0|`. Under μP both are flat in width
for `t > 0`; under the standard parametrization with Adam they grow with width; under the NTK
parametrization the changes shrink (docs/definitions.md, "Parametrizations").

The models, their initialization, the optimizer and the per-layer rates are exactly the ones a
sweep trains (`ModelFamily`, `make_optimizer`, `lr_multipliers`); only the data is a fixed batch
of `batch` training samples. `coordcheck` returns an `xarray.Dataset`; `coordcheck_slopes` fits
the log-log slope in width; `write_coordcheck` draws one figure and a table.
"""

from __future__ import annotations

import functools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from matplotlib.figure import Figure

from ntkbench._config import ConfigError, SweepConfig
from ntkbench._data import Dataset, load_dataset
from ntkbench._train import ModelFamily, make_optimizer, member_loss, model_family


def _pre_activations(model, x):
    """Every dense layer's pre-activation `u_l` `(B, out_l)` of the MLP `model` on `x`."""
    scale = model.multipliers()
    h, out = x, []
    for l, (w, b) in enumerate(zip(model.weights, model.biases)):
        if scale is not None:
            h = scale[l] * h
        u = h @ w.T + b
        out.append(u)
        h = jax.nn.relu(u) if l < model.depth else u
    return out


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _trajectory(models, x, y, lr, steps: int, optim, loss: str):
    """`(size, change)` `(seeds, steps + 1, layers)` of a stack of models trained `steps`
    full-batch steps on `(x, y)` with the sweep's optimizer `optim` (without its rate) and
    per-parameter rates `lr` (a tree like the parameters)."""

    def one(model, rate):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        state = optim.init(params)
        u0 = _pre_activations(model, x)

        def stats(p):
            u = _pre_activations(eqx.combine(p, static), x)
            return (jnp.stack([jnp.mean(jnp.abs(v)) for v in u]),
                    jnp.stack([jnp.mean(jnp.abs(v - v0)) for v, v0 in zip(u, u0)]))

        def step(carry, _):
            p, s = carry
            g = jax.grad(lambda q: member_loss(eqx.combine(q, static), x, y,
                                               jnp.full(y.shape, 1.0 / y.shape[0]),
                                               loss=loss)[0])(p)
            upd, s = optim.update(g, s, p)
            p = optax.apply_updates(p, jax.tree.map(lambda u, r: (-r) * u, upd, rate))
            return (p, s), stats(p)

        _, (size, change) = jax.lax.scan(step, (params, state), None, length=steps)
        s0, c0 = stats(params)
        return (jnp.concatenate([s0[None], size]), jnp.concatenate([c0[None], change]))

    return jax.vmap(one)(models, lr)


def coordcheck(config: SweepConfig, *, widths=None, steps: int = 5, num_seeds: int = 3,
               batch: int = 64, data: Dataset | None = None) -> xr.Dataset:
    """Run the coordinate check of `config`'s MLP (module docstring).

    Args:
        config: the sweep: its model (the built-in `mlp`), first depth, dataset, optimizer,
            learning rate `lr`, parametrizations and `base_width`. Every width and
            parametrization trains at `lr` (times the parametrization's per-layer multipliers):
            the check asks whether one rate gives width-independent updates, so a per-point
            table (`lr_by`, `lr_table`) is not used.
        widths: the widths to check (default `config.widths`).
        steps: optimizer steps after the initialization.
        num_seeds: initializations per width (their mean is reported).
        batch: training samples in the fixed full batch.
        data: the dataset, if already loaded.

    Returns:
        Dataset over `(parametrization, width, step, layer)` with `size` (`mean|u_t|`) and
        `change` (`mean|u_t − u_0|`), means over seeds; layers `h1 .. h<depth>`, `logits`.

    Example:
        >>> c = ntkbench.preset("quick", parametrization=("standard", "mup"))
        >>> ds = coordcheck(c, widths=(64, 256), steps=2, num_seeds=1)  # doctest: +SKIP
        >>> ds["size"].dims  # doctest: +SKIP
        ('parametrization', 'width', 'step', 'layer')
    """
    if config.model != "mlp":
        raise ConfigError(f"the coordinate check runs the built-in MLP; config.model="
                          f"{config.model!r}: use model='mlp'.")
    if steps < 1 or num_seeds < 1 or batch < 1:
        raise ConfigError(f"steps={steps}, num_seeds={num_seeds} and batch={batch} must be "
                          "positive.")
    widths = tuple(config.widths if widths is None else widths)
    data = load_dataset(config.dataset, config.data_dir or None) if data is None else data
    family: ModelFamily = model_family(config, data)
    depth = config.depth[0]
    x = jnp.asarray(data.x_train[:batch].reshape(min(batch, len(data.y_train)), -1))
    y = jnp.asarray(data.y_train[:batch])
    keys = jax.random.split(jax.random.key(config.seed), num_seeds)
    optim = make_optimizer(config)
    size = np.zeros((len(config.parametrization), len(widths), steps + 1, depth + 1))
    change = np.zeros_like(size)
    for i, par in enumerate(config.parametrization):
        for j, width in enumerate(widths):
            models = family.build_stack(keys, width, depth, par)
            rate = np.float32(config.lr)  # one rate at every width: what μP is about
            mult = eqx.filter_vmap(lambda m: m.lr_multipliers(config.optimizer))(models)
            lr = jax.tree.map(lambda k: rate * k.astype(jnp.float32), mult)
            s, c = _trajectory(models, x, y, lr, steps, optim, config.loss)
            size[i, j], change[i, j] = np.asarray(s).mean(0), np.asarray(c).mean(0)
    layers = [f"h{l + 1}" for l in range(depth)] + ["logits"]
    coords = {"parametrization": list(config.parametrization), "width": list(widths),
              "step": np.arange(steps + 1), "layer": layers}
    dims = ("parametrization", "width", "step", "layer")
    return xr.Dataset({"size": (dims, size), "change": (dims, change)}, coords=coords,
                      attrs={"optimizer": config.optimizer, "lr": config.lr,
                             "base_width": config.base_width, "dataset": config.dataset,
                             "depth": depth, "num_seeds": num_seeds, "batch": int(y.shape[0])})


def coordcheck_slopes(ds: xr.Dataset, name: str = "size") -> xr.DataArray:
    """The least-squares slope of `log name` against `log width`, per parametrization, step and
    layer (0: flat in width)."""
    u = np.log(np.asarray(ds["width"].values, float))
    v = np.log(np.maximum(ds[name].transpose("width", ...).values, 1e-30))
    du = u - u.mean()
    slope = np.tensordot(du, v - v.mean(0), axes=(0, 0)) / (du @ du)
    rest = [d for d in ds[name].dims if d != "width"]
    return xr.DataArray(slope, dims=rest, coords={d: ds[d] for d in rest})


def write_coordcheck(ds: xr.Dataset, out_dir: str | Path) -> list[Path]:
    """`coordcheck.png` (one row per parametrization, one column per shown step: every
    layer's `mean|u_t|` against width, log-log) and `coordcheck.md` (the slopes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = sorted({0, 1, int(ds.sizes["step"]) // 2, int(ds.sizes["step"]) - 1})
    pars = list(ds["parametrization"].values)
    fig = Figure(figsize=(3.4 * len(steps), 2.8 * len(pars) + 0.6))
    axs = np.asarray(fig.subplots(len(pars), len(steps), squeeze=False))
    widths = np.asarray(ds["width"].values, float)
    for i, par in enumerate(pars):
        for j, t in enumerate(steps):
            ax = axs[i, j]
            for layer in ds["layer"].values:
                ax.plot(widths, ds["size"].sel(parametrization=par, step=t, layer=layer),
                        "o-", markersize=3, label=str(layer))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()  # at least two decades: flat reads flat, growth reads growth
            if hi / lo < 100:
                mid = np.sqrt(lo * hi)
                ax.set_ylim(mid / 10, mid * 10)
            ax.set_title(f"{par}, step {t}", fontsize=9)
            ax.set_xlabel("width")
            ax.set_ylabel("mean |pre-activation|")
    axs[0, -1].legend(fontsize=7)
    fig.suptitle(f"coordinate check: {ds.attrs['optimizer']} lr {ds.attrs['lr']:g}, base width "
                 f"{ds.attrs['base_width']}, {ds.attrs['dataset']} batch {ds.attrs['batch']} "
                 f"(mean over {ds.attrs['num_seeds']} seeds); flat = width-independent",
                 fontsize=9)
    fig.tight_layout()
    png = out / "coordcheck.png"
    fig.savefig(png, dpi=100)
    md = out / "coordcheck.md"
    md.write_text(format_slopes(ds) + "\n")
    return [png, md]


def format_slopes(ds: xr.Dataset) -> str:
    """The slopes in width of `mean|u_t|` and of `mean|u_t − u_0|` as a text table."""
    lines = [f"slope of log mean|u_t| (and of log mean|u_t - u_0|) against log width, "
             f"widths {', '.join(str(w) for w in ds['width'].values)}:", ""]
    size, change = coordcheck_slopes(ds, "size"), coordcheck_slopes(ds, "change")
    layers = [str(v) for v in ds["layer"].values]
    lines.append(f"{'parametrization':16} {'step':>4}  " + "  ".join(f"{n:>15}" for n in layers))
    for par in ds["parametrization"].values:
        for t in ds["step"].values:
            cells = []
            for n in layers:
                a = float(size.sel(parametrization=par, step=t, layer=n))
                b = float(change.sel(parametrization=par, step=t, layer=n)) if t else np.nan
                cells.append(f"{a:6.2f} ({b:6.2f})" if t else f"{a:6.2f}        ")
            lines.append(f"{str(par):16} {int(t):>4}  " + "  ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)
