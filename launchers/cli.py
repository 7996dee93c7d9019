"""The `ntkbench` command line.

    ntkbench run --config=quick --workdir=runs/quick [--config.FIELD=VALUE ...]
    ntkbench status --workdir=runs/quick
    ntkbench report --workdir=runs/quick
    ntkbench profile [--widths=64,256,1024] [--methods=jacobian,implicit,structured]
    ntkbench presets

`--config` takes a preset name (`ntkbench presets` lists them) or a Python file with a
`get_config()` that returns an `ml_collections.ConfigDict`; any field can be overridden with
`--config.FIELD=VALUE` (the big_vision convention). Bad input exits with status 2 and one line on
stderr, before anything is compiled or written. Only this module (and the other launchers) parses
flags, sets JAX options and touches `jax.distributed`; the library receives a frozen
`SweepConfig`.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Sequence

from absl import flags, logging

EXIT_USAGE = 2
#: "Interrupted, resumable": the run stopped at a checkpoint after SIGTERM/SIGINT; rerun the
#: same command to resume (EX_TEMPFAIL from sysexits.h).
EXIT_INTERRUPTED = 75
COMMANDS = ("run", "status", "report", "profile", "presets")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ntkbench: error: {message}", file=sys.stderr)
    return code


def _config_arg(argv: Sequence[str]) -> str:
    value = "quick"
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _parse(argv: list[str], define) -> flags.FlagValues:
    fv = flags.FlagValues()
    try:
        define(fv)
        fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (AttributeError, KeyError)):
            msg = (f"unknown config field {msg.strip(chr(34)).strip(chr(39))}; "
                   "`ntkbench presets` lists the fields")
        raise UsageError(msg) from None
    return fv


def _load_config(argv: list[str]):
    from ml_collections import config_flags

    from ntkbench import config as cfg_mod

    name = _config_arg(argv)
    is_file = name.endswith(".py") or os.path.sep in name
    if not is_file:  # a preset: the ConfigDict flag itself takes no value, only overrides
        argv = [a for i, a in enumerate(argv)
                if not a.startswith("--config=") and a != "--config"
                and not (i > 0 and argv[i - 1] == "--config")]

    def define(fv):
        if is_file:
            if not os.path.exists(name.split(":")[0]):
                raise UsageError(f"config file {name!r} not found; pass a preset name "
                                 f"({', '.join(cfg_mod.PRESETS)}) or an existing .py file.")
            config_flags.DEFINE_config_file("config", name, flag_values=fv, sys_argv=argv)
        else:
            try:
                cd = cfg_mod.get_config(name)
            except cfg_mod.ConfigError as e:
                raise UsageError(str(e)) from None
            config_flags.DEFINE_config_dict("config", cd, flag_values=fv, sys_argv=argv)
        flags.DEFINE_string("workdir", None, "Directory for the manifest, checkpoints and results.", flag_values=fv)
        flags.DEFINE_bool("extend", False, "Add the config's new members (more widths, seeds, "
                          "...) to the sweep in --workdir; finished members are kept as they are.",
                          flag_values=fv)
        _define_runtime_flags(fv)

    fv = _parse(argv, define)
    try:
        config = cfg_mod.from_config_dict(fv.config)
    except cfg_mod.ConfigError as e:
        raise UsageError(str(e)) from None
    if not fv.workdir:
        raise UsageError("--workdir is required, e.g. --workdir=runs/quick.")
    return config, fv.workdir, fv


def _define_runtime_flags(fv) -> None:
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with its "
                      "auto-detection (SLURM, TPU pods, Open MPI).", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for an explicit "
                        "multi-process start.", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit start).", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's id (explicit start).", flag_values=fv)
    flags.DEFINE_list("local_device_ids", None, "Local devices this process uses.", flag_values=fv)
    flags.DEFINE_string("shard", None, "I/N: run only share I of N of the packs (job arrays).", flag_values=fv)
    flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices (testing sharding on CPU).", flag_values=fv)
    flags.DEFINE_string("compilation_cache", _default_cache(), "Directory of JAX's persistent "
                        "compilation cache, so that resumed and repeated runs skip recompiling "
                        "(env NTKBENCH_COMPILATION_CACHE; 'none' disables; multi-process runs use "
                        "it only when one of the two is given).", flag_values=fv)


def _default_cache() -> str:
    env = os.environ.get("NTKBENCH_COMPILATION_CACHE")
    if env is not None:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ntkbench", "xla")


def _init_runtime(fv):
    """JAX options, the distributed runtime and the mesh (only the CLI does this)."""
    import jax
    import numpy as np

    if fv.num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", fv.num_cpu_devices)
    explicit = fv.coordinator_address is not None
    # Multi-process runs use the cache only when asked: a process that finds an entry its peer
    # does not races ahead, and CPU collectives (gloo) give up after waiting 30 s.
    asked = fv["compilation_cache"].present or "NTKBENCH_COMPILATION_CACHE" in os.environ
    if (fv.compilation_cache and fv.compilation_cache.lower() != "none"
            and (asked or not (explicit or fv.distributed))):
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(fv.compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if explicit and (fv.num_processes is None or fv.process_id is None):
        raise UsageError("--coordinator_address needs --num_processes and --process_id.")
    if explicit or fv.distributed:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        if (explicit and (fv.num_processes or 1) > 1 and platforms in ("", "cpu")) or platforms == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        if explicit:
            kwargs = dict(coordinator_address=fv.coordinator_address,
                          num_processes=fv.num_processes, process_id=fv.process_id)
        if fv.local_device_ids:
            kwargs["local_device_ids"] = [int(i) for i in fv.local_device_ids]
        jax.distributed.initialize(**kwargs)
        if jax.default_backend() == "cpu" and jax.process_count() > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    devices = jax.devices()
    if len(devices) == 1:
        return None
    from jax.sharding import Mesh

    return Mesh(np.asarray(devices), ("members",))


class _StopFlag:
    """Set by SIGTERM/SIGINT; the sweep polls it between chunks and checkpoints."""

    def __init__(self):
        import signal

        self.set = False
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if not self.set:
            logging.warning("signal %d: stopping at the next chunk boundary with a checkpoint "
                            "(exit status %d = resumable)", signum, EXIT_INTERRUPTED)
        self.set, self.signal = True, signum

    def __call__(self) -> bool:
        return self.set


def cmd_run(argv: list[str]) -> int:
    config, workdir, fv = _load_config(argv)
    from ntkbench import _sweep, results

    try:
        _sweep.parse_shard(fv.shard)
    except _sweep.ConfigError as e:
        return _fail(str(e))
    mesh = _init_runtime(fv)
    from ntkbench import recording
    from ntkbench._datasets import DatasetError
    from ntkbench._results import ResultsError

    try:
        outcome = _sweep.run_sweep(config, workdir, log=logging.info,
                                   make_record=recording.make_record, mesh=mesh, shard=fv.shard,
                                   should_stop=_StopFlag(), extend=fv.extend)
    except _sweep.Interrupted as e:
        print(f"ntkbench: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DatasetError, _sweep.WorkdirError, ResultsError) as e:
        return _fail(str(e).splitlines()[0])
    except _sweep.ConfigError as e:
        return _fail(str(e))
    import jax

    if jax.process_index() != 0:
        return 0
    ds = results.load(workdir, summaries=False)
    print(_sweep.summary_table(ds))
    rate = (f" ({outcome.member_epochs / max(outcome.seconds, 1e-9):,.0f}/s)"
            if outcome.member_epochs else " (everything was already done)")
    print(f"{outcome.member_epochs:,} member-epochs trained in {outcome.seconds:.1f}s{rate}; padding efficiency "
          f"{outcome.plan.efficiency:.1%}; results in {os.path.join(workdir, 'results')} "
          "(ntkbench.results.load)")
    return 0


def cmd_status(argv: list[str]) -> int:
    fv = _parse(argv, lambda fv: flags.DEFINE_string("workdir", None, "Sweep directory.", flag_values=fv))
    if not fv.workdir:
        raise UsageError("--workdir is required.")
    from ntkbench import _sweep

    manifest = _sweep.read_manifest(fv.workdir)
    if manifest is None:
        return _fail(f"{fv.workdir!r} holds no ntkbench sweep.")
    print(_sweep.status_table(fv.workdir, manifest))
    return 0


def cmd_report(argv: list[str]) -> int:
    fv = _parse(argv, lambda fv: (flags.DEFINE_string("workdir", None, "Sweep directory.", flag_values=fv),
                                  flags.DEFINE_string("out", None, "Output dir (default WORKDIR/report).", flag_values=fv)))
    if not fv.workdir:
        raise UsageError("--workdir is required.")
    from ntkbench import report, results

    try:
        ds = results.load(fv.workdir)
    except FileNotFoundError as e:
        return _fail(str(e))
    out = fv.out or os.path.join(fv.workdir, "report")
    paths = report.write_report(ds, out)
    for p in paths:
        print(p)
    return 0


def cmd_profile(argv: list[str]) -> int:
    def define(fv):
        flags.DEFINE_list("widths", ["64", "256", "1024"], "MLP widths to profile.", flag_values=fv)
        flags.DEFINE_list("methods", ["jacobian", "implicit", "structured"], "NTK methods.", flag_values=fv)
        flags.DEFINE_integer("n", 128, "Samples in the NTK.", flag_values=fv)
        flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).", flag_values=fv)
        flags.DEFINE_integer("pack_size", 20, "Members in the pack timing.", flag_values=fv)
        flags.DEFINE_bool("compare_neural_tangents", False, "Also time neural-tangents if installed.", flag_values=fv)
        flags.DEFINE_integer("seed", 0, "PRNG seed.", flag_values=fv)
        flags.DEFINE_list("devices", None, "Instead of the method table, profile a pack on the "
                          "first k devices for each k (e.g. 1,2,4,8); on CPU fakes max(k) devices.",
                          flag_values=fv)

    fv = _parse(argv, define)
    import jax

    if fv.devices:
        try:
            counts = sorted({int(k) for k in fv.devices})
        except ValueError:
            raise UsageError(f"--devices={','.join(fv.devices)} must be integers, e.g. 1,2,4,8.") from None
        if os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu"):
            try:
                jax.config.update("jax_num_cpu_devices", max(counts))
            except RuntimeError:
                pass  # JAX already started (e.g. under tests): use the devices there are
        from ntkbench import _scaleout

        devices = jax.devices()
        print(f"backend {jax.default_backend()}, {len(devices)} devices; pack of 8 MLPs "
              "(width 128, depth 3, 100 digits), NTKs on 64 samples")
        print(_scaleout.format_device_table(_scaleout.profile_devices(counts, devices)))
        return 0

    from ntkbench import profiling

    try:
        widths = tuple(int(w) for w in fv.widths)
    except ValueError:
        raise UsageError(f"--widths={','.join(fv.widths)} must be integers, e.g. --widths=64,256.") from None
    rows = profiling.run_profile(widths=widths, methods=tuple(fv.methods), n=fv.n,
                                 repeats=fv.repeats, pack_size=fv.pack_size,
                                 compare_neural_tangents=fv.compare_neural_tangents,
                                 key=jax.random.key(fv.seed))
    print(profiling.format_table(rows))
    return 0


def cmd_presets(argv: list[str]) -> int:
    from ntkbench import config as cfg_mod

    for name, fn in cfg_mod.PRESETS.items():
        print(f"{name:22s} {fn.__doc__.splitlines()[0]}")
    print("\nfields (defaults of a custom config):")
    for k, v in cfg_mod.SweepConfig().to_dict().items():
        print(f"  {k} = {v!r}")
    return 0


class _OwnInfoOnly(std_logging.Filter):
    """Progress (INFO) from ntkbench only; libraries' INFO chatter (Orbax's per-save lines,
    JAX's backend probing) is dropped, their warnings and errors are kept."""

    def __init__(self):
        super().__init__()
        import ntkbench
        from ntkbench import checkpoints, kernels

        self._roots = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                            for m in (ntkbench, checkpoints, kernels, sys.modules[__name__]))

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or os.path.abspath(record.pathname).startswith(self._roots)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = argv[1] if len(argv) > 1 else ""
        return _fail(f"unknown command {given!r}; use one of: {', '.join(COMMANDS)} "
                     "(e.g. `ntkbench run --config=quick --workdir=runs/quick`).")
    command, rest = argv[1], [f"ntkbench {argv[1]}"] + argv[2:]
    if not flags.FLAGS.is_parsed():  # absl logging reads its own flags; we parse ours per command
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    try:
        return {"run": cmd_run, "status": cmd_status, "report": cmd_report,
                "profile": cmd_profile, "presets": cmd_presets}[command](rest)
    except UsageError as e:
        return _fail(str(e))


def run_main() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run_main()
