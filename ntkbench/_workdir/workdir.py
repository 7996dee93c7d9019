"""The workdir of a sweep: its lock, its manifest (config, data fingerprint, pack plan) and the
status file of every pack. docs/results.md describes the layout:

    WORKDIR/manifest.json        the sweep: config, fingerprints, pack plan, history
    WORKDIR/packs/pack_NNNN.json status of pack NNNN (pending, running, interrupted, done)
    WORKDIR/checkpoints/pack_NNNN/  Orbax checkpoints of a started pack (removed when done)
    WORKDIR/results/             the results store (zarr v3)
    WORKDIR/.lock[.share-I-of-N] locks of the running process(es)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time

from ntkbench._config import (
    NOT_RESULTS,
    ConfigError,
    IntegrityError,
    SweepConfig,
    WorkdirError,
    extend,
    same_sweep,
    storage_error,
    stored,
    with_run_settings,
)

MANIFEST = "manifest.json"
FORMAT_VERSION = 2


def atomic_json(path: str, obj) -> None:
    """Write `obj` as JSON to `path` atomically (a reader sees the old or the new file)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise storage_error(path, e) from None


def read_json(path: str, what: str) -> dict:
    """A JSON file of the workdir; a garbled one is an `IntegrityError` naming it."""
    try:
        with open(path) as f:
            out = json.load(f)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}); "
                             "restore it, or start the sweep in a new workdir.") from None
    except UnicodeDecodeError as e:
        raise IntegrityError(f"{what} {path} is not valid JSON (not UTF-8 text at byte "
                             f"{e.start}); restore it, or start the sweep in a new workdir."
                             ) from None
    except OSError as e:
        raise storage_error(path, e, "read") from None
    if not isinstance(out, dict):
        raise IntegrityError(f"{what} {path} holds {type(out).__name__}, not an object; "
                             "restore it, or start the sweep in a new workdir.")
    return out


def manifest_digest(manifest: dict) -> str:
    """A hash of what in a manifest defines the results: the config's result fields, the data
    fingerprint, the pack plan and the runtime the records were made on. Stored in the
    manifest as `integrity`; a manifest whose content no longer matches it was edited."""
    config = manifest.get("config") or {}
    content = {"config": {k: v for k, v in config.items() if k not in NOT_RESULTS},
               "data": manifest.get("data"), "packs": manifest.get("packs"),
               "runtime": manifest.get("runtime")}
    text = json.dumps(json.loads(json.dumps(content)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def known_fingerprints(manifest: dict) -> list[str]:
    """Every fingerprint the sweep of `manifest` has had (now, and before each extension)."""
    out = [manifest.get("fingerprint")]
    out += [h["from_fingerprint"] for h in manifest.get("history", []) if "from_fingerprint" in h]
    return [f for f in out if f]


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths of one sweep's workdir (absolute: Orbax requires absolute checkpoint paths)."""

    path: str

    def __post_init__(self):
        object.__setattr__(self, "path", os.path.abspath(self.path))

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, MANIFEST)

    @property
    def results(self) -> str:
        return os.path.join(self.path, "results")

    def checkpoints(self, pack_id: int) -> str:
        return os.path.join(self.path, "checkpoints", f"pack_{pack_id:04d}")

    def status_path(self, pack_id: int) -> str:
        return os.path.join(self.path, "packs", f"pack_{pack_id:04d}.json")

    # ---------------------------------------------------------------- manifest and status
    def read_manifest(self) -> dict | None:
        if not os.path.exists(self.manifest_path):
            return None
        manifest = read_json(self.manifest_path, "The manifest")
        if "config" not in manifest or "packs" not in manifest:
            raise IntegrityError(f"The manifest {self.manifest_path} lacks its config or pack "
                                 "plan; restore it, or start the sweep in a new workdir.")
        if "integrity" in manifest and manifest_digest(manifest) != manifest["integrity"]:
            raise IntegrityError(
                f"The manifest {self.manifest_path} was changed after ntkbench wrote it (its "
                "config, data fingerprint, pack plan or runtime no longer match its integrity "
                f"hash {manifest['integrity']}): the stored results were made with the "
                "original. Restore the file (undo the edit, or copy it from a backup); to run "
                "a changed config, start it in a new workdir.")
        try:
            stored(manifest["config"])
        except (ConfigError, TypeError) as e:
            raise IntegrityError(f"The manifest {self.manifest_path} holds an invalid config "
                                 f"({str(e).splitlines()[0] if str(e) else e!r}); restore it, "
                                 "or start the sweep in a new workdir.") from None
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        manifest = {**manifest, "format_version": FORMAT_VERSION}
        manifest.pop("integrity", None)
        atomic_json(self.manifest_path, {**manifest, "integrity": manifest_digest(manifest)})

    def read_status(self, pack_id: int) -> dict:
        """A pack's status; a missing or unreadable file means "not started" (the pack then
        retrains, and its stored records are checked bit for bit as it rewrites them). An
        unreadable one is marked `"unreadable": True`."""
        path = self.status_path(pack_id)
        if not os.path.exists(path):
            return {"status": "pending", "epochs_done": 0}
        try:
            return read_json(path, "The pack status")
        except (IntegrityError, OSError):
            return {"status": "pending", "epochs_done": 0, "unreadable": True}

    def write_status(self, pack_id: int, **fields) -> None:
        """Update a pack's status file with `fields` (a field set to None is removed)."""
        st = self.read_status(pack_id)
        st.pop("unreadable", None)
        for k in [k for k, v in fields.items() if v is None]:
            st.pop(k, None)
            del fields[k]
        st.update(fields, updated=time.time())
        os.makedirs(os.path.dirname(self.status_path(pack_id)), exist_ok=True)
        atomic_json(self.status_path(pack_id), st)

    # ---------------------------------------------------------------- locking
    @contextlib.contextmanager
    def lock(self, shard: tuple[int, int] = (0, 1)):
        """Hold the workdir for the life of a run; a second process is refused with one line.

        An unsharded run holds `.lock` exclusively; share `I/N` holds `.lock` shared (shares
        exclude unsharded runs, not each other) and `.lock.share-I-of-N` exclusively.
        """
        i, n = shard
        fds = []
        try:
            names = [(".lock", fcntl.LOCK_EX if n == 1 else fcntl.LOCK_SH)]
            if n > 1:
                names.append((f".lock.share-{i}-of-{n}", fcntl.LOCK_EX))
            for name, mode in names:
                fd = self._lock_file(name)
                fds.append(fd)
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise WorkdirError(f"Another ntkbench process (pid {other}) is using "
                                       f"{self.path}; wait for it to finish or use another "
                                       "workdir.") from None
                if mode == fcntl.LOCK_EX:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            for fd in fds:
                os.close(fd)

    @contextlib.contextmanager
    def setup_lock(self):
        """Serialize the setup of runs on one workdir (the manifest, the results store's
        metadata and settings): shares of a sweep start side by side, and two processes creating
        one zarr array at once collide in the file store ("Failed to rename"). Blocks until the
        other share's setup is done (a fraction of a second); training runs side by side after."""
        fd = self._lock_file(".lock.setup")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _lock_file(self, name: str) -> int:
        """Open (creating) the workdir's lock file `name` for flock."""
        path = os.path.join(self.path, name)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error(path, e) from None

    def is_locked(self) -> bool | None:
        """Whether a run holds the workdir now (a run killed with SIGKILL holds nothing); None
        when `.lock` cannot be opened (no permission), so it cannot be told."""
        path = os.path.join(self.path, ".lock")
        if not os.path.exists(path):
            return False
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # ---------------------------------------------------------------- what to run
    def check(self, config: SweepConfig, *, extend_ok: bool = False
              ) -> tuple[dict | None, SweepConfig]:
        """Refuse a workdir that holds another sweep or foreign files.

        Returns:
            `(manifest or None, the config to run)`: the stored config (with this request's run
            settings) for the same sweep, the grown one for an extension, `config` for a new
            workdir.
        """
        if not os.path.exists(self.path):
            return None, config
        if not os.path.isdir(self.path):
            raise WorkdirError(f"The workdir {self.path} is a file; give a directory.")
        manifest = self.read_manifest()
        if manifest is None:
            foreign = sorted(f for f in os.listdir(self.path) if not f.startswith(".lock"))
            if foreign:
                more = ", ..." if len(foreign) > 3 else ""
                raise WorkdirError(f"{self.path} is not empty and holds no ntkbench sweep "
                                   f"({', '.join(foreign[:3])}{more}); choose a new or empty "
                                   "workdir.")
            return None, config
        old = stored(manifest["config"])
        if manifest.get("fingerprint") == config.fingerprint() or same_sweep(old, config):
            return manifest, with_run_settings(old, config)
        try:
            grown = extend(old, config)
        except ConfigError as e:
            if extend_ok:
                raise WorkdirError(f"Cannot extend the sweep in {self.path}: {e}") from None
            grown = None
        if extend_ok:
            return manifest, grown
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in old.diff(config).items()
                         if k not in ("data_dir", "model_file"))
        hint = (" or extend it to add the new members (finished ones are kept as they are),"
                if grown is not None else "")
        raise WorkdirError(f"{self.path} holds a different sweep ({diff}); rerun with its "
                           f"config to resume,{hint} or choose a new workdir.",
                           option="extend" if grown is not None else None)

    def check_writable(self) -> None:
        """Create the workdir (and its parents) or fail with one line, before anything else."""
        try:
            os.makedirs(os.path.join(self.path, "packs"), exist_ok=True)
            probe = os.path.join(self.path, f".probe.{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise storage_error(self.path, e) from None


def check_data_fingerprint(manifest: dict | None, fingerprint: dict, path: str) -> None:
    """Refuse to resume a sweep on other data than it was trained on.

    Raises:
        IntegrityError: naming the dataset and what changed.
    """
    if manifest is None or "data" not in manifest:
        return
    old = manifest["data"]
    if old.get("sha256") == fingerprint["sha256"]:
        return
    changes = [f"{k} {old.get(k)!r} -> {fingerprint[k]!r}" for k in ("num_train", "num_test")
               if old.get(k) != fingerprint[k]]
    changes.append(f"content sha256 {str(old.get('sha256'))[:12]} -> "
                   f"{fingerprint['sha256'][:12]}")
    raise IntegrityError(f"The data of dataset {fingerprint['dataset']!r} differ from the data "
                         f"the sweep in {path} was trained on ({'; '.join(changes)}); restore "
                         "the original files, or start a new workdir.")
