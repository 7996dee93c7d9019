"""Applying a per-member function over a stacked pack of members, batched or one at a time."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
from jax import lax


def pack_map(fn: Callable, pack, *args, sequential: bool):
    """`fn(member, *args)` for every member of a stacked `pack`, stacked along a new leading axis.

    `pack` is a PyTree whose array leaves all carry a leading member axis (e.g. built with
    `eqx.filter_vmap`); `args` are shared by every member. The caller chooses how the members
    run, because the better choice depends on the device, which a kernel cannot see while it is
    traced:

    - `sequential=False`: one batched program (`eqx.filter_vmap`). On a GPU or TPU this fills
      the device; batched LAPACK calls on a CPU (e.g. `eigh`) also go through it.
    - `sequential=True`: a `lax.map` over the members, one member's intermediates alive at a
      time. On a CPU every matmul of one member already keeps the cores busy, so batching gains
      nothing and costs memory (a pack of 20 structured NTKs at width 256 holds 410 MiB of
      temporaries, one member 28 MiB); and batched LAPACK calls on several CPU devices of one
      process can deadlock (see `docs/scaling.md`).

    Both give the results of single calls (bit for bit on one device, up to float
    reassociation otherwise).

    Example:
        >>> import jax.numpy as jnp
        >>> from ntkbench import kernels
        >>> from ntkbench.models import MLP
        >>> keys = jax.random.split(jax.random.key(0), 3)
        >>> pack = eqx.filter_vmap(lambda k: MLP(4, 2, width=8, depth=1, key=k))(keys)
        >>> x = jnp.ones((5, 4))
        >>> kernels.pack_map(kernels.ntk, pack, x, sequential=True).shape
        (3, 5, 5, 2, 2)

    Args:
        fn: `(member, *args) -> PyTree of arrays`, traceable.
        pack: stacked members.
        args: arguments shared by every member (not mapped).
        sequential: run the members one at a time (True) or batched (False).

    Returns:
        The stacked outputs, leading axis the members.
    """
    if not sequential:
        return eqx.filter_vmap(lambda m: fn(m, *args))(pack)
    arrays, static = eqx.partition(pack, eqx.is_array)
    return lax.map(lambda a: fn(eqx.combine(a, static), *args), arrays)
