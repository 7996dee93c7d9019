"""The command line on a terminal, in an environment holding only what pyproject.toml declares.

Piped output (CI, SLURM logs) prints log lines; a terminal gets a live progress bar, drawn by
code that only a terminal reaches. Both tests run as if ntkbench had been installed into a fresh
virtual environment from pyproject.toml alone: imports of anything the declared dependencies do
not provide fail as they would there (tests/_declared.py).
"""

from __future__ import annotations

import ast
import fcntl
import os
import pathlib
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from _declared import allowed_modules, guard_source

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("ntkbench", "kernels", "launchers", "checkpoints")


def _optional(node: ast.AST, parents: dict) -> bool:
    """Whether an import sits in a `try:` whose handler catches ImportError (an optional
    dependency, e.g. a writer used only where its package is installed)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for h in parent.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else h.type.elts
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
                       for n in names):
                    return True
        node = parent
    return False


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if not _optional(node, parents):
            for name in names:
                yield name.partition(".")[0], node.lineno


def test_every_import_is_declared():
    allowed = allowed_modules()
    missing = [f"{path.relative_to(ROOT)}:{line} imports {name}"
               for folder in SOURCES for path in sorted((ROOT / folder).rglob("*.py"))
               for name, line in _imports(path) if name not in allowed]
    assert not missing, ("undeclared imports (add the distribution to pyproject.toml's "
                         "dependencies): " + "; ".join(missing))


def _on_terminal(argv: list[str], cwd, timeout: float, columns: int = 120) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal: `(status, screen text)`.
    `columns=0` leaves the terminal as a bare pseudo-terminal is: no size (0 x 0)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns:  # a terminal of 40 x columns
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        env["COLUMNS"] = str(columns)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                            close_fds=True, env={**env, "TERM": "xterm"})
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no exit within {timeout} s; screen so far:\n{out.decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process is gone
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(), out.decode(errors="replace")


def _cli(*args: str) -> list[str]:
    code = (guard_source() + "\nimport sys\nfrom ntkbench.launchers.cli import run_main\n"
            f"sys.argv = ['ntkbench', *{list(args)!r}]\nrun_main()\n")
    return [sys.executable, "-c", code]


def test_run_on_a_terminal_draws_the_bar(tmp_path):
    status, screen = _on_terminal(
        _cli("run", "--config=smoke", f"--workdir={tmp_path / 'w'}", "--config.epochs=20"),
        tmp_path, timeout=600)
    assert status == 0, screen
    assert "Traceback" not in screen and "ModuleNotFoundError" not in screen, screen
    assert "\r" in screen and "20/20 epochs" in screen, screen  # a bar redrawn in place
    assert "[1/2] pack 0" in screen and "[2/2] pack 1" in screen, screen  # one numbering
    assert "building and compiling" in screen, screen  # compiling is shown, not a blank
    assert "member-epochs/s, ETA" in screen, screen
    # Plain messages on a terminal: no absl prefix ("I1205 13:00:47.154635 1398... file.py:56]").
    assert not re.search(r"^[IWE]\d{4} \d\d:\d\d", screen, re.MULTILINE), screen
    assert "member-epochs trained" in screen, screen


def test_a_terminal_that_reports_no_size_still_gets_a_bar(tmp_path):
    """`script` started from a non-terminal, and some container ttys, report 0 columns; tqdm
    then draws an empty bar (seen: a fresh venv's quick run under `script`): 80 columns then."""
    status, screen = _on_terminal(
        _cli("run", "--config=smoke", f"--workdir={tmp_path / 'w'}", "--config.epochs=10",
             "--config.widths=(4,)"), tmp_path, timeout=600, columns=0)
    assert status == 0, screen
    assert "10/10 epochs" in screen and "[1/1] pack 0" in screen, screen
