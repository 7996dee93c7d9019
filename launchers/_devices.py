"""JAX options, the distributed runtime and the mesh of a command (only launchers do this)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from absl import flags

import ntkbench
from ntkbench.launchers._config_file import UsageError


def define_runtime_flags(fv) -> None:
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with its "
                      "auto-detection (SLURM, TPU pods, Open MPI).", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for an explicit "
                        "multi-process start.", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit start).",
                         flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's id (explicit start).",
                         flag_values=fv)
    flags.DEFINE_list("local_device_ids", None, "Local devices this process uses.",
                      flag_values=fv)
    flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices (testing sharding on CPU).",
                         flag_values=fv)
    flags.DEFINE_enum("sequential_members", "auto", ["auto", "true", "false"],
                      "Run each device's members one at a time in NTK records: auto = on "
                      "CPUs (batched LAPACK calls on several CPU devices of one process can "
                      "deadlock), batched on accelerators.", flag_values=fv)
    flags.DEFINE_string("compilation_cache", _default_cache(), "Directory of JAX's persistent "
                        "compilation cache, so that resumed and repeated runs skip recompiling "
                        "(env NTKBENCH_COMPILATION_CACHE; 'none' disables; multi-process runs "
                        "use it only when one of the two is given).", flag_values=fv)


def _default_cache() -> str:
    env = os.environ.get("NTKBENCH_COMPILATION_CACHE")
    if env is not None:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ntkbench", "xla")


def check_xla_flags(environ=None) -> None:
    """Refuse `XLA_FLAGS` that XLA cannot parse, with one line, before JAX starts: XLA itself
    ends the process on an unknown or malformed flag (status 1, its own log line), so the flags
    are tried first in a short child process (only when `XLA_FLAGS` is set; about a second).

    Raises:
        UsageError: naming the flag XLA refused.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("XLA_FLAGS", "").strip()
    if not value:
        return
    env = {**environ, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return  # cannot tell: XLA will say it itself
    if proc.returncode == 0:
        return
    found = re.findall(r"(Unknown flags? in XLA_FLAGS: .*|Couldn't interpret value .*)",
                       proc.stderr)
    if not found:
        return  # another failure: not the flags'
    raise UsageError(f"XLA_FLAGS={value!r} is refused by XLA ({found[0].strip().rstrip('.')}); "
                     "correct or remove that flag (`XLA_FLAGS= ntkbench ...` runs without "
                     "any).")


def init_runtime(fv) -> ntkbench.Runtime:
    """Configure JAX from the flags, start the distributed runtime, and describe the devices."""
    if fv.num_cpu_devices is not None and fv.num_cpu_devices < 1:
        raise UsageError(f"--num_cpu_devices={fv.num_cpu_devices} must be at least 1 (fake CPU "
                         "devices to test sharding), e.g. --num_cpu_devices=4.")
    check_xla_flags()
    import jax

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
        if ((explicit and (fv.num_processes or 1) > 1 and platforms in ("", "cpu"))
                or platforms == "cpu"):
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
    sequential = {"auto": None, "true": True, "false": False}[fv.sequential_members]
    return ntkbench.Runtime.on(jax.devices(), sequential=sequential)
