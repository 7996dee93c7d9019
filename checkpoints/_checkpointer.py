"""Resumable checkpoints of one pack's training state (Orbax + Tensorstore zarr3/OCDBT).

A checkpoint is the pytree itself, as in Equinox serialisation: the array leaves of
`eqx.filter(state, eqx.is_array)`, restored into a template `like` built the same way as the
state, whose static part (activations, widths, optimizer functions...) is reused as it is.

Directory layout (one `PackCheckpointer` per pack directory)::

    <directory>/
      <epoch>/                       one finalized checkpoint per saved epoch; the newest
        _CHECKPOINT_METADATA           `max_to_keep` are kept
        state/                       the array leaves: one zarr3 array per leaf inside an OCDBT
          _METADATA, manifest.ocdbt    database (Tensorstore); each process writes its own
          ocdbt.process_<i>/ ...       `ocdbt.process_<i>/`
        meta/metadata                JSON: format version, epoch, shape/dtype/fingerprint of
                                       every leaf (by key path) and the caller's `extra`
      <epoch>.orbax-checkpoint-tmp*/ a save in flight, or one killed mid-write: never restored;
                                       the next `PackCheckpointer` on the directory warns about it
                                       and removes it (in the background, before its first save)
      corrupt/<epoch>-<utc time>/    checkpoints found corrupt by `restore_latest` when an older
                                       one restored fine; kept for inspection, never read again

What is saved: every array leaf (float parameters, optax states, bool/int arrays, typed PRNG keys)
with its exact bits, so a restored state continues training bit for bit like an uninterrupted
run. Non-array leaves (None, Python scalars, functions) are not saved; they come from `like`.

Integrity: `save` computes a 32-bit fingerprint of the bits of every leaf on device and stores it
in `meta/metadata`. `restore_latest` tries the newest checkpoint first and treats it as corrupt
when its step metadata or JSON is missing or unreadable, when Tensorstore fails to read an array
(a truncated or deleted file), or when the restored bits do not match the saved fingerprints. A
corrupt checkpoint is skipped with a `logging.warning` naming it, and the previous one is tried.
A checkpoint whose leaves differ from `like` in key path, shape or dtype is not corrupt: it was
written for another state, and `restore_latest` raises `CheckpointMismatchError`.

Async semantics (`async_save=True`): `save` waits until `state` has been computed (it reads the
fingerprints back) and copied off the device, so the caller may donate or overwrite `state` as
soon as it returns; the write continues in a background thread into
`<epoch>.orbax-checkpoint-tmp*`. Nothing of that epoch is durable when
`save` returns; it becomes durable, atomically, when the tmp directory is renamed to `<epoch>/`,
which `wait()` (or `close()`, or the next `save`) waits for. Older checkpoints beyond
`max_to_keep` are deleted only after the new one is finalized, so a crash at any moment leaves
at least one complete checkpoint. Call `close()` (or leave the `with` block) before the process
exits, or the last save may be lost.

Multi-host: every process calls every method (`should_save`, `save`, `restore_latest`, `wait`,
`close`) at the same points with the same arguments, since they contain barriers and collective
agreements; `directory` must be on a filesystem that all hosts see. The time criterion of
`should_save` (process 0's clock), its `force` (True on any process forces all) and the
corruption verdict of `restore_latest` are agreed across processes, so all of them save, skip and restore the same epochs. Every array leaf must be
a global array: place scalars and replicated leaves on the mesh too (e.g. `eqx.filter_shard(x,
NamedSharding(mesh, P()))`); `save` rejects process-local leaves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from ._format import (
    META,
    META_FILE,
    STATE,
    TMP_MARKER,
    Fingerprinter,
    describe,
    is_leaf_array,
    save_metadata,
)
from ._restore import (
    CheckpointCorruptError,
    match_template,
    restore_target,
    quarantine,
    try_restore,
)

logger = logging.getLogger(__name__)


def _agree_on_save(force: bool, due: bool, busy: bool) -> tuple[bool, bool, bool]:
    """`(force on any process, due on process 0, busy on any process)`: one collective when
    there are several."""
    if jax.process_count() == 1:
        return force, due, busy
    flags = np.asarray(multihost_utils.process_allgather(np.asarray([force, due, busy], np.int32)))
    flags = flags.reshape(jax.process_count(), 3)
    return bool(flags[:, 0].any()), bool(flags[0, 1]), bool(flags[:, 2].any())


# ---------------------------------------------------------------------------------- class
class PackCheckpointer:
    """Saves and restores one pack's training state in its own directory.

    Args:
        directory: the pack's checkpoint directory (created if missing); on a filesystem that
            every host sees when there are several processes.
        max_to_keep: how many of the newest checkpoints to keep (at least 1; 2 leaves a
            fallback if the newest turns out corrupt).
        save_every_epochs: `should_save` is True at every epoch divisible by this (0 disables).
        save_every_minutes: `should_save` is True once this many minutes have passed since the
            last save, restore or construction (0 disables).
        max_overhead: postpone due saves while the time `save` and `wait` have blocked the
            caller exceeds this fraction of the time since construction (0 disables). With
            frequent saves of a large state this bounds the cost of checkpointing; forced saves
            are never postponed.
        count_background: also count against `max_overhead` the time each async save spends
            writing after `save` returned (until it is finalized). Set it where the writes
            share the processor with training (training on the host's CPUs), so that the
            budget bounds what saving costs training there.
        async_save: write in a background thread (see the module docstring); False makes
            `save` return only once the checkpoint is durable.
        clock: seconds as a float, for the time criterion (tests inject a fake one).

    Example:
        >>> with PackCheckpointer(path, save_every_epochs=10) as ckpt:  # doctest: +SKIP
        ...     found = ckpt.restore_latest(state)
        ...     if found is not None:
        ...         epoch, state, extra = found
        ...     for epoch in range(start, num_epochs):
        ...         state = train_one_epoch(state)
        ...         if ckpt.should_save(epoch + 1, force=epoch + 1 == num_epochs):
        ...             ckpt.save(epoch + 1, state, extra={"best": best})
    """

    def __init__(
        self,
        directory: str | epath.PathLike,
        *,
        max_to_keep: int = 2,
        save_every_epochs: int = 0,
        save_every_minutes: float = 0.0,
        max_overhead: float = 0.0,
        async_save: bool = True,
        count_background: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep}; keep at least 1 checkpoint (2 leaves "
                             "a fallback when the newest one is corrupt).")
        if not 0.0 <= max_overhead < 1.0:
            raise ValueError(f"max_overhead={max_overhead}; give a fraction in [0, 1) (0 disables).")
        if save_every_epochs < 0 or save_every_minutes < 0 or not math.isfinite(save_every_minutes):
            raise ValueError(
                f"save_every_epochs={save_every_epochs}, save_every_minutes={save_every_minutes};"
                " use a non-negative count or a finite number of minutes (0 disables a criterion).")
        self._directory = epath.Path(directory)
        self._clock = clock
        self._save_every_epochs = int(save_every_epochs)
        self._save_every_seconds = 60.0 * float(save_every_minutes)
        leftovers = self._directory.glob(f"*{TMP_MARKER}*") if self._directory.exists() else []
        for tmp in sorted(leftovers):
            logger.warning("Ignoring the unfinished checkpoint %s (a save that did not complete); "
                           "it is being removed.", tmp)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            async_options=(ocp.AsyncOptions(post_finalization_callback=self._finalized)
                           if async_save else None),
            create=True,
        )
        self._mngr = ocp.CheckpointManager(
            self._directory,
            options=options,
            item_handlers={
                STATE: ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True,
                                                  use_compression=False),
                META: ocp.JsonCheckpointHandler(META_FILE),
            },
        )
        # Reads go through a per-process Checkpointer without barriers: a process that finds a
        # checkpoint corrupt must not leave the others waiting inside Orbax's restore barrier.
        # The verdicts are then agreed by one collective per checkpoint tried.
        me = jax.process_index()
        local = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        self._reader = ocp.Checkpointer(
            ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True,
                                        multiprocessing_options=local),
            multiprocessing_options=local,
        )
        self._fingerprints = Fingerprinter()
        self._count_background = bool(count_background)
        self._background = 0.0  # seconds async saves spent writing after `save` returned
        self._returned: float | None = None  # when the `save` of the last write returned
        self._finished: float | None = None  # when it was finalized (set by Orbax's thread)
        self._last_save_time = self._clock()
        self._async = bool(async_save)
        self._max_overhead = float(max_overhead)
        self._start = self._clock()
        self._blocked = 0.0  # seconds `save` and `wait` have blocked the caller
        self._owed = False  # a due save not made yet (postponed by `should_save`)
        #: How many due saves `should_save` postponed (previous one still writing, or the
        #: `max_overhead` budget spent).
        self.postponed = 0

    # ------------------------------------------------------------------ properties
    @property
    def directory(self) -> epath.Path:
        """The pack's checkpoint directory."""
        return self._directory

    @property
    def blocked_seconds(self) -> float:
        """Seconds for which `save` and `wait` have blocked the caller so far."""
        return self._blocked

    @property
    def background_seconds(self) -> float:
        """Seconds async saves have spent writing after `save` returned, until finalized
        (the saves finalized so far)."""
        self._account()
        return self._background

    def all_epochs(self) -> list[int]:
        """Epochs of the checkpoints, oldest first: the finalized ones (corrupt ones included
        until `restore_latest` moves them aside) and a save still in flight."""
        return sorted(self._mngr.all_steps())

    def latest_epoch(self) -> int | None:
        """The newest checkpoint's epoch (possibly a save still in flight), or None."""
        return self._mngr.latest_step()

    # ------------------------------------------------------------------ saving
    def prepare(self, like) -> None:
        """Compiles, in a background thread, what `save` and `restore_latest` will run on
        states laid out like `like` (same leaves, shapes, dtypes and shardings), so that the
        first save does not block training for the compilation (about half a second on a
        CPU). Optional; call it as soon as the state (or its template) exists."""
        self._fingerprints.prepare(eqx.filter(like, is_leaf_array))

    def should_save(self, epoch: int, *, force: bool = False) -> bool:
        """Whether to save the state reached after `epoch` epochs.

        Args:
            epoch: the epoch count of the state (the checkpoint's name).
            force: save regardless of the criteria (e.g. at the last epoch, or on preemption).

        Returns:
            False if a checkpoint of `epoch` or a later one already exists; otherwise True when
            `force` (on any process), or when a save is due: `epoch` is a multiple of
            `save_every_epochs`, or `save_every_minutes` have passed since the last save
            (process 0's clock decides). A due save is postponed (False) while the previous one
            is still being written, so that checkpointing never stalls training, and while saving
            has blocked the caller for more than `max_overhead` of the time; it is made at the
            first call after that. Every process gets the same answer.
        """
        epoch = int(epoch)
        latest = self._mngr.latest_step()
        if latest is not None and epoch <= latest:
            return False
        elapsed = self._clock() - self._last_save_time
        due = bool(self._save_every_seconds) and elapsed >= self._save_every_seconds
        busy = self._async and self._mngr.is_saving_in_progress()
        if self._max_overhead:
            self._account()
            spent = self._blocked + (self._background if self._count_background else 0.0)
            busy = busy or spent > self._max_overhead * (self._clock() - self._start)
        force, due, busy = _agree_on_save(bool(force), due, busy)
        by_epochs = bool(self._save_every_epochs) and epoch % self._save_every_epochs == 0
        if force:
            return True
        if (by_epochs or due or self._owed) and busy:
            self._owed = True
            self.postponed += 1
            return False
        return by_epochs or due or self._owed

    def save(self, epoch: int, state, *, extra: Mapping[str, Any] | None = None) -> None:
        """Starts saving `state` as the checkpoint of `epoch` (async: see the module docstring).

        Args:
            epoch: the epoch count of `state`; larger than every epoch saved so far.
            state: the training state (any pytree; Equinox modules included). Its array leaves
                are saved; the caller may donate or overwrite them as soon as `save` returns.
            extra: JSON-serializable metadata (e.g. best-so-far bookkeeping, a config
                fingerprint), returned by `restore_latest`. JSON turns tuples into lists and
                keys into strings.
        """
        t0 = self._clock()
        try:
            self._save(epoch, state, extra)
        finally:
            self._blocked += self._clock() - t0

    def _save(self, epoch, state, extra) -> None:
        epoch = int(epoch)
        latest = self._mngr.latest_step()
        if latest is not None and epoch <= latest:
            raise ValueError(
                f"Cannot save epoch {epoch} in {self._directory}: epoch {latest} is already saved."
                " Resume with `restore_latest(like)` before training, and gate saves with "
                "`should_save(epoch)`.")
        self._mngr.wait_until_finished()  # as Orbax's save would; settles the accounting
        self._account()
        self._returned = self._finished = None
        arrays = eqx.filter(state, eqx.is_array)
        meta = save_metadata(epoch, arrays, extra, self._fingerprints)
        self._mngr.save(
            epoch,
            args=ocp.args.Composite(**{
                STATE: ocp.args.PyTreeSave(arrays),
                META: ocp.args.JsonSave(meta),
            }),
            force=True,
        )
        self._last_save_time = self._returned = self._clock()
        self._owed = False

    def _finalized(self) -> None:
        """Orbax's callback, on its finalize thread, once an async save is durable."""
        self._finished = self._clock()

    def _account(self) -> None:
        """Adds the last save's background time once it is finalized (caller's thread)."""
        if self._returned is not None and self._finished is not None:
            self._background += max(0.0, self._finished - self._returned)
            self._returned = self._finished = None

    def wait(self) -> None:
        """Blocks until the pending save is finalized (durable) and old checkpoints are pruned."""
        t0 = self._clock()
        self._mngr.wait_until_finished()
        self._blocked += self._clock() - t0
        self._account()

    def close(self) -> None:
        """Waits for the pending save, then releases the manager's threads."""
        self._fingerprints.wait()
        self._mngr.close()
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ restoring
    def restore_latest(self, like) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest readable checkpoint into the template `like`.

        Args:
            like: a state built the same way as the saved one (same key paths, shapes and
                dtypes); its values are ignored. Array leaves may be jax arrays or
                `jax.ShapeDtypeStruct`s with a `sharding`; restored arrays take that sharding.
                Non-array leaves are copied from `like`.

        Returns:
            None if the directory holds no checkpoint, else `(epoch, state, extra)`.

        Raises:
            CheckpointMismatchError: a checkpoint was written for a differently shaped state.
            CheckpointCorruptError: checkpoints exist but none could be read.
        """
        self._mngr.wait_until_finished()
        self._mngr.reload()
        arrays_like, static = eqx.partition(like, is_leaf_array)
        target = jax.tree_util.tree_map_with_path(lambda p, x: restore_target(x, p), arrays_like)
        expected = describe(arrays_like)
        failures: list[tuple[int, str]] = []
        for epoch in sorted(self._mngr.all_steps(), reverse=True):
            problem, meta, restored = try_restore(
                self._reader, self._directory / str(epoch), target, expected,
                self._fingerprints)
            if problem is None:
                self._quarantine([e for e, _ in failures])
                self._last_save_time = self._clock()
                restored = jax.tree.map(match_template, restored, arrays_like)
                return epoch, eqx.combine(restored, static), meta.get("extra", {})
            problem = problem[:500]
            logger.warning("Skipping the corrupt or incomplete checkpoint %s: %s",
                           self._directory / str(epoch), problem)
            failures.append((epoch, problem))
        if failures:
            listing = "; ".join(f"epoch {e}: {p}" for e, p in failures)
            raise CheckpointCorruptError(
                f"No checkpoint in {self._directory} could be restored ({listing}). If the "
                "files are damaged, move the directory away to restart this pack from scratch.")
        return None

    def discard_all(self) -> None:
        """Move every checkpoint of the directory to `corrupt/` (e.g. after `restore_latest`
        raised `CheckpointCorruptError`), so that the pack can restart from scratch."""
        self._mngr.wait_until_finished()
        self._quarantine(sorted(self._mngr.all_steps()))

    def _quarantine(self, epochs: list[int]) -> None:
        """Moves corrupt checkpoints to `corrupt/` so they are never listed or pruned again."""
        if not epochs:
            return
        quarantine(self._directory, epochs)
        self._mngr.reload()
