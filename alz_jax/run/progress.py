"""What a person watches: console lines and the TensorBoard summaries of a run's set-up.

One console line per log step (`step 220/505 (43%) ep 2.2 | loss 0.291 acc 0.948 | lr 1.7e-3 |
246 img/s | data 4% | ETA 0:58`), one per validation (each weight set's key metrics and the
winner), the parameter count per stage at the start; the full config goes to the run record and
TensorBoard's Text tab, and the HParams tab gets the fields people compare runs on, first.
"""

from __future__ import annotations

import datetime

import jax
import ml_collections
import numpy as np

from alz_jax.core import averaging
from alz_jax.evaluation import metric_registry
from alz_jax.models import registry
from alz_jax.run import specs

# (run, tag) of the metrics the HParams tab shows per trial: final validation and test results.
HPARAM_METRICS = metric_registry.hparam_metrics()
SELECTED_CODE = {"raw": 0, "ema": 1, "swa": 2}


def model_label(spec) -> str:
    """The HParams tab's model column: the family's label (ConvNeXt's 'dims / depths'), else
    its title."""
    return registry.hparams_label(spec)


def hparams(run: specs.RunSpec, plan: specs.Plan) -> dict:
    """The fields runs are compared on, in the HParams tab's column order."""
    averages = [n for n, on in (("ema", plan.averages.ema), ("swa", plan.averages.swa)) if on]
    mix = plan.pipeline.mix
    return {
        "model": model_label(run.model),
        "image_size": run.pipeline.image_size,
        "batch_size": run.batch_size,
        "learning_rate": run.optim.learning_rate,
        "epochs": round(plan.total_steps / plan.steps_per_epoch, 2),
        "weight_decay": run.optim.weight_decay,
        "drop_path_rate": run.model.drop_path_rate,
        "mixing": f"p={mix.prob:g} mixup={mix.mixup_alpha:g} cutmix={mix.cutmix_alpha:g}"
        if mix.enabled else "off",
        "averages": "+".join(averages) or "none",
        "ema_decay": plan.averages.ema_decay if plan.averages.ema else 0.0,
        "warmup_steps": plan.warmup_steps,
        "steps": plan.total_steps,
        "seed": run.seed,
        "protocol": run.data.protocol,
        "compute_dtype": str(run.model.dtype),
    }  # fmt: skip


def config_table(config: ml_collections.ConfigDict) -> str:
    """The whole config as a Markdown table (field | value), for TensorBoard's Text tab."""
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}{key}.", value[key])
        else:
            rows.append(f"| `{prefix[:-1]}` | `{value!r}` |")

    walk("", config.to_dict())
    return "| field | value |\n| --- | --- |\n" + "\n".join(rows)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def parameter_overview(params: dict) -> str:
    """'Parameters: 27.82M (stem 4.7k | stage 1 0.24M | ... | head 0.5k)': per stage, the stage's
    blocks with the downsampling before it."""
    parts = []
    if "stem" in params:
        parts.append(f"stem {_short(_count(params['stem']))}")
    stages = params.get("stages", {})
    downsamples = params.get("downsamples", {})
    # downsamples[i] leads from stage i to stage i + 1: counted with the stage it leads into.
    by_index = {int(k): v for k, v in downsamples.items()}
    for key in sorted(stages, key=int):
        n = _count(stages[key]) + _count(by_index.get(int(key) - 1, {}))
        parts.append(f"stage {int(key) + 1} {_short(n)}")
    listed = {"stem", "stages", "downsamples"}
    parts += [f"{k} {_short(_count(v))}" for k, v in params.items() if k not in listed]
    return f"Parameters: {_short(_count(params))} ({' | '.join(parts)})"


def model_lines(run: specs.RunSpec, plan: specs.Plan) -> list[str]:
    """The model and how it trains, in two lines short enough for a console ('Model ConvNeXt
    depths (1, 1, 3, 1), dims (32, 64, 128, 256), compute float32' and 'Train step jit, 1
    microbatch(es) per step, weights raw+ema+swa, 1 device(s) of 1 process(es)')."""
    weights = "+".join(averaging.available(plan.averages, plan.total_steps))
    return [
        f"Model {registry.title(run.model)}, compute {run.model.dtype}",
        f"Train step {run.step.impl}, {run.step.grad_accum_steps} microbatch(es) per step, "
        f"weights {weights}, {jax.device_count()} device(s) of {jax.process_count()} process(es)",
    ]


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def step_line(done: int, plan: specs.Plan, scalars: dict, batch_size: int) -> str:
    """`step 220/505 (43%) ep 2.2 | loss 0.291 acc 0.948 | lr 1.7e-3 | 246 img/s | data 4% |
    ETA 0:58` from the interval's means (`train/*` scalars); an interval holding only the
    compiling first step has no timing yet."""
    total = plan.total_steps
    line = (
        f"step {done}/{total} ({100 * done / total:.0f}%) ep {done / plan.steps_per_epoch:.1f} | "
        f"loss {scalars['train/loss']:.3f} acc {scalars['train/accuracy']:.3f} | "
        f"lr {scalars['train/learning_rate']:.1e}"
    )
    step_time = scalars.get("train/step_time_s")
    if step_time is None:
        return line + " | timing from the next step on (this one compiled)"
    return (
        f"{line} | {batch_size / step_time:.0f} img/s | "
        f"data {100 * scalars['train/data_wait_s'] / step_time:.0f}% | "
        f"ETA {_eta((total - done) * step_time)}"
    )


def validation_line(step: int, per_weights: dict[str, dict], selection: dict) -> str:
    """`validation 220 loss/acc/scan acc/AUC: raw 0.310 0.930 0.950 0.980 | ema ... -> ema`
    (the registry's progress columns)."""
    columns = metric_registry.progress_columns()
    parts = [
        " ".join([w, *(f"{m.get(name, float('nan')):.3f}" for name, _ in columns)])
        for w, m in per_weights.items()
    ]
    metric = selection["metric"].removeprefix("validation/")
    names = "/".join(short for _, short in columns)
    return f"validation {step} {names}: {' | '.join(parts)} -> {selection['weights']} (by {metric})"


def selection_text(step: int, selection: dict) -> str:
    """The winner of a validation, for the Text tab."""
    metric = selection["metric"].removeprefix("validation/")
    values = ", ".join(f"{w} {v:.4f}" for w, v in selection["values"].items())
    return f"Step {step}: **{selection['weights']}** weights selected by {metric} ({values})."
