"""What a checkpoint holds on disk, and the per-leaf facts its metadata records.

The names of a checkpoint's items and files and the format version (the layout is drawn in
`_checkpointer.py`'s module docstring); `describe` (key path -> shape, dtype) and the 32-bit bit
fingerprints of a state's array leaves, computed on device; and `save_metadata`, the JSON that
`save` writes beside the arrays.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE = "state"
META = "meta"
CORRUPT_DIR = "corrupt"
TMP_MARKER = ".orbax-checkpoint-tmp"
STEP_METADATA = "_CHECKPOINT_METADATA"
META_FILE = "metadata"


def is_leaf_array(x) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def is_key(dtype) -> bool:
    return jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """Order-sensitive 32-bit hash of the bits of `x` (exact integer math, any sharding).

    Each 32-bit word `w_i` (narrower dtypes are widened, 64-bit ones split) is mixed with its
    index by a bijection, so changing any one word always changes the wrap-around sum.
    """
    if is_key(x.dtype):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
        words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    words = words.reshape(-1)
    index = jnp.arange(words.size, dtype=jnp.uint32)
    h = (words ^ (index * np.uint32(0x9E3779B9))) * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return jnp.sum(h ^ (h >> np.uint32(16)), dtype=jnp.uint32)


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> jax.Array:
    """The fingerprints of all leaves as one `(len(leaves),)` uint32 array (one transfer)."""
    return jnp.stack([_leaf_fingerprint(x) for x in leaves])


def describe(tree) -> dict[str, dict[str, Any]]:
    """`{key path: {"shape", "dtype"}}` of the array (or ShapeDtypeStruct) leaves of `tree`."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        out[jax.tree_util.keystr(path)] = {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
    return out


def _device_groups(leaves) -> list[list[int]]:
    """Indices of `leaves` grouped by the set of devices they live on (None: numpy leaves)."""
    groups: dict[frozenset | None, list[int]] = {}
    for i, leaf in enumerate(leaves):
        sharding = getattr(leaf, "sharding", None)
        devices = None if sharding is None else frozenset(d.id for d in sharding.device_set)
        groups.setdefault(devices, []).append(i)
    return list(groups.values())


def _layout(leaves) -> tuple | None:
    """What a compiled fingerprint program is specialized to: every leaf's shape, dtype, weak
    type and sharding; None when a leaf is not on a device (numpy), which the jitted call handles."""
    if not all(isinstance(x, jax.Array | jax.ShapeDtypeStruct) and x.sharding is not None
               for x in leaves):
        return None
    return tuple((x.shape, x.dtype, bool(getattr(x, "weak_type", False)), x.sharding)
                 for x in leaves)


class Fingerprinter:
    """`{key path: fingerprint}` of states, with its programs compiled once per state layout.

    Compiling `_fingerprints` for a pack's state (dozens of leaves) costs about half a second
    of XLA on a CPU, ten to twenty times what running it costs; a per-call `jax.jit` cache
    would pay it on the first save of every pack, blocking training. `prepare(like)` compiles
    the program ahead of time in a background thread (compile only: nothing runs on a device,
    so no collective can interleave with the caller's programs), typically while the first
    chunk trains; later calls on states of the same layout reuse it.
    """

    def __init__(self):
        self._compiled: dict[tuple, Any] = {}
        self._thread: threading.Thread | None = None

    def prepare(self, like) -> None:
        """Starts compiling, in the background, the programs for states laid out like `like`
        (arrays or `jax.ShapeDtypeStruct`s with shardings)."""
        self.wait()
        leaves = jax.tree.leaves(like)
        layouts = [_layout([leaves[i] for i in g]) for g in _device_groups(leaves)]
        todo = [lay for lay in layouts if lay is not None and lay not in self._compiled]
        if todo:
            self._thread = threading.Thread(target=self._compile_quietly, args=(todo,),
                                            name="ntkbench-fingerprint-compile", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        """Waits for a compilation started by `prepare`."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _compile_quietly(self, layouts) -> None:
        for layout in layouts:
            try:
                self._program(layout)
            except Exception:  # the call compiles again and raises if it is real
                logger.debug("Compiling the checkpoint fingerprints ahead of time failed",
                             exc_info=True)

    def _program(self, layout: tuple):
        exe = self._compiled.get(layout)
        if exe is None:
            specs = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, weak_type=weak)
                     for shape, dtype, weak, sharding in layout]
            exe = self._compiled[layout] = _fingerprints.lower(specs).compile()
        return exe

    def __call__(self, tree) -> dict[str, int]:
        """`{key path: fingerprint}` of the array leaves of `tree`; one call per set of devices
        the leaves live on."""
        self.wait()
        paths_leaves = jax.tree_util.tree_leaves_with_path(tree)
        leaves = [x for _, x in paths_leaves]
        values: dict[int, int] = {}
        for members in _device_groups(leaves):
            group = [leaves[i] for i in members]
            layout = _layout(group)
            fn = _fingerprints if layout is None else self._program(layout)
            got = np.asarray(jax.device_get(fn(group)))
            values.update({i: int(v) for i, v in zip(members, got.tolist(), strict=True)})
        return {jax.tree_util.keystr(p): values[i] for i, (p, _) in enumerate(paths_leaves)}



def save_metadata(epoch: int, arrays, extra: Mapping[str, Any] | None,
                  fingerprint: Callable[[Any], dict[str, int]]) -> dict[str, Any]:
    """The `meta/metadata` JSON of a save of `arrays` at `epoch`, after checking that it can be
    made: `extra` JSON-serializable, and (with several processes) every leaf a global array.
    `fingerprint` computes the leaves' fingerprints (a `Fingerprinter` reuses its programs).

    Returns:
        `{"format", "epoch", "leaves": {key path: {"shape", "dtype", "fingerprint"}}, "extra"}`.
    """
    extra = {} if extra is None else dict(extra)
    try:
        json.dumps(extra, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`extra` must be JSON-serializable ({e}); convert arrays with `.tolist()` and "
            "numpy scalars with `int()`/`float()`.") from e
    if jax.process_count() > 1:
        local = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(arrays)
                 if not isinstance(x, jax.Array) or x.is_fully_addressable]
        if local:
            raise ValueError(
                f"Leaves {', '.join(local[:6])} live on this process only, so Orbax cannot "
                "save them in a multi-process run. Place every leaf on the global mesh first, "
                "e.g. `eqx.filter_shard(x, NamedSharding(mesh, P()))` for scalars and "
                "replicated arrays.")
    leaves = describe(arrays)
    for path, fp in fingerprint(arrays).items():
        leaves[path]["fingerprint"] = fp
    return {"format": FORMAT_VERSION, "epoch": epoch, "leaves": leaves, "extra": extra}
