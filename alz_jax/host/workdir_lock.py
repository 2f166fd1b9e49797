"""One run per workdir: `<workdir>/run.lock`, held by the training process for the whole run.

On a local (or NFS) workdir the lock is an advisory `flock` on the file: the kernel releases it
when the holder exits in any way, SIGKILL included, so a lock whose holder is gone is simply taken
over (with a warning naming that holder, whose host, PID and start time the file still holds). A
second run finds the lock held and stops at once, naming the holder. The file is emptied, never
deleted, on release: deleting it would let a run that opened the old file and a run that creates a
new one both "hold" it.

A start that fails inside the `with` block while the workdir holds nothing but the lock (a data
or config error met after the lock was taken) leaves nothing behind: the lock file it created
is deleted (while still held; a run that then opens the old file sees it is no longer the one
at the path and tries again) and so are the folders it created. A folder or file that was
there before is never deleted. A workdir that can't be created or written (a read-only file
system, a path under a file) is a UserError naming the folder.

Object storage (gs://) has no locks: there the file itself is the lock, written when the run
starts and removed when it ends. One left by a holder on this host whose process is gone is
taken over; one from another host is refused (its holder can't be checked from here: delete the
file if that run is gone).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from alz_jax.host import storage
from alz_jax.host.errors import UserError

LOCK_NAME = "run.lock"


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def _describe(holder: dict) -> str:
    if not holder:
        return "a run (its lock file names no holder)"
    return (
        f"the run of PID {holder.get('pid')} on host {holder.get('host')}, started "
        f"{holder.get('started')}"
    )


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}
    return holder if isinstance(holder, dict) else {}


def _in_use(workdir, path, holder: dict) -> UserError:
    return UserError(
        f"{workdir} is in use by {_describe(holder)} (lock {path}). Two runs in one workdir "
        "would overwrite each other's checkpoints and logs: wait for that run to end, stop it, "
        "or use another --workdir."
    )


def pid_alive(pid) -> bool:
    """Whether process `pid` of this host exists (how an object-store lock's holder is judged)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _unwritable(workdir, what: str, error: OSError) -> UserError:
    """The one-line error for a workdir that can't be created or written (read-only file system,
    no permission, a file in the way)."""
    reason = error.strerror or str(error)
    return UserError(
        f"workdir {workdir}: can't {what} ({reason}). Give a folder you can write to with "
        "--workdir."
    )


def _make_folders(workdir: Path) -> list[Path]:
    """Creates `workdir` and any missing parent; returns the folders created, outermost first."""
    try:
        if workdir.exists() and not workdir.is_dir():
            raise UserError(
                f"workdir {workdir} is a file, not a folder. Give a folder with --workdir."
            )
        missing = [p for p in (workdir, *workdir.parents) if not p.exists()][::-1]
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(workdir, "create the folder", e) from None
    return missing


def _open_lock_file(workdir, path: Path) -> tuple[int, bool]:
    """(descriptor, created): the lock file opened for reading and writing, created if absent."""
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        raise  # deleted between the two opens (or the folder with it): the caller tries again
    except OSError as e:
        raise _unwritable(workdir, f"write its lock file {path.name}", e) from None


def _still_at_path(fd: int, path: Path) -> bool:
    """Whether the locked file is still the one at `path` (a failed start deletes its lock file
    while holding it; a run that had opened that file must not hold it)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    locked = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (locked.st_dev, locked.st_ino)


@contextlib.contextmanager
def _hold_local(workdir, path) -> Iterator[dict]:
    folder = Path(os.fspath(workdir))
    path = Path(os.fspath(path))
    created_folders = _make_folders(folder)
    for _ in range(100):  # another start deleting its lock file between our steps: try again
        try:
            fd, created = _open_lock_file(workdir, path)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except UserError:
            _remove_failed_start(None, created_folders)
            raise
        f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with f:
                raise _in_use(workdir, path, _parse(f.read())) from None
        if _still_at_path(fd, path):
            break
        f.close()
    else:
        raise UserError(f"workdir {workdir}: could not take its lock {path}; try again.")
    with f:
        previous = _parse(f.read())
        if previous:
            logging.warning(
                "Took over the lock %s of %s, which is gone (it ended without releasing it).",
                path, _describe(previous),
            )  # fmt: skip
        holder = _holder()
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(holder))
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            if created:
                _remove_failed_start(path, created_folders)
            raise _unwritable(workdir, f"write its lock file {path.name}", e) from None
        failed = True
        try:
            yield holder
            failed = False
        finally:
            if failed and created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                _remove_failed_start(path, created_folders)
            else:
                f.seek(0)
                f.truncate()
                f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_failed_start(path: Path | None, created_folders: list[Path]) -> None:
    """Deletes the lock file (still held; None: none was made) and the empty folders a failed
    start created."""
    if path is not None:
        path.unlink(missing_ok=True)
    for folder in reversed(created_folders):
        with contextlib.suppress(OSError):  # not empty (another run's files): it stays
            folder.rmdir()


@contextlib.contextmanager
def _hold_object(workdir, path) -> Iterator[dict]:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(workdir, "create the folder", e) from None
    if path.exists():
        previous = _parse(path.read_text())
        gone = previous.get("host") == socket.gethostname() and not pid_alive(previous.get("pid"))
        if not gone:
            raise _in_use(workdir, path, previous)
        logging.warning("Took over the lock %s of %s, which is gone.", path, _describe(previous))
    holder = _holder()
    path.write_text(json.dumps(holder))
    try:
        yield holder
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir) -> Iterator[dict | None]:
    """Holds the lock of `workdir` (creating the folder) for the `with` block, from process 0 for
    the whole job; raises a UserError naming the holder, on every process, if another run holds
    it, or naming the folder if it can't be created or written. Yields the holder record on
    process 0, None on the others. A block that fails while the workdir holds only the lock
    removes what this start created (module docstring)."""
    workdir = storage.path(workdir)
    error = None
    with contextlib.ExitStack() as stack:
        holder = None
        if jax.process_index() == 0:
            hold_lock = _hold_object if storage.is_url(workdir) else _hold_local
            try:
                holder = stack.enter_context(hold_lock(workdir, workdir / LOCK_NAME))
            except UserError as e:
                error = e
        if jax.process_count() > 1:  # every process learns whether process 0 got the lock
            failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
            if failed and error is None:
                raise UserError(f"{workdir} is in use by another run; see process 0's log.")
        if error is not None:
            raise error
        yield holder
