"""The `ntkbench` command line.

    ntkbench run --config=quick --workdir=runs/quick [--config.FIELD=VALUE ...]
    ntkbench status --workdir=runs/quick
    ntkbench report --workdir=runs/quick [--workdir=runs/other ...]
    ntkbench verify --workdir=runs/quick
    ntkbench calibrate --config=quick
    ntkbench profile [--widths=64,256,1024] [--devices=1,2,4,8] [--config=FILE]
    ntkbench coordcheck --config=quick --config.parametrization='("standard","mup")' 
    ntkbench presets
    ntkbench --version

`--config` takes a preset name (`ntkbench presets` lists them) or a Python file whose
`get_config()` returns an `ml_collections.ConfigDict` (and that may define `model_fn`, see
docs/models.md); any field can be overridden with `--config.FIELD=VALUE`. Only this module (and
the other launchers) parses flags, sets JAX options, touches `jax.distributed` and builds meshes;
the library receives a frozen `SweepConfig` and a `Runtime`.

Messages on a terminal are plain lines; elsewhere (log files, SLURM, CI) they keep absl's
prefix (`I1205 13:00:47.154635 139872938081152 runner.py:56] ...`: severity, time, thread,
source), which `--log_format=plain|absl` (any command) chooses explicitly.

Exit statuses (docs/errors.md): 0 done; 2 bad input; 65 stored data inconsistent or damaged;
70 hung (the watchdog); 74 a file could not be written or read; 75 interrupted, resumable.
Every failure is one line on stderr, `ntkbench: error: ...`. SIGINT (Ctrl-C), SIGTERM and SIGHUP
end any command with one line and status 75 from the moment `main` starts (`run` then stops at
its next chunk boundary with a checkpoint, `ntkbench.launchers._watch`).
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import signal
import sys
from collections.abc import Sequence

from absl import flags, logging

import ntkbench
from ntkbench.launchers._config_file import HelpRequested, UsageError

COMMANDS = ("run", "status", "report", "verify", "calibrate", "profile", "coordcheck",
            "presets")
USAGE = ("usage: ntkbench COMMAND [--flag=value ...]   (`ntkbench COMMAND --help` lists its flags)\n"
         + __doc__.split("\n\n")[1] + "\n\n--log_format=auto|plain|absl (any command): "
         "messages as plain lines (auto: on a terminal) or with absl's prefix of severity, "
         "time and source (auto: elsewhere, e.g. log files)." + "\n\nExit statuses: 0 done, 2 bad input, 65 stored data "
         "inconsistent or damaged, 70 hung, 74 a file could not be written, 75 interrupted "
         "(rerun to resume).")


def _fail(message: str, code: int = ntkbench.ExitStatus.BAD_INPUT) -> int:
    print(f"ntkbench: error: {message}", file=sys.stderr, flush=True)
    return code


class _Signal(KeyboardInterrupt):
    """A SIGINT, SIGTERM or SIGHUP received while a command is not in a sweep's training loop
    (which installs its own handlers): the command ends with one line and status 75."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signal(signum, frame):
    del frame
    raise _Signal(signum)


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _OwnInfoOnly(std_logging.Filter):
    """Progress (INFO) from ntkbench only; libraries' INFO chatter (Orbax's per-save lines,
    JAX's backend probing) is dropped, their warnings and errors are kept."""

    def __init__(self):
        super().__init__()
        # Where ntkbench's packages live, found without importing them (which would start JAX).
        self._roots = tuple(
            os.path.abspath(path) + os.sep
            for name in ("ntkbench", "ntkbench.kernels", "ntkbench.checkpoints",
                         "ntkbench.launchers")
            for path in importlib.util.find_spec(name).submodule_search_locations)

    def filter(self, record: std_logging.LogRecord) -> bool:
        return (record.levelno >= std_logging.WARNING
                or os.path.abspath(record.pathname).startswith(self._roots))


class _Plain(std_logging.Formatter):
    """A message as a person reads it: the text, and the severity when it is not INFO."""

    def format(self, record: std_logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno == std_logging.INFO else f"{record.levelname.lower()}: {text}"


def _log_format(argv: list[str]) -> tuple[str, list[str]]:
    """`--log_format=VALUE` (anywhere in `argv`) and `argv` without it."""
    value, rest = "auto", []
    for a in argv:
        if a.startswith("--log_format="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    if value not in ("auto", "plain", "absl"):
        raise UsageError(f"--log_format={value}: use auto, plain or absl.")
    if value == "auto":
        value = "plain" if sys.stderr.isatty() else "absl"
    return value, rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        log_format, argv = _log_format(argv)
    except UsageError as e:
        return _fail(str(e))
    if len(argv) >= 2 and argv[1] in ("--help", "-h", "help"):
        print(USAGE)
        return 0
    if len(argv) >= 2 and argv[1] in ("--version", "-V", "version"):
        print(f"ntkbench {ntkbench.__version__}")  # the installed distribution's version
        return 0
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = argv[1] if len(argv) > 1 else ""
        return _fail(f"unknown command {given!r}; use one of: {', '.join(COMMANDS)} "
                     "(e.g. `ntkbench run --config=quick --workdir=runs/quick`).")
    command, rest = argv[1], [f"ntkbench {argv[1]}"] + argv[2:]
    previous = {}
    try:
        for sig in _SIGNALS:
            previous[sig] = signal.signal(sig, _raise_signal)
    except ValueError:  # not the main thread (an embedding caller): its handlers stay
        pass
    try:
        return _command(command, rest, log_format)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _command(command: str, rest: list[str], log_format: str) -> int:
    if not flags.FLAGS.is_parsed():  # absl logging reads its own flags; we parse ours per command
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    logging.get_absl_handler().setFormatter(_Plain() if log_format == "plain"
                                            else logging.PythonFormatter())
    try:
        # Imported after the answers that need none of it, and inside the try: a signal that
        # arrives while it imports is an interruption like any other.
        from ntkbench.launchers import _commands

        return getattr(_commands, f"cmd_{command}")(rest)
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal before `run` trains (nothing lost)
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"ntkbench: interrupted by {name} (signal {int(signum)}) before `ntkbench "
              f"{command}` finished; nothing stored was changed by it: rerun the same command.",
              file=sys.stderr, flush=True)
        return ntkbench.ExitStatus.INTERRUPTED
    except HelpRequested as e:
        print(e)
        return 0
    except UsageError as e:
        return _fail(str(e))
    except ntkbench.Interrupted as e:  # not an error: the run stopped where it was asked to
        print(f"ntkbench: {e}", file=sys.stderr, flush=True)
        return e.exit_status
    except ntkbench.NtkbenchError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if e.option:
            message += f" (on the command line: pass --{e.option})"
        return _fail(message, e.exit_status)
    except OSError as e:  # a file a command reads or writes (e.g. a report on a read-only disk)
        error = ntkbench.StorageError.of(e.filename or "a file", e, "access")
        return _fail(str(error), error.exit_status)


def run_main() -> None:
    """Console-script entry point."""
    status = main()
    # The run is over and its status decided: a late SIGTERM/SIGINT (e.g. the second of two
    # sent just as the run stopped at a chunk boundary) must not turn status 75 into a death
    # by signal while the interpreter shuts down.
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    run_main()
