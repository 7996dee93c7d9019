"""`ntkbench profile`: NTK kernel throughput, and pack throughput over device counts."""

from __future__ import annotations

import os

from absl import flags

import ntkbench
from ntkbench.launchers._config_file import (
    UsageError,
    define_config,
    parse,
    preset_or_file,
    strip_config,
)


def _define(fv) -> None:
    flags.DEFINE_list("widths", ["64", "256", "1024"], "MLP widths to profile.", flag_values=fv)
    flags.DEFINE_list("methods", ["jacobian", "implicit", "structured"], "NTK methods.",
                      flag_values=fv)
    flags.DEFINE_integer("n", 128, "Samples in the NTK.", flag_values=fv)
    flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).", flag_values=fv)
    flags.DEFINE_integer("pack_size", 20, "Members in the pack timing.", flag_values=fv)
    flags.DEFINE_bool("compare_neural_tangents", False, "Also time neural-tangents if "
                      "installed.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "PRNG seed.", flag_values=fv)
    flags.DEFINE_list("devices", None, "Instead of the method table, time whole pack chunks "
                      "(training and NTK records) on the first k devices for each k (e.g. "
                      "1,2,4,8); on CPU fakes max(k) devices.", flag_values=fv)
    flags.DEFINE_string("config", None, "A config file with model_fn: profile the NTK methods "
                        "of that model and say which one `auto` picks and why.", flag_values=fv)
    flags.DEFINE_string("trace_dir", None, "Write a jax.profiler trace of the timed calls.",
                        flag_values=fv)


def profile(argv: list[str]) -> int:
    fv = parse(argv, _define)
    import jax

    if fv.devices:
        try:
            counts = sorted({int(k) for k in fv.devices})
        except ValueError:
            raise UsageError(f"--devices={','.join(fv.devices)} must be integers, e.g. "
                             "1,2,4,8.") from None
        if os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu"):
            try:
                jax.config.update("jax_num_cpu_devices", max(counts))
            except RuntimeError:
                pass  # JAX already started (e.g. under tests): use the devices there are
        devices = jax.devices()
        rows, what = ntkbench.profile_devices(counts, devices, trace_dir=fv.trace_dir)
        print(f"backend {jax.default_backend()}, {len(devices)} devices; {what}")
        print(ntkbench.format_device_table(rows))
        return 0
    if fv.config:
        cd, model_fn = preset_or_file(fv.config)
        if model_fn is None:
            raise UsageError(f"{fv.config} defines no model_fn; --config profiles a user's "
                             "model (docs/models.md).")
        print(ntkbench.profile_model(model_fn, cd, n=fv.n, repeats=fv.repeats,
                                     key=jax.random.key(fv.seed)))
        return 0
    try:
        widths = tuple(int(w) for w in fv.widths)
    except ValueError:
        raise UsageError(f"--widths={','.join(fv.widths)} must be integers, e.g. "
                         "--widths=64,256.") from None
    rows = ntkbench.profile_kernels(widths=widths, methods=tuple(fv.methods), n=fv.n,
                                    repeats=fv.repeats, pack_size=fv.pack_size,
                                    compare_neural_tangents=fv.compare_neural_tangents,
                                    key=jax.random.key(fv.seed),
                                    sequential=jax.default_backend() == "cpu",
                                    trace_dir=fv.trace_dir)
    print(ntkbench.format_table(rows))
    return 0


def _define_coordcheck(fv) -> None:
    flags.DEFINE_list("widths", None, "Widths to check (default: the config's widths), e.g. "
                      "64,128,256,512,1024,2048.", flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Optimizer steps after the initialization.", flag_values=fv)
    flags.DEFINE_integer("seeds", 3, "Initializations per width (their mean is drawn).",
                         flag_values=fv)
    flags.DEFINE_integer("batch", 64, "Training samples in the fixed full batch.",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default runs/coordcheck-<config name>).",
                        flag_values=fv)


def coordcheck(argv: list[str]) -> int:
    """`ntkbench coordcheck --config=quick --config.parametrization='("standard","ntk","mup")'
    [--widths=64,...,2048] [--steps=5]`: every layer's activation size against width."""
    holder = {}

    def define(fv):
        holder["model_fn"] = define_config(fv, argv)
        _define_coordcheck(fv)

    fv = parse(strip_config(argv), define)
    try:
        config = ntkbench.from_config_dict(fv.config)
    except ntkbench.ConfigError as e:
        raise UsageError(str(e)) from None
    try:
        widths = None if fv.widths is None else tuple(int(w) for w in fv.widths)
    except ValueError:
        raise UsageError(f"--widths={','.join(fv.widths)} must be integers, e.g. "
                         "--widths=64,256,1024.") from None
    out = fv.out or os.path.join("runs", f"coordcheck-{config.name}")
    ds = ntkbench.coordcheck(config, widths=widths, steps=fv.steps, num_seeds=fv.seeds,
                             batch=fv.batch)
    paths = ntkbench.write_coordcheck(ds, out)
    print(paths[-1].read_text())
    for p in paths:
        print(p)
    return 0
