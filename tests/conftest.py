"""Test setup: 4 fake CPU devices (multi-device code runs on CPU), explicit keys, and one
persistent compilation cache per pytest worker.

float64 references use the `jax.enable_x64(True)` context inside the tests that need them, so the
rest of the suite runs in the float32 a user gets by default.

The cache: many tests compile the same programs (the smoke sweep's packs, the quick preset's), in
this process and in the `ntkbench` subprocesses it starts. A JAX persistent cache in a temporary
folder (made by the controller, named to the workers through the environment, one subfolder per
worker) lets every later compile of a program load it instead (measured: the sharpness and SLQ sweep tests take 73 s with it warm against 168 s cold). It is
never the user's cache (`~/.cache/ntkbench/xla`): the tests neither read nor write that one. Tests
that start several processes on one sweep pass `--compilation_cache=none`, as multi-process runs
need (docs/scaling.md).
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

_CACHE_ENV = "NTKBENCH_TEST_XLA_CACHE"


def pytest_configure(config):
    if _CACHE_ENV not in os.environ:  # the controller (or a run without workers)
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="ntkbench-test-xla-")
        config._ntkbench_made_cache = os.environ[_CACHE_ENV]
    # One cache per worker (its `ntkbench` subprocesses share it). Workers that die in native
    # code (BUILD.md, "Worker crashes") did so with one cache shared by all, with one per worker
    # and with none in the worker: the cache is not the cause, and saves minutes.
    path = os.path.join(os.environ[_CACHE_ENV], os.environ.get("PYTEST_XDIST_WORKER", "main"))
    os.makedirs(path, exist_ok=True)
    os.environ["NTKBENCH_COMPILATION_CACHE"] = path  # `ntkbench` commands, in and out of process
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # as the CLI sets it


def pytest_unconfigure(config):
    made = getattr(config, "_ntkbench_made_cache", None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


@pytest.fixture
def key():
    return jax.random.key(0)
