"""Large NTKs sharded by rows over devices, and pack chunks (NTK records on) over devices."""

import jax
import numpy as np
from jax.sharding import Mesh

from ntkbench import kernels
from ntkbench import format_device_table, profile_devices
from ntkbench._profile import sharded_ntk
from ntkbench.models import MLP


def test_sharded_ntk_equals_unsharded():
    mesh = Mesh(np.asarray(jax.devices()), ("rows",))
    model = MLP(5, 3, 16, 2, key=jax.random.key(0), pad_to=24)
    x = jax.random.normal(jax.random.key(1), (10, 5))  # 10 rows on 4 devices: padded to 12
    k = sharded_ntk(model, x, mesh, block_size=2)
    assert k.shape == (10, 10, 3, 3)
    np.testing.assert_allclose(k, kernels.ntk(model, x), rtol=2e-5, atol=1e-6)


def test_profile_devices_times_chunks_with_ntk_records():
    rows, what = profile_devices([1, 2, 4], jax.devices(), preset="smoke", width=8, members=4,
                                 epochs=4, ntk_every=2, repeats=1)
    assert [r.devices for r in rows] == [1, 2, 4]
    assert "NTK record every 2" in what
    assert all(r.member_epochs_per_s > 0 and r.records_per_s > 0 for r in rows)
    table = format_device_table(rows)
    assert "member-epochs/s" in table and "NTK records/s" in table
