"""Large NTKs sharded by rows over devices, and the device-count profile."""

import jax
import numpy as np
from jax.sharding import Mesh

from ntkbench import kernels
from ntkbench._scaleout import format_device_table, profile_devices, sharded_ntk
from ntkbench.models import MLP


def test_sharded_ntk_equals_unsharded():
    mesh = Mesh(np.asarray(jax.devices()), ("rows",))
    model = MLP(5, 3, 16, 2, key=jax.random.key(0), pad_to=24)
    x = jax.random.normal(jax.random.key(1), (10, 5))  # 10 rows on 4 devices: padded to 12
    k = sharded_ntk(model, x, mesh, block_size=2)
    assert k.shape == (10, 10, 3, 3)
    np.testing.assert_allclose(k, kernels.ntk(model, x), rtol=2e-5, atol=1e-6)


def test_profile_devices_runs_on_fake_devices():
    rows = profile_devices([1, 2, 4], jax.devices(), width=8, members=4, epochs=2, n_ntk=4, repeats=1)
    assert [r.devices for r in rows] == [1, 2, 4]
    assert all(r.member_epochs_per_s > 0 and r.ntks_per_s > 0 for r in rows)
    assert "member-epochs/s" in format_device_table(rows)
