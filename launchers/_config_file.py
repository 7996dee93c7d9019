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
import re
import textwrap
import traceback

from absl import flags

from ntkbench import PRESETS, ConfigError, SweepConfig, get_config


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class HelpRequested(Exception):  # noqa: N818 - not an error: `--help` was asked for
    """`--help` on a command: the text to print (exit status 0)."""


#: SweepConfig lists its fields by topic; the first field of each topic names it in help texts.
SECTIONS = {"name": "sweep", "dataset": "data", "model": "models", "epochs": "training",
            "n_test": "NTK records", "max_packs_per_group": "run settings"}


def _value(v) -> str:
    """A field's value as it is typed on the command line: `(8,64)`, `digits`, `''`."""
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, str):
        return v if v and " " not in v else repr(v)
    return repr(v)


def format_fields(fields: dict, indent: str = "  ", width: int = 100) -> str:
    """`FIELD=VALUE` of every config field, one line per topic (`SECTIONS`), wrapped."""
    lines, topic, items = [], None, []
    label = max(len(t) for t in SECTIONS.values()) + 2

    def flush():
        if topic is not None:
            head = f"{indent}{topic + ':':<{label}}"
            lines.extend(textwrap.wrap("  ".join(items), width, initial_indent=head,
                                       subsequent_indent=" " * len(head),
                                       break_on_hyphens=False, break_long_words=False))

    for name, value in fields.items():
        if name in SECTIONS:
            flush()
            topic, items = SECTIONS[name], []
        items.append(f"{name}={_value(value)}")
    flush()
    return "\n".join(lines)


def _flag_help(flag, width: int = 100) -> str:
    if flag.boolean:
        head = f"--[no]{flag.name}"
    elif getattr(flag.parser, "enum_values", None):
        head = f"--{flag.name}={'|'.join(flag.parser.enum_values)}"
    else:
        head = f"--{flag.name}"
    text = re.sub(r"^<[^>]*>: ", "", flag.help)  # absl prefixes an enum's help with its values
    text = re.sub(r";\s*repeat this option to specify a list of values", " (repeatable)",
                  " ".join(text.split()))
    if flag.default not in (None, "", []) and not flag.boolean:
        text += f" (default: {flag.default_as_str.strip(chr(39))})"
    elif flag.boolean:
        text += f" (default: {'on' if flag.default else 'off'})"
    return head + "\n" + textwrap.fill(text, width, initial_indent="    ",
                                       subsequent_indent="    ")


def _config_help(fv, command: str) -> str:
    cd = fv["config"].value
    name = cd.get("name", "quick")
    return "\n".join([
        "--config=NAME|FILE.py",
        textwrap.fill(
            f"A preset name ({', '.join(PRESETS)}; `ntkbench presets` says what each one is; "
            "default quick), or a Python file whose get_config() returns an "
            "ml_collections.ConfigDict, e.g. ntkbench.get_config('quick') with some fields "
            "set; the file may also define model_fn to sweep your own Equinox model "
            "(docs/models.md).", 100, initial_indent="    ", subsequent_indent="    "),
        "--config.FIELD=VALUE",
        textwrap.fill(
            "Set one field of the config, e.g. --config.epochs=100 --config.widths='(8,64,512)'"
            f". The fields and their values in --config={name} (docs/configuration.md "
            "explains each; run settings never change results):", 100, initial_indent="    ", subsequent_indent="    "),
        format_fields(ordered(cd.to_dict()), indent="      ")])


def ordered(fields: dict) -> dict:
    """Config fields in SweepConfig's order (by topic), any others after them."""
    order = list(SweepConfig().to_dict())
    return {**{k: fields[k] for k in order if k in fields},
            **{k: v for k, v in fields.items() if k not in order}}


def _help(fv, command: str) -> str:
    """`COMMAND --help`: what `--config` takes and the config's fields, then the other flags."""
    has_config = "config" in fv
    usage = f"usage: {command}" + (" --config=NAME|FILE.py [--config.FIELD=VALUE ...]"
                                   if has_config else "") + " [--flag=value ...]"
    seen, blocks = set(), []
    for module_flags in fv.flags_by_module_dict().values():
        for flag in module_flags:
            if flag.name in seen or flag.name.startswith("config"):
                continue
            seen.add(flag.name)
            blocks.append(_flag_help(flag))
    parts = [usage, ""]
    if has_config:
        parts += [_config_help(fv, command), ""]
    return "\n".join(parts + (["flags:"] if blocks else []) + blocks)


def parse(argv: list[str], define) -> flags.FlagValues:
    """Parse `argv` with the flags `define(fv)` declares; stray positional arguments are bad
    input (they are usually a missing `--` or `=`)."""
    fv = flags.FlagValues()
    try:
        define(fv)
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            raise HelpRequested(_help(fv, argv[0]))
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
