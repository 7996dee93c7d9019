"""Reading checkpoints back: one candidate at a time, and setting corrupt ones aside.

`try_restore` reads one checkpoint (its step metadata, its JSON, its arrays) and checks it
against the template and the saved fingerprints, agreeing every verdict across processes;
`quarantine` moves corrupt checkpoints to `corrupt/`. The two errors say why nothing could be
restored. `PackCheckpointer.restore_latest` (in `_checkpointer.py`) walks the checkpoints
newest first with these.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from ._format import (
    CORRUPT_DIR,
    META,
    META_FILE,
    STATE,
    STEP_METADATA,
    FORMAT_VERSION,
    is_key,
)

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the template `like` (other key paths, shapes or dtypes)."""


class CheckpointCorruptError(RuntimeError):
    """Every checkpoint in a directory is unreadable, so none can be restored."""


def match_template(restored: jax.Array, template) -> jax.Array:
    """Gives `restored` the template leaf's commitment and weak type, which Orbax drops.

    An uncommitted template leaf (e.g. `jnp.asarray(0)`) comes back uncommitted, so that jit
    may still place it beside arrays on a mesh; a weakly typed one comes back weakly typed, so
    that dtype promotion, and hence the resumed run, is exactly as before the interruption.
    """
    if isinstance(template, jax.Array) and not template.committed:
        if is_key(restored.dtype):
            data = jnp.asarray(jax.device_get(jax.random.key_data(restored)))
            restored = jax.random.wrap_key_data(data, impl=jax.random.key_impl(restored))
        else:
            restored = jnp.asarray(jax.device_get(restored))
    if not getattr(template, "weak_type", False) or restored.weak_type:
        return restored
    try:
        from jax._src.lax.lax import _convert_element_type
    except ImportError:  # pragma: no cover - a JAX that moved the helper
        logger.warning("Could not restore the weak type of a %s leaf; make it strongly typed "
                       "(e.g. `jnp.asarray(x, dtype)`) for exact resumption.", restored.dtype)
        return restored
    return _convert_element_type(restored, restored.dtype, weak_type=True)


def _all_processes_agree(flag: bool) -> bool:
    """True only if `flag` is True on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return flag
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.all(flags))


@contextlib.contextmanager
def _sibling_read_failures_logged(grace_s: float = 1.0):
    """Logs, rather than prints, the read failures of Orbax's sibling reads.

    Orbax reads the arrays of a checkpoint concurrently (coroutines awaiting Tensorstore
    futures) in an event loop that it closes as soon as the first read fails. That first
    failure is raised to us and reported as the reason the checkpoint is skipped. The other
    reads of the same damaged checkpoint fail too, but nobody retrieves them: Python would print
    each as a traceback ("Exception ignored in <coroutine ...>", or "Event loop is closed" when a
    Tensorstore read completes after the loop is gone). While the restore runs, and for
    `grace_s` seconds after it failed (the in-flight reads of local files end within
    milliseconds), those are logged at debug level instead. Anything else goes to the
    previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        obj, exc = unraisable.object, unraisable.exc_value
        sibling = inspect.iscoroutine(obj) and "orbax" in obj.cr_code.co_filename
        late = (obj is None and isinstance(exc, RuntimeError)
                and "Event loop is closed" in str(exc))
        if sibling or late:
            logger.debug("A further read of the same checkpoint failed: %s", exc)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                gc.collect()
                time.sleep(0.05)
        gc.collect()
        sys.unraisablehook = previous


def restore_target(leaf, path) -> jax.ShapeDtypeStruct | np.ndarray:
    if isinstance(leaf, np.ndarray):
        return leaf  # restored as a numpy array
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        raise ValueError(
            f"The template leaf at {jax.tree_util.keystr(path)} has no sharding, so there is no "
            "device to restore it to. Build `like` from jax arrays (e.g. `program.init_state(...)`"
            " placed with `eqx.filter_shard`), or give each ShapeDtypeStruct a `sharding=`."
        )
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)



def try_restore(reader: ocp.Checkpointer, step_dir: epath.Path, target, expected,
                fingerprint: Callable[[Any], dict[str, int]]) -> tuple[str | None, dict, Any]:
    """`(None, meta, arrays)`, or `(reason, {}, None)` when the checkpoint is corrupt;
    `fingerprint` computes the restored leaves' fingerprints to compare with the saved ones.

    Local reads alternate with agreements, so that every process takes the same branches
    and enters the same collectives (the fingerprints of global arrays are one).
    """
    problem, meta = None, {}
    try:
        json.loads((step_dir / STEP_METADATA).read_text())
    except Exception as e:  # noqa: BLE001 - any failure to read means "incomplete"
        problem = f"step metadata {STEP_METADATA} unreadable ({type(e).__name__}: {e})"
    if problem is None:
        try:
            meta = json.loads((step_dir / META / META_FILE).read_text())
            if not isinstance(meta.get("leaves"), dict):
                raise KeyError("leaves")
        except Exception as e:  # noqa: BLE001
            problem = f"metadata unreadable ({type(e).__name__}: {e})"
    if not _all_processes_agree(problem is None):
        return problem or "unreadable on another process", {}, None

    saved = meta["leaves"]
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{step_dir} has checkpoint format {meta.get('format')!r}, this ntkbench reads "
            f"{FORMAT_VERSION}; restore it with the ntkbench version that wrote it.")
    shapes = {k: {"shape": v.get("shape"), "dtype": v.get("dtype")} for k, v in saved.items()}
    if shapes != expected:
        diff = sorted(set(map(str, shapes.items())) ^ set(map(str, expected.items())))
        raise CheckpointMismatchError(
            f"{step_dir} was saved from a different state than `like` (leaves that differ: "
            f"{', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}). Build `like` exactly "
            "as the saved state was built (same config, pack and optimizer), or use a fresh "
            "directory for the new configuration.")

    restored = None
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        with _sibling_read_failures_logged():
            restored = reader.restore(
                step_dir / STATE,
                args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
    except Exception as e:  # noqa: BLE001
        problem = f"arrays unreadable ({type(e).__name__}: {e})"
    if not _all_processes_agree(problem is None):
        return problem or "unreadable on another process", {}, None

    got = fingerprint(restored)  # the same global values on every process
    bad = [k for k, v in saved.items() if got.get(k) != v.get("fingerprint")]
    if bad:
        return f"fingerprint mismatch in {', '.join(bad[:6])}", {}, None
    return None, meta, restored


def quarantine(directory: epath.Path, epochs: list[int]) -> None:
    """Moves the checkpoints of `epochs` to `corrupt/<epoch>-<utc time>/` (process 0 moves,
    every process waits for it), so they are never listed or pruned again."""
    if jax.process_index() == 0:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        dest_root = directory / CORRUPT_DIR
        dest_root.mkdir(parents=True, exist_ok=True)
        for epoch in epochs:
            src = directory / str(epoch)
            if src.exists():
                dest = dest_root / f"{epoch}-{stamp}"
                src.rename(dest)
                logger.warning("Moved the corrupt checkpoint %s to %s.", src, dest)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"ntkbench_checkpoints_quarantine_{epochs}")
