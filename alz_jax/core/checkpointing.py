"""Orbax checkpoints: asynchronous saves keeping the latest k and the best by a validation metric,
each with a checksum file, and a restore that falls back over damaged checkpoints.

The preservation policy combines both (a checkpoint survives if either keeps it), so the best
checkpoint is never deleted by newer ones and a crash never leaves only an old best.

Once a save is finished, `<step>/checksums.json` records every file's size and CRC-32. Resuming
(`restore_latest`) tries the newest step first; a step with a missing, truncated or altered file,
or that Orbax fails to read, is named in one log line, moved aside to
`<workdir>/checkpoints_damaged/` (never deleted) and the next newest is tried. A step whose
parameters have other shapes than the model's is not damage: that stops the run with the
differences. The data position is not in the checkpoint: the input pipeline derives it from the
step, so the Grain worker count and buffers may change between runs.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shutil
import weakref
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from alz_jax.core.checkpoint_spec import CheckpointSpec  # re-exported: callers use this name
from alz_jax.host import storage
from alz_jax.host.errors import UserError


def make_manager(
    workdir: str | Path, ckpt_config: CheckpointSpec, *, for_training: bool = False
) -> ocp.CheckpointManager:
    """The run's CheckpointManager under <workdir>/checkpoints. Only the training process
    (`for_training`) removes half-written checkpoints: another process (an evaluation of a
    running training) would delete the save in flight."""
    metric, mode = ckpt_config.best_metric, ckpt_config.best_mode

    def metric_of(metrics: dict) -> float:
        return float(metrics[metric])

    best = policies.BestN(
        get_metric_fn=metric_of,
        reverse=mode == "min",
        n=ckpt_config.keep_best,
        keep_checkpoints_without_metrics=False,
    )
    keep = [policies.LatestN(n=ckpt_config.keep_latest), best]
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep), best_fn=metric_of,
        best_mode=mode, enable_async_checkpointing=True, create=True,
        # A save killed mid-write leaves <step>.orbax-checkpoint-tmp: never listed; the training
        # that resumes removes it.
        cleanup_tmp_directories=for_training,
    )  # fmt: skip
    local = not storage.is_url(workdir)
    directory = storage.path(os.path.abspath(workdir) if local else workdir) / "checkpoints"
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "selection"))


def has_checkpoint(workdir) -> bool:
    """Whether `workdir` holds a finished checkpoint (a run to resume), without opening it."""
    directory = storage.path(workdir) / "checkpoints"
    return directory.exists() and any(p.name.isdigit() for p in directory.iterdir())


CHECKSUMS = "checksums.json"
DAMAGED_DIR = "checkpoints_damaged"
# Steps saved by this process whose checksums are still to be written, per manager: only a save
# we watched finish gets checksums (hashing an older step would certify whatever damage it has).
_UNSUMMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _step_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(step_dir: str | Path) -> None:
    """Records the size and CRC-32 of every file of a finished checkpoint (local folders only:
    object storage keeps its own checksums)."""
    step_dir = Path(step_dir)
    sums = {
        os.fspath(p.relative_to(step_dir)): [p.stat().st_size, _crc32(p)]
        for p in _step_files(step_dir)
    }
    storage.write_text_atomic(storage.path(step_dir / CHECKSUMS), json.dumps(sums, indent=0))


def verify(step_dir: str | Path) -> str | None:
    """Why the checkpoint in `step_dir` is damaged (a missing, truncated or altered file), or
    None when every file matches its checksum (or the step has none to check)."""
    step_dir = Path(step_dir)
    if not (step_dir / CHECKSUMS).is_file():
        return None
    try:
        sums = json.loads((step_dir / CHECKSUMS).read_text())
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} unreadable ({e})"
    for name, (size, crc) in sorted(sums.items()):
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        found = path.stat().st_size
        if found != size:
            return f"{name} is {found} bytes, {size} were saved (truncated or overwritten)"
        if _crc32(path) != crc:
            return f"{name} fails its checksum (its bytes changed after the save)"
    return None


def _write_pending_checksums(manager: ocp.CheckpointManager) -> None:
    pending = _UNSUMMED.pop(manager, [])
    directory = storage.path(manager.directory)
    if storage.is_url(directory) or jax.process_index() != 0:
        return
    for step in pending:
        if (directory / str(step)).is_dir():
            write_checksums(Path(directory) / str(step))


def _disk_full(error: BaseException) -> OSError | None:
    """The ENOSPC error behind `error` (OSError, or tensorstore's message), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        if "No space left on device" in str(error) or "ENOSPC" in str(error):
            return OSError(errno.ENOSPC, "No space left on device")
        error = error.__cause__ or error.__context__
    return None


def _raise_disk_full(manager, step: int | None, error: BaseException):
    # Orbax's failed writes leave asyncio futures whose errors asyncio logs, tracebacks and all,
    # when they are collected at exit: after this error, which must stay the last line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    directory = storage.path(manager.directory)
    intact = [s for s in manager.all_steps() if s != step and (directory / str(s)).is_dir()]
    free = ""
    if not storage.is_url(directory):
        usage = shutil.disk_usage(directory)
        free = f" ({usage.free:,} bytes free of {usage.total:,})"
    needed = ""
    if intact:
        size = sum(p.stat().st_size for p in _step_files(Path(directory) / str(max(intact))))
        needed = f"; a checkpoint takes about {size:,} bytes"
    last = (
        f"the last intact checkpoint is step {max(intact)}" if intact else "no checkpoint is kept"
    )
    which = f"checkpoint {step}" if step is not None else "a checkpoint"
    raise UserError(
        f"Disk full while saving {which} in {directory}{free}{needed}; {last}. Free space (or "
        "move the workdir) and run the same command to resume from it."
    ) from error


def finish(manager: ocp.CheckpointManager, step: int | None = None) -> None:
    """Waits for the save in flight and writes its checksums; a full disk becomes a UserError
    naming the folder, the free and needed bytes and the last intact checkpoint."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        if _disk_full(e) is None:
            raise
        in_flight = _UNSUMMED.pop(manager, None)
        _raise_disk_full(manager, in_flight[-1] if in_flight else step, e)
    _write_pending_checksums(manager)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    metrics: dict | None = None,
    selection: dict | None = None,
) -> None:
    """Starts an asynchronous save of the train state at `step` (with metrics for best-of) and,
    if given, the record of which weights won validation (`selection`), in the same checkpoint.
    The previous save is finished (and checksummed) first."""
    finish(manager, step)
    items = {"state": ocp.args.StandardSave(state)}
    if selection is not None:
        items["selection"] = ocp.args.JsonSave(selection)
    try:
        manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:
        if _disk_full(e) is None:
            raise
        _raise_disk_full(manager, step, e)
    _UNSUMMED.setdefault(manager, []).append(step)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores the train state saved at `step` onto the shardings of `abstract_state`."""
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    return restored["state"]


def _key(path) -> str:
    """A tree path as Orbax names it on disk: dict keys, sequence indices and namedtuple fields
    (an optimizer state's) alike."""
    names = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
        else:
            names.append(str(k))
    return "/".join(names)


def _shape_differences(step_dir: Path, abstract_state) -> list[str]:
    """How the parameter tree saved in `step_dir` differs from `abstract_state` (paths and
    shapes); raises whatever reading the metadata raises."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(step_dir / "state").item_metadata
    if metadata is None:
        raise ValueError("state/_METADATA is missing or unreadable (no parameter tree)")
    saved_tree = metadata.tree
    saved = {_key(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved_tree)}
    wanted = {
        _key(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_state)
    }
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: saved {saved.get(k)}, model {wanted.get(k)}"
            for k in keys if saved.get(k) != wanted.get(k)]  # fmt: skip


def _move_aside(manager, step: int, reason: str) -> None:
    directory = storage.path(manager.directory)
    aside = directory.parent / DAMAGED_DIR
    if jax.process_index() == 0:
        aside.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        target = aside / f"{step}-{stamp}"
        (directory / str(step)).rename(target)
        storage.write_text_atomic(target / "why.txt", reason + "\n")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"alz_jax moved aside checkpoint {step}")
    manager.reload()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _agree(value: int) -> int:
    """Process 0's `value`, on every process."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> tuple[object, int]:
    """(state, step) of the newest checkpoint that is whole, or (None, 0) when there is none.

    Steps that are damaged are moved aside, each named with its reason in one log line; when
    every step was damaged, a UserError says what was found. Shapes other than the model's
    stop the run (a UserError listing them): that is another model, not damage."""
    directory = storage.path(manager.directory)
    damaged: list[str] = []
    while steps := sorted(manager.all_steps(), reverse=True):
        step = steps[0]
        step_dir = Path(directory) / str(step) if not storage.is_url(directory) else None
        reason = verify(step_dir) if step_dir is not None and jax.process_index() == 0 else None
        if not _agree(reason is not None):
            try:
                diffs = _shape_differences(directory / str(step), abstract_state)
            except Exception as e:  # an unreadable metadata file is damage like any other
                reason = _first_line(e)
            else:
                if diffs:
                    raise UserError(
                        f"Checkpoint {step} in {directory} holds another model than the config's "
                        f"({len(diffs)} parameters differ, e.g. {'; '.join(diffs[:3])}). Use "
                        "another --workdir, or restore the settings of that run."
                    )
                try:
                    return restore(manager, step, abstract_state), step
                except Exception as e:  # whatever Orbax raises on a file it can't read
                    reason = _first_line(e)
        reason = reason or "damaged on process 0"
        logging.warning(
            "Checkpoint %d in %s is damaged (%s): moved to %s; trying the next newest.",
            step, directory, reason, directory.parent / DAMAGED_DIR,
        )  # fmt: skip
        damaged.append(f"step {step}: {reason}")
        _move_aside(manager, step, reason)
    if damaged:
        raise UserError(
            f"No checkpoint in {directory} can be restored: {'; '.join(damaged)}. They are kept in "
            f"{directory.parent / DAMAGED_DIR}. Start afresh in a new --workdir (or empty "
            f"{directory})."
        )
    return None, 0


def restore_weights(manager: ocp.CheckpointManager, step: int, abstract_weights: dict) -> dict:
    """Restores only the named weight trees of the train state saved at `step` (e.g. {'params':
    ..., 'ema': ...} of ShapeDtypeStructs with shardings): no optimizer state is read, so an
    evaluation needs neither the optimizer nor its memory. Read with a PyTree checkpointer of
    its own: the manager's 'state' handler (StandardCheckpointHandler) can't restore part.
    A step that fails its checksums is refused, naming the damage."""
    step_dir = storage.path(manager.directory) / str(step)
    reason = None if storage.is_url(step_dir) else verify(Path(step_dir))
    if reason is not None:
        others = sorted(s for s in manager.all_steps() if s != step)
        raise UserError(
            f"Checkpoint {step} in {manager.directory} is damaged ({reason}). Choose another "
            f"with --checkpoint=STEP (saved: {others}); a training resume moves it aside."
        )
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            storage.path(manager.directory) / str(step) / "state",
            args=ocp.args.PyTreeRestore(
                item=abstract_weights,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_weights),
                partial_restore=True,
            ),
        )
    return dict(restored)


def restore_selection(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The weights selection saved with checkpoint `step`, or None (e.g. a preemption save)."""
    if not (storage.path(manager.directory) / str(step) / "selection").exists():
        return None
    restored = manager.restore(step, args=ocp.args.Composite(selection=ocp.args.JsonRestore()))
    return dict(restored["selection"])


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
    """'best', 'latest' or a step number -> a saved step; a clear error if there is none."""
    steps = manager.all_steps()
    if not steps:
        raise UserError(f"No checkpoints in {manager.directory}.")
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()
        return best if best is not None else manager.latest_step()
    if not which.isdigit() or int(which) not in steps:
        raise UserError(f"Checkpoint {which!r} not found; saved steps: {sorted(steps)}.")
    return int(which)
