"""Flags of the command line, and the `--config` argument: a preset or a config file.

A config file is a Python file with `get_config()` returning an `ml_collections.ConfigDict`
(typically a preset's, with fields set); it may also define
`model_fn(width, key, *, input_shape, num_classes)` to sweep the user's own Equinox model
(docs/models.md). Whatever is wrong with a file (missing, a syntax error, `get_config` missing,
raising, or returning something else) is one line with status 2.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import traceback

from absl import flags

from ntkbench import PRESETS, ConfigError, get_config


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class HelpRequested(Exception):  # noqa: N818 - not an error: `--help` was asked for
    """`--help` on a command: the text to print (exit status 0)."""


def parse(argv: list[str], define) -> flags.FlagValues:
    """Parse `argv` with the flags `define(fv)` declares; stray positional arguments are bad
    input (they are usually a missing `--` or `=`)."""
    fv = flags.FlagValues()
    try:
        define(fv)
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            raise HelpRequested(f"usage: {argv[0]} [--flag=value ...]\n\n"
                                + fv.get_help(include_special_flags=False))
        rest = fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (AttributeError, KeyError)):
            msg = (f"unknown config field {msg.strip(chr(34)).strip(chr(39))}; "
                   "`ntkbench presets` lists the fields")
        raise UsageError(msg) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument(s) {' '.join(rest[1:])!r}; every option is a "
                         "flag, e.g. --workdir=runs/quick or --config.epochs=100.")
    return fv


def config_arg(argv: list[str], default: str | None = "quick") -> str | None:
    value = default
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _is_file(name: str) -> bool:
    return name.endswith(".py") or os.path.sep in name


def load_module(path: str):
    """Import a config file as a module; every failure is a `UsageError` of one line."""
    if not os.path.isfile(path):
        raise UsageError(f"config file {path!r} not found; pass a preset name "
                         f"({', '.join(PRESETS)}) or an existing .py file.")
    spec = importlib.util.spec_from_file_location("ntkbench_user_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"config file {path} has a syntax error at line {e.lineno}: "
                         f"{e.msg}.") from None
    except SystemExit as e:
        raise UsageError(f"config file {path} called sys.exit({e.code!r}) while importing; a "
                         "config file defines get_config() (and may define model_fn) and "
                         "leaves the process alone.") from None
    except Exception as e:  # noqa: BLE001 - whatever the user's file raises
        raise UsageError(f"config file {path} raised {type(e).__name__} while importing: "
                         f"{_where(e)}.") from None
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"config file {path} defines no get_config(); add one that returns "
                         "an ml_collections.ConfigDict (e.g. ntkbench.get_config('quick')).")
    return module


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    line = f" (line {frames[-1].lineno})" if frames else ""
    return f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{line}"


def preset_or_file(name: str):
    """`(ConfigDict, model_fn or None)` of a preset name or a config file."""
    import ml_collections

    if not _is_file(name):
        try:
            return get_config(name), None
        except ConfigError as e:
            raise UsageError(str(e)) from None
    module = load_module(name)
    try:
        cd = module.get_config()
    except SystemExit as e:
        raise UsageError(f"get_config() of {name} called sys.exit({e.code!r}); return an "
                         "ml_collections.ConfigDict instead.") from None
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"get_config() of {name} raised {type(e).__name__}: {_where(e)}."
                         ) from None
    if not isinstance(cd, ml_collections.ConfigDict):
        raise UsageError(f"get_config() of {name} returned {type(cd).__name__}, not an "
                         "ml_collections.ConfigDict; return e.g. ntkbench.get_config('quick').")
    model_fn = getattr(module, "model_fn", None)
    if model_fn is not None:
        with open(name, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        cd = cd.copy_and_resolve_references()
        with cd.unlocked():
            cd.model, cd.model_file, cd.model_digest = "custom", os.path.abspath(name), digest
    return cd, model_fn


def define_config(fv, argv: list[str]):
    """Define `--config` (and its `--config.FIELD` overrides) on `fv`; return `model_fn`."""
    from ml_collections import config_flags

    name = config_arg(argv)
    cd, model_fn = preset_or_file(name)
    config_flags.DEFINE_config_dict("config", cd, flag_values=fv, sys_argv=strip_config(argv))
    return model_fn


def strip_config(argv: list[str]) -> list[str]:
    """`argv` without `--config=NAME` (the ConfigDict flag takes only `--config.FIELD`)."""
    return [a for i, a in enumerate(argv)
            if not a.startswith("--config=") and a != "--config"
            and not (i > 0 and argv[i - 1] == "--config")]
