"""Where a pack's arrays live: on one device, or sharded over the member axis of a mesh.

A pack is padded with masked copies of its last member to a multiple of the device count; each
process writes exactly the (real) members whose shards it holds.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


class Placement:
    """Puts pack arrays on `mesh` (or leaves them on the default device when it is None).

    Args:
        mesh: a 1-D mesh whose only axis shards members, or None.
    """

    def __init__(self, mesh=None):
        self.mesh = mesh
        self.num_devices = 1 if mesh is None else int(mesh.devices.size)

    def slots(self, num_members: int) -> int:
        """Members a pack of `num_members` runs with (a multiple of the device count)."""
        return math.ceil(num_members / self.num_devices) * self.num_devices

    def _put(self, tree, spec):
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, spec)

        def put(x):
            if not eqx.is_array(x):
                return x
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: their data
                impl = jax.random.key_impl(x)
                data = put(jax.random.key_data(x))
                return jax.random.wrap_key_data(data, impl=impl)
            host = np.asarray(jax.device_get(x))
            return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

        return jax.tree.map(put, tree)

    def members(self, tree):
        """Every array leaf sharded along its leading (member) axis; scalars replicated."""
        if self.mesh is None:
            return tree
        axis = self.mesh.axis_names[0]
        arrays, static = eqx.partition(tree, eqx.is_array)
        placed = jax.tree.map(lambda x: self._put(x, P() if x.ndim == 0 else P(axis)), arrays)
        return eqx.combine(placed, static)

    def replicated(self, tree):
        return self._put(tree, P())

    def data(self, data, shared: tuple[str, ...]):
        """A `PackData`: the `shared` fields replicated, the others sharded by member."""
        return data._replace(**{k: self.replicated(getattr(data, k)) for k in shared},
                             **{k: self.members(getattr(data, k))
                                for k in data._fields if k not in shared})

    @staticmethod
    def local_rows(tree, axis: int, num_real: int) -> list[tuple[range, object]]:
        """`[(rows, host values)]` of the member rows this process holds, padding excluded.

        Each member lives on one device (arrays are sharded over members, or unsharded), so
        every process writes exactly the members whose shards it holds.
        """
        leaves, treedef = jax.tree.flatten(tree)
        if not leaves:
            return []
        blocks = set()
        for shard in leaves[0].addressable_shards:
            sl = shard.index[axis] if len(shard.index) > axis else slice(None)
            start, stop, _ = sl.indices(leaves[0].shape[axis])
            blocks.add((start, stop))
        out = []
        for start, stop in sorted(blocks):
            stop = min(stop, num_real)
            if start >= stop:
                continue
            parts = []
            for leaf in leaves:
                for shard in leaf.addressable_shards:
                    sl = shard.index[axis] if len(shard.index) > axis else slice(None)
                    s0, s1, _ = sl.indices(leaf.shape[axis])
                    if s0 <= start and stop <= s1:
                        data = np.asarray(shard.data)
                        idx = [slice(None)] * data.ndim
                        idx[axis] = slice(start - s0, stop - s0)
                        parts.append(data[tuple(idx)])
                        break
            out.append((range(start, stop), jax.tree.unflatten(treedef, parts)))
        return out
