"""Test setup: 4 fake CPU devices (multi-device code runs on CPU) and explicit keys.

float64 references use the `jax.enable_x64(True)` context inside the tests that need them, so the
rest of the suite runs in the float32 a user gets by default.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture
def key():
    return jax.random.key(0)
