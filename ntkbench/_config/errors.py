"""The errors ntkbench raises on purpose, each with the exit status the CLI maps it to.

Every message is one line that says what is wrong and how to fix it, in words that do not assume
the command line (a notebook user sees the same text). The command line prints
`ntkbench: error: <message>` and exits with the class's `exit_status`; docs/errors.md lists them.
"""

from __future__ import annotations

import contextlib
import enum


class ExitStatus(enum.IntEnum):
    """The command line's exit statuses (sysexits.h where one fits; docs/errors.md).

    `INTERRUPTED` and `HUNG` leave the run resumable.
    """

    DONE = 0
    BAD_INPUT = 2
    INTEGRITY = 65  # EX_DATAERR: stored data would be inconsistent or was found damaged
    HUNG = 70  # EX_SOFTWARE: no progress within the watchdog's bound (a runtime hang)
    STORAGE = 74  # EX_IOERR: a file could not be written or read (read-only, disk full)
    INTERRUPTED = 75  # EX_TEMPFAIL: stopped at a checkpoint on request; rerun to resume




class NtkbenchError(Exception):
    """Base of every error ntkbench raises on purpose; `exit_status` is the CLI's status.

    `option`, when set, names the keyword argument of `ntkbench.run` that would resolve the
    error (e.g. "extend"); the command line turns it into its flag.
    """

    exit_status = ExitStatus.BAD_INPUT
    option: str | None = None

    def __init__(self, *args, option: str | None = None):
        super().__init__(*args)
        self.option = option


class ConfigError(NtkbenchError, ValueError):
    """An invalid sweep configuration (a field, a preset, a config file)."""


class ResourceError(ConfigError):
    """The sweep cannot fit the machine (a pack larger than the device memory)."""


class DatasetError(NtkbenchError, ValueError):
    """A dataset file is malformed: wrong magic number, truncated, inconsistent, bad labels."""


class DatasetNotFoundError(DatasetError):
    """The files of a dataset were not found (or only in a refused format)."""


class WorkdirError(NtkbenchError, RuntimeError):
    """The workdir cannot be used: another sweep, another process, not an ntkbench workdir."""


class IntegrityError(NtkbenchError, RuntimeError):
    """Stored data would become inconsistent, or was found damaged beyond automatic repair."""

    exit_status = ExitStatus.INTEGRITY


class StorageError(NtkbenchError, OSError):
    """A file of the workdir could not be written or read (permissions, read-only, full disk)."""

    exit_status = ExitStatus.STORAGE

    @classmethod
    def of(cls, path: str, error: BaseException, action: str = "write") -> StorageError:
        """The one-line error for an OS-level failure `error` on `path` while ntkbench was
        doing `action` ("write", "read" or "access")."""
        return storage_error(path, error, action)


class Interrupted(NtkbenchError):
    """The run stopped at a checkpoint because it was asked to; rerun the same command to resume."""

    exit_status = ExitStatus.INTERRUPTED


class Hung(NtkbenchError):
    """A chunk made no progress within the watchdog's bound; rerun to resume from the last
    checkpoint."""

    exit_status = ExitStatus.HUNG


_STORAGE_ERRNOS = {28, 30, 13, 1, 20, 122}  # ENOSPC, EROFS, EACCES, EPERM, ENOTDIR, EDQUOT
_STORAGE_TEXT = ("No space left", "Read-only file system", "Permission denied",
                 "Disk quota exceeded")


def _storage_cause(error: BaseException) -> BaseException | None:
    """The OS-level storage failure behind `error` (itself or a chained cause), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) in _STORAGE_ERRNOS or any(
                t in str(error) for t in _STORAGE_TEXT):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def storage_guard(path: str, action: str = "write"):
    """Turn a storage failure raised inside (by us, Orbax or Tensorstore, possibly wrapped in
    another exception) into a one-line `StorageError` about `path`."""
    try:
        yield
    except NtkbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a storage failure
        cause = _storage_cause(e)
        if cause is None:
            raise
        raise storage_error(path, cause, action) from None


def storage_error(path: str, error: BaseException, action: str = "write") -> StorageError:
    """A one-line `StorageError` for an OS-level failure on `path` (what happened, what to do).

    `action` is "write", "read" or "access" (either): what ntkbench was doing (a command that
    only reads, such as `status` or `verify`, never says "Cannot write").
    """
    import errno

    code = getattr(error, "errno", None)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    reading = action == "read"
    if code == errno.ENOSPC or "No space left" in text:
        hint = "the disk is full: free space (or move the workdir) and rerun to resume"
    elif code == errno.EROFS or "Read-only file system" in text:
        hint = "the file system is read-only: choose a writable workdir"
    elif code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        hint = ("permission denied: give yourself read access to it (chmod u+r, or ask its "
                "owner)" if reading else "permission denied: choose a workdir you can write to")
    elif code == errno.ENOTDIR or "Not a directory" in text:
        hint = "a parent of the workdir is a file: choose another workdir"
    else:
        hint = text
    verb = action if action in ("read", "write", "access") else "write"
    return StorageError(f"Cannot {verb} {path}: {hint}.")
