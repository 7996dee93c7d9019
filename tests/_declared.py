"""Run ntkbench as if it were installed from pyproject.toml alone.

A developer's environment usually holds more than ntkbench declares (tqdm was imported for a
whole release without being declared, and only a fresh install showed it). `allowed_modules()`
is the set of top-level modules that ntkbench's declared dependencies (and theirs, recursively)
provide, plus the standard library; `guard_source()` is a snippet that, run first in a
subprocess, makes every other top-level import fail exactly as it would in a fresh virtual
environment (`ModuleNotFoundError`).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

OWN = ("ntkbench",)


def _requirements(dist: str, extras: tuple[str, ...] = ()) -> list[str]:
    out = []
    for line in md.requires(dist) or ():
        req = Requirement(line)
        env = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(e) for e in env):
            out.append(re.sub(r"[-_.]+", "-", req.name).lower())
    return out


def declared_closure(extras: tuple[str, ...] = ()) -> set[str]:
    """Normalized names of ntkbench's declared distributions and their dependencies."""
    seen: set[str] = set()
    todo = _requirements("ntkbench", extras)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_requirements(name))
        except md.PackageNotFoundError:
            pass  # a declared dependency that is missing fails the import check on its own
    return seen


def allowed_modules(extras: tuple[str, ...] = ()) -> set[str]:
    """Top-level module names importable in a fresh install of ntkbench (with `extras`)."""
    closure = declared_closure(extras)
    allowed = set(sys.stdlib_module_names) | set(OWN)
    for module, dists in md.packages_distributions().items():
        if any(re.sub(r"[-_.]+", "-", d).lower() in closure for d in dists):
            allowed.add(module)
    return allowed


def guard_source(extras: tuple[str, ...] = ()) -> str:
    """Python source that blocks imports of undeclared top-level modules in this process."""
    return f"""
import sys
_ALLOWED = {sorted(allowed_modules(extras))!r}
class _Declared:
    # Wraps a meta-path finder: undeclared top-level modules are not found, as in a fresh env.
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in _ALLOWED and top not in sys.modules and not top.startswith("_"):
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):  # find_distributions, invalidate_caches, ...
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Declared(f) for f in sys.meta_path]
"""
