"""A training run stopped in-process at a chosen step, as a killed process would be, for the
resume tests (tests/test_train.py, tests/test_families_train.py)."""

import pytest

from alz_jax.core import steps
from alz_jax.run import train


class PreemptedError(Exception):
    """Raised in place of a train step, to stop a run where a preemption would."""


def train_until(monkeypatch, config, workdir: str, step: int) -> None:
    """Runs `train.train_and_evaluate(config, workdir)` until the train step would start from
    state step `step`, which raises PreemptedError instead; the real step factory is restored
    afterwards, so the same command then resumes."""
    real_factory = steps.make_train_step

    def interrupting_factory(*args, **kwargs):
        step_fn = real_factory(*args, **kwargs)

        def wrapped(state, batch):
            if int(state["step"]) == step:
                raise PreemptedError
            return step_fn(state, batch)

        return wrapped

    monkeypatch.setattr(steps, "make_train_step", interrupting_factory)
    with pytest.raises(PreemptedError):
        train.train_and_evaluate(config, workdir)
    monkeypatch.setattr(steps, "make_train_step", real_factory)
