"""The console lines a person reads: their content, and the parameter count per stage."""

import jax
import numpy as np

from alz_jax.models import convnext
from alz_jax.run import progress, specs

PLAN = specs.Plan(steps_per_epoch=100, total_steps=505, warmup_steps=101, eval_every_steps=101)


def test_step_line_reads_like_the_issue_asks_and_stays_short():
    scalars = {"train/loss": 0.2914, "train/accuracy": 0.9481, "train/learning_rate": 1.7e-3,
               "train/step_time_s": 0.26, "train/data_wait_s": 0.0104}  # fmt: skip
    line = progress.step_line(220, PLAN, scalars, batch_size=64)
    assert line == ("step 220/505 (44%) ep 2.2 | loss 0.291 acc 0.948 | lr 1.7e-03 | "
                    "246 img/s | data 4% | ETA 0:01:14")  # fmt: skip
    first = progress.step_line(1, PLAN, {k: v for k, v in scalars.items() if "time" not in k
                                         and "wait" not in k}, 64)  # fmt: skip
    assert first.endswith("| timing from the next step on (this one compiled)")


def test_validation_line_names_each_weight_set_and_the_winner():
    per_weights = {w: {"loss": 0.1 * i, "accuracy": 0.9, "scan_accuracy": 0.95, "roc_auc": 0.99}
                   for i, w in enumerate(("raw", "ema", "swa"), start=1)}  # fmt: skip
    selection = {"weights": "raw", "metric": "validation/loss", "value": 0.1,
                 "values": {"raw": 0.1, "ema": 0.2, "swa": 0.3}}  # fmt: skip
    line = progress.validation_line(303, per_weights, selection)
    assert line == (
        "validation 303 loss/acc/scan acc/AUC: raw 0.100 0.900 0.950 0.990 | "
        "ema 0.200 0.900 0.950 0.990 | swa 0.300 0.900 0.950 0.990 -> raw (by loss)"
    )
    assert len(line) + 52 <= 200  # with absl's prefix
    assert progress.selection_text(303, selection).startswith("Step 303: **raw** weights")


def test_parameter_overview_counts_each_stage_exactly():
    spec = convnext.ConvNeXtSpec(depths=(1, 1), dims=(8, 16), in_chans=1, num_classes=2)
    params = jax.eval_shape(lambda: convnext.init_params(spec, 0))
    total = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    line = progress.parameter_overview(params)
    assert line.startswith(f"Parameters: {total / 1e3:.1f}k (stem ")
    # Stage 2 with the downsampling that leads into it (downsamples[0]).
    stage_2 = sum(np.prod(x.shape) for x in jax.tree.leaves(params["stages"][1]))
    stage_2 += sum(np.prod(x.shape) for x in jax.tree.leaves(params["downsamples"][0]))
    assert f"stage 2 {stage_2 / 1e3:.1f}k" in line
    parts = line.split("(")[1].rstrip(")").split(" | ")
    listed = sum(float(p.split()[-1].rstrip("k")) * (1e3 if p.endswith("k") else 1) for p in parts)
    assert abs(listed - total) <= 0.05e3 * len(parts)  # the parts add up to the total
