"""The project's import graph, and the rules its boundaries keep.

    python benchmarks/import_graph.py            # every module, its size and project imports
    python benchmarks/import_graph.py --groups   # only the graph between the library's groups

Modules are read with `ast` (nothing is imported, so it runs without JAX); import names come
from `pyproject.toml`'s `[tool.setuptools.package-dir]`. `tests/test_architecture.py` runs
`check()` and fails on any violation of these rules:

1. One way between the folders: `ntkbench.kernels` and `ntkbench.checkpoints` import nothing
   of ours outside themselves, the library imports no launcher.
2. The library's private groups (`ntkbench/_<group>/`, docs/architecture.md) import each other
   one way, in the order of `GROUPS`: a group imports only groups before it.
3. No private name crosses a group line: another group imports a group through its
   `__init__` (never `ntkbench._group.module`), and never a name starting with `_`; the same
   for `ntkbench.kernels` and `ntkbench.checkpoints` from outside them.
4. The launchers and the examples use only the public API (`ntkbench`, `ntkbench.kernels`,
   `ntkbench.models`, `ntkbench.observables`, `ntkbench.checkpoints`) and the launchers' own
   modules.
5. The library imports its own modules at the top of a module (an import inside a function
   hides an edge of this graph).
"""

from __future__ import annotations

import argparse
import ast
import collections
import functools
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ("ntkbench", "kernels", "checkpoints", "launchers")

# Which layers each layer may import (a layer: the first two components of a module's name).
ALLOWED = {
    "ntkbench.kernels": {"ntkbench.kernels"},
    "ntkbench.checkpoints": {"ntkbench.checkpoints"},
    "ntkbench": {"ntkbench", "ntkbench.kernels", "ntkbench.checkpoints"},
    "ntkbench.launchers": {"ntkbench", "ntkbench.kernels", "ntkbench.checkpoints",
                           "ntkbench.launchers"},
}
#: The library's groups along a sweep's flow; each may import only the groups before it.
GROUPS = ("_config", "_observables", "_data", "_record", "_train", "_analysis", "_workdir",
          "_store", "_sweep", "_report", "_profile")
#: Public modules of the library: any group may import them; they import only groups.
PUBLIC = ("ntkbench", "ntkbench.kernels", "ntkbench.models", "ntkbench.observables",
          "ntkbench.parametrization", "ntkbench.checkpoints")


def package_dirs() -> dict[str, str]:
    """`{folder: import name}` of the four folders, from `pyproject.toml`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    by_package = config["tool"]["setuptools"]["package-dir"]
    return {folder: package for package, folder in by_package.items() if folder in FOLDERS}


@functools.cache
def modules() -> dict[str, pathlib.Path]:
    """`{module name: path}` of every `.py` file in the four folders."""
    out = {}
    for folder, package in sorted(package_dirs().items()):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest project module that `name` (a dotted import target) is or lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


class Import:
    """One import statement of a project module: its target modules and the names it takes."""

    def __init__(self, node, module: str, is_package: bool, known: set[str], nested: bool):
        self.line, self.nested = node.lineno, nested
        if isinstance(node, ast.Import):
            self.base, self.names = None, ()
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent if is_package else parent[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            self.base, self.names = base, tuple(alias.name for alias in node.names)
            # `from pkg import name`: name may be a module of pkg, else an attribute of it (a
            # name the package exports in `__all__` is the attribute, even where a module of
            # the same name exists).
            exported = _exports(base, known)
            targets = [base if alias.name in exported else f"{base}.{alias.name}"
                       for alias in node.names] or [base]
        self.targets = {hit for t in targets
                        if (hit := _resolve(t, known)) is not None and hit != module}


def _exports(package: str, known: set[str]) -> set[str]:
    """The names a project package lists in its `__all__` (empty for a module)."""
    path = modules().get(package) if package in known else None
    if path is None or path.name != "__init__.py":
        return set()
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
                and isinstance(node.value, (ast.List, ast.Tuple))):
            return {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return set()


def imports(module: str, path: pathlib.Path, known: set[str]) -> list[Import]:
    """Every import of project modules in `module`, marking those inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imp = Import(node, module, path.name == "__init__.py", known, id(node) in nested)
            if imp.targets:
                out.append(imp)
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"{parts[0]}.{parts[1]}" in ALLOWED else parts[0]


def group(module: str) -> str | None:
    """The library group of `module` (`_train`, ...), `"public"` for the public modules of the
    library, None outside the library."""
    parts = module.split(".")
    if layer(module) != "ntkbench":
        return None
    if len(parts) > 1 and parts[1] in GROUPS:
        return parts[1]
    return "public"


def _public_names() -> set[str]:
    """The names the public API lists (`ntkbench/__init__.pyi`)."""
    tree = ast.parse((ROOT / "ntkbench" / "__init__.pyi").read_text())
    return {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            for a in n.names}


def check() -> list[str]:
    """Every violation of the module docstring's rules, one line each (empty: all hold)."""
    mods = modules()
    known = dict(mods)
    public_names = _public_names()
    out = []
    for module, path in mods.items():
        here = group(module)
        for imp in imports(module, path, known):
            for dep in sorted(imp.targets):
                where = f"{path.relative_to(ROOT)}:{imp.line}"
                if layer(dep) not in ALLOWED[layer(module)]:
                    out.append(f"{where}: {module} imports {dep} (rule 1: {layer(module)} may "
                               f"import only {', '.join(sorted(ALLOWED[layer(module)]))})")
                there = group(dep)
                if (layer(dep) in ("ntkbench.kernels", "ntkbench.checkpoints")
                        and layer(module) != layer(dep) and dep != layer(dep)):
                    out.append(f"{where}: {module} imports {dep}, a private module of "
                               f"{layer(dep)}; import from {layer(dep)} (rule 3)")
                if layer(module) == "ntkbench.launchers":
                    if there is not None and dep not in PUBLIC:
                        out.append(f"{where}: the launcher {module} imports {dep} (rule 4: "
                                   "use the public API)")
                    elif dep == "ntkbench" and imp.base == "ntkbench":
                        bad = [n for n in imp.names if n not in public_names
                               and f"ntkbench.{n}" not in PUBLIC]
                        if bad:
                            out.append(f"{where}: {module} imports {', '.join(bad)} from "
                                       "ntkbench, which the public API does not list (rule 4)")
                if here is None or there is None or here == there:
                    continue
                if here != "public" and there not in ("public",):
                    if GROUPS.index(there) > GROUPS.index(here):
                        out.append(f"{where}: {module} imports {dep}: group {here} may not "
                                   f"import {there}, which comes after it (rule 2)")
                    if dep != f"ntkbench.{there}":
                        out.append(f"{where}: {module} imports {dep}, a module inside group "
                                   f"{there}; import from ntkbench.{there} (rule 3)")
                    private = [n for n in imp.names if n.startswith("_")]
                    if private:
                        out.append(f"{where}: {module} imports private {', '.join(private)} "
                                   f"from group {there} (rule 3)")
                if imp.nested and layer(module) == "ntkbench":
                    out.append(f"{where}: {module} imports {dep} inside a function (rule 5)")
    for path in sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            for name in names:
                if name.startswith("ntkbench._") or name.startswith("ntkbench.launchers"):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: the example imports "
                               f"{name} (rule 4: use the public API)")
    return out


def group_edges() -> dict[tuple[str, str], int]:
    """`{(group, imported group): number of import statements}` inside the library."""
    mods = modules()
    known = dict(mods)
    edges: dict[tuple[str, str], int] = collections.Counter()
    for module, path in mods.items():
        here = group(module)
        if here is None:
            continue
        for imp in imports(module, path, known):
            for there in {group(d) for d in imp.targets} - {here, None}:
                edges[here, there] += 1
    return dict(edges)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", action="store_true", help="only the graph between groups")
    args = parser.parse_args()
    mods = modules()
    if args.groups:
        by_group = collections.defaultdict(list)
        for (a, b), n in sorted(group_edges().items()):
            by_group[a].append(f"{b} ({n})")
        for g in ("public", *GROUPS):
            size = sum(len(p.read_text().splitlines()) for m, p in mods.items() if group(m) == g)
            print(f"{g:13s} {size:5d} lines -> {', '.join(by_group.get(g, [])) or '-'}")
    else:
        known = dict(mods)
        for module, path in mods.items():
            deps = sorted({d for imp in imports(module, path, known) for d in imp.targets})
            print(f"{len(path.read_text().splitlines()):5d}  {module}")
            if deps:
                print(f"       -> {', '.join(deps)}")
    violations = check()
    if violations:
        print(f"\n{len(violations)} violation(s):")
        for v in violations:
            print(f"  {v}")
        return 1
    print("\nEvery rule holds (one way between folders and groups; no private name across a "
          "group line; launchers and examples on the public API; imports at the top).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
