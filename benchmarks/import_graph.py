"""The project's import graph: every module's size and the project modules it imports.

    python benchmarks/import_graph.py

For each module of `ntkbench/`, `kernels/`, `checkpoints/` and `launchers/` (import names from
`pyproject.toml`'s `[tool.setuptools.package-dir]`) it prints the line count and the project
modules it imports, found by parsing the source with `ast` (nothing is imported, so it runs
without JAX). Imports inside functions count as much as top-level ones.

It then checks the one-way rule of the package layout and exits 1 on a violation:
`ntkbench.kernels` and `ntkbench.checkpoints` import nothing of ours outside themselves, the
library imports no launcher, and nothing imports `ntkbench.launchers` except the launchers.
"""

from __future__ import annotations

import ast
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


def package_dirs() -> dict[str, str]:
    """`{folder: import name}` of the four folders, from `pyproject.toml`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    by_package = config["tool"]["setuptools"]["package-dir"]
    return {folder: package for package, folder in by_package.items() if folder in FOLDERS}


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


def imports_of(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules `module` imports (itself excluded)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent if is_package else parent[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            # `from pkg import name`: name may be a module of pkg, else an attribute of it.
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for target in targets:
            hit = _resolve(target, known)
            if hit is not None and hit != module:
                found.add(hit)
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"{parts[0]}.{parts[1]}" in ALLOWED else parts[0]


def main() -> int:
    mods = modules()
    known = set(mods)
    violations = []
    edges = 0
    for module, path in mods.items():
        lines = len(path.read_text().splitlines())
        deps = sorted(imports_of(module, path, known))
        edges += len(deps)
        print(f"{lines:5d}  {module}")
        if deps:
            print(f"       -> {', '.join(deps)}")
        for dep in deps:
            if layer(dep) not in ALLOWED[layer(module)]:
                violations.append(f"{module} imports {dep} ({layer(module)} may import only "
                                  f"{', '.join(sorted(ALLOWED[layer(module)]))})")
    print(f"\n{len(mods)} modules, {edges} imports between them.")
    if violations:
        print("One-way rule VIOLATED:")
        for v in violations:
            print(f"  {v}")
        return 1
    print("One-way rule holds: kernels and checkpoints import nothing else of ours, the library "
          "imports no launcher.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
