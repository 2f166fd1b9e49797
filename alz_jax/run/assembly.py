"""The one assembly of a trainable model: model, optimizer and schedule, weight averages, the
train state (fresh, imported or abstract for a restore) and the compiled train and predict steps.

Training, the benchmarks and the tests all build through `assemble`, so they run the same code.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import optax

from alz_jax.core import averaging, optim, steps
from alz_jax.models import registry
from alz_jax.run.specs import Plan, RunSpec


@dataclasses.dataclass(frozen=True)
class Assembly:
    """A run's model with its optimizer, schedule, averages and compiled steps; the state
    itself is made by `fresh_state` or restored into `abstract_state`."""

    model: steps.Model
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    averages: averaging.AveragingSpec
    mesh: jax.sharding.Mesh
    train_step: Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]
    predict_step: Callable
    statistics_pass: Callable | None = None  # BatchNorm models: SWA's statistics pass

    def fresh_state(self, seed: int, params=None) -> steps.TrainState:
        """A new train state on the mesh, from `params` (imported weights: a parameter tree or
        a (params, batch_stats) pair) or a fresh init."""
        return steps.create_train_state(
            self.model.spec, self.tx, self.mesh, seed, self.averages, params
        )

    def abstract_state(self) -> steps.TrainState:
        """Shapes, dtypes and shardings of the train state (what a restore fills)."""
        return steps.abstract_train_state(self.model.spec, self.tx, self.mesh, self.averages)


def assemble(
    run: RunSpec, plan: Plan, mesh: jax.sharding.Mesh, pixel_stats: dict[str, float]
) -> Assembly:
    """The model, optimizer, averages and steps of `run` over `plan`'s steps on `mesh`."""
    schedule = optim.learning_rate_schedule(run.optim, plan.total_steps, plan.warmup_steps)
    pattern = run.trainable_regex
    frozen_norms = (
        steps.frozen_batch_norms(run.model, pattern)
        if run.optim.frozen_batchnorm == "running"
        else ()
    )
    model = steps.make_model(run.model, frozen_norms, outputs=run.task.device_outputs)
    tx = optim.make_optimizer(
        run.optim,
        schedule,
        layer_ids=functools.partial(registry.layer_ids, run.model),
        trainable_pattern=pattern,
    )
    return Assembly(
        model=model,
        tx=tx,
        schedule=schedule,
        averages=plan.averages,
        mesh=mesh,
        train_step=steps.make_train_step(
            model, tx, schedule, plan.step, pixel_stats, mesh, plan.averages
        ),
        predict_step=steps.make_predict_step(model, pixel_stats, mesh),
        statistics_pass=steps.make_statistics_pass(model, pixel_stats, mesh)
        if model.batch_stats and plan.averages.swa
        else None,
    )
