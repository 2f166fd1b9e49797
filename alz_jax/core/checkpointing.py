"""Orbax checkpoints: asynchronous saves keeping the latest k and the best by a validation metric.

The preservation policy combines both (a checkpoint survives if either keeps it), so the best
checkpoint is never deleted by newer ones and a crash never leaves only an old best.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import grain
import grain.checkpoint
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from alz_jax.host import storage
from alz_jax.host.errors import UserError, check_fields

# Names of the validation scalars a best checkpoint may be chosen on.
BEST_METRICS = tuple(
    f"validation/{name}"
    for name in ("loss", "accuracy", "balanced_accuracy", "scan_accuracy", "roc_auc")
)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """How many checkpoints are kept, and the validation metric that picks the best."""

    keep_latest: int = 2
    keep_best: int = 1
    best_metric: str = "validation/loss"
    best_mode: str = "min"

    def __post_init__(self):
        mode = "min" if self.best_metric.endswith("/loss") else "max"
        check_fields("checkpoint", [
            ("keep_latest", self.keep_latest, self.keep_latest >= 1, ">= 1"),
            ("keep_best", self.keep_best, self.keep_best >= 1, ">= 1"),
            ("best_metric", self.best_metric, self.best_metric in BEST_METRICS,
             "|".join(BEST_METRICS)),
            ("best_mode", self.best_mode, self.best_mode == mode, f"{mode} for {self.best_metric}"),
        ])  # fmt: skip


def make_manager(
    workdir: str | Path, ckpt_config: CheckpointSpec, *, for_training: bool = False
) -> ocp.CheckpointManager:
    """The run's CheckpointManager under <workdir>/checkpoints. Only the training process
    (`for_training`) removes half-written checkpoints: another process (an evaluation of a
    running training) would delete the save in flight."""
    metric, mode = ckpt_config.best_metric, ckpt_config.best_mode

    def metric_of(metrics: dict) -> float:
        return float(metrics[metric])

    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=ckpt_config.keep_latest),
                policies.BestN(
                    get_metric_fn=metric_of,
                    reverse=mode == "min",
                    n=ckpt_config.keep_best,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        ),
        best_fn=metric_of,
        best_mode=mode,
        enable_async_checkpointing=True,
        create=True,
        # A save killed mid-write leaves <step>.orbax-checkpoint-tmp: never listed; the training
        # that resumes removes it.
        cleanup_tmp_directories=for_training,
    )
    local = not storage.is_url(workdir)
    directory = storage.path(os.path.abspath(workdir) if local else workdir) / "checkpoints"
    return ocp.CheckpointManager(
        directory, options=options, item_names=("state", "data_iter", "selection")
    )


def has_checkpoint(workdir) -> bool:
    """Whether `workdir` holds a finished checkpoint (a run to resume), without opening it."""
    directory = storage.path(workdir) / "checkpoints"
    return directory.exists() and any(p.name.isdigit() for p in directory.iterdir())


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    metrics: dict | None = None,
    data_iterator: grain.DatasetIterator | None = None,
    selection: dict | None = None,
) -> None:
    """Starts an asynchronous save of the train state at `step` (with metrics for best-of) and,
    if given, the Grain iterator's position and the record of which weights won validation
    (`selection`), in the same checkpoint."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iterator)
    if selection is not None:
        items["selection"] = ocp.args.JsonSave(selection)
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state,
    data_iterator: grain.DatasetIterator | None = None,
):
    """Restores the train state saved at `step` onto the shardings of `abstract_state`; if a
    Grain iterator is given, also sets it to the saved position (in place)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]


def restore_weights(manager: ocp.CheckpointManager, step: int, abstract_weights: dict) -> dict:
    """Restores only the named weight trees of the train state saved at `step` (e.g. {'params':
    ..., 'ema': ...} of ShapeDtypeStructs with shardings): no optimizer state is read, so an
    evaluation needs neither the optimizer nor its memory. Read with a PyTree checkpointer of
    its own: the manager's 'state' handler (StandardCheckpointHandler) can't restore part."""
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
