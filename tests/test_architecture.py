"""The layout's boundaries (docs/architecture.md): one-way imports between folders and between
the library's groups, no private name across a group line, the command line and the examples on
the public API, and a public API that resolves name by name."""

import importlib.util
import pathlib
import subprocess
import sys

import ntkbench

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph",
                                                  ROOT / "benchmarks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_rules_hold():
    violations = _import_graph().check()
    assert not violations, "\n".join(violations)


def test_groups_form_a_chain_without_cycles():
    graph = _import_graph()
    order = {g: i for i, g in enumerate(graph.GROUPS)}
    for (a, b) in graph.group_edges():
        if a in order and b in order:
            assert order[b] < order[a], f"{a} imports {b}"
    on_disk = {p.parent.name for p in (ROOT / "ntkbench").glob("_*/__init__.py")}
    assert on_disk == set(graph.GROUPS), "every group is in the import order, and only groups"


def test_every_public_name_resolves():
    for name in ntkbench.__all__:
        assert getattr(ntkbench, name) is not None, name


def test_the_cli_answers_help_and_presets_without_jax():
    code = ("import sys\nfrom ntkbench.launchers.cli import main\n"
            "for argv in (['--help'], ['--version'], ['run', '--help'], ['presets'],"
            " ['status', '--help'], ['report', '--help'], ['run', '--log_format=plain', '--help'],"
            " ['run', '--config=quick', '--config.lr=abc', '--workdir=/nonexistent/w']):\n"
            "    main(['ntkbench', *argv])\n"
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)\n"
            "slow = {'matplotlib', 'tensorboardX', 'tqdm', 'numpy'} & set(sys.modules)\n"
            "assert not slow, slow\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
