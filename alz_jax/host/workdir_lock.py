"""One run per workdir: `<workdir>/run.lock`, held by the training process for the whole run.

On a local (or NFS) workdir the lock is an advisory `flock` on the file: the kernel releases it
when the holder exits in any way, SIGKILL included, so a lock whose holder is gone is simply taken
over (with a warning naming that holder, whose host, PID and start time the file still holds). A
second run finds the lock held and stops at once, naming the holder. The file is emptied, never
deleted, on release: deleting it would let a run that opened the old file and a run that creates a
new one both "hold" it.

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


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _hold_local(workdir, path) -> Iterator[dict]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(workdir, path, _parse(f.read())) from None
        previous = _parse(f.read())
        if previous:
            logging.warning(
                "Took over the lock %s of %s, which is gone (it ended without releasing it).",
                path, _describe(previous),
            )  # fmt: skip
        holder = _holder()
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder))
        f.flush()
        os.fsync(f.fileno())
        try:
            yield holder
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _hold_object(workdir, path) -> Iterator[dict]:
    if path.exists():
        previous = _parse(path.read_text())
        gone = previous.get("host") == socket.gethostname() and not _pid_alive(previous.get("pid"))
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
    it. Yields the holder record on process 0, None on the others."""
    workdir = storage.path(workdir)
    error = None
    with contextlib.ExitStack() as stack:
        holder = None
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
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
