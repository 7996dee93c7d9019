"""Test setup: 4 fake CPU devices (multi-device code runs on CPU), explicit keys, and a
persistent compilation cache per pytest worker for the `ntkbench` commands the tests start.

float64 references use the `jax.enable_x64(True)` context inside the tests that need them, so the
rest of the suite runs in the float32 a user gets by default.

The cache: many tests start `ntkbench` commands that compile the same programs (the smoke sweep's
packs, the quick preset's). They share a JAX persistent cache in a temporary folder (made by the
controller, named to the workers through the environment, one subfolder per worker), so a later
command loads a program instead of compiling it. It is never the user's cache
(`~/.cache/ntkbench/xla`). The pytest workers themselves do not use it: with the cache on inside
the long-lived workers, three full runs in a row lost a worker to a segfault or an abort inside
XLA (while compiling or loading a program; two different kernel tests and two sweep tests, never
reproduced alone), and with it off, as in the rounds before, none did. A test that calls the
command line in-process turns the cache on in its worker; it is turned off again after the test.
Tests that start several processes on one sweep pass `--compilation_cache=none`, as multi-process
runs need (docs/scaling.md).
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
    path = os.path.join(os.environ[_CACHE_ENV], os.environ.get("PYTEST_XDIST_WORKER", "main"))
    os.makedirs(path, exist_ok=True)
    os.environ["NTKBENCH_COMPILATION_CACHE"] = path  # for the `ntkbench` commands tests start


@pytest.fixture(autouse=True)
def _no_persistent_cache_in_the_worker():
    """Turn off the persistent cache that an in-process `ntkbench` command turned on."""
    yield
    if jax.config.jax_compilation_cache_dir is not None:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


def pytest_unconfigure(config):
    made = getattr(config, "_ntkbench_made_cache", None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


@pytest.fixture
def key():
    return jax.random.key(0)
