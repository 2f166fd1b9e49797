"""`bench compare`: the PyTorch anchor (alz_jax/reference/torch_reference.py, in a separate
PyTorch virtualenv) and `bench step` alternately, A B A B, in fresh processes with identical
settings (the same model for both); the ratio per round and its median. This process starts no
JAX runtime: the children have the accelerator."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from alz_jax.bench import common, step
from alz_jax.bench.settings import Settings
from alz_jax.models import registry

# The model is only named here (the children resolve it on their device): any backend names it.
_NAMING_BACKEND = "cpu"


def compare_commands(args: Settings) -> tuple[str, list[str], list[str]]:
    """The model's registry name, and the anchor's and `step`'s command lines for it with the
    same settings (batch, size, channels, dtype, steps; the config's classes and stochastic
    depth for the anchor); `step` gets the config file and its --config overrides as well."""
    model = step.chosen_model(args, backend=_NAMING_BACKEND)
    name = step.model_name(model, args)
    if name not in registry.NAMES:
        raise SystemExit(
            f"compare: the config's model ({name}) is not a named model the PyTorch anchor "
            f"builds; give --model (one of {', '.join(sorted(registry.NAMES))})."
        )
    common_args = [f"--batch={args.batch}", f"--res={args.res}", f"--in_chans={args.in_chans}",
                   f"--dtype={args.dtype}", f"--steps={args.steps}"]  # fmt: skip
    torch_cmd = [args.torch_python, os.fspath(args.reference), f"--model={name}", *common_args,
                 f"--classes={model.num_classes}",
                 f"--drop_path_rate={model.drop_path_rate}"]  # fmt: skip
    jax_cmd = [sys.executable, "-m", "alz_jax.bench", "step", f"--config={args.config}",
               *common.config_override_args(), f"--model={name}", *common_args]  # fmt: skip
    if args.depthwise:
        jax_cmd.append(f"--depthwise={args.depthwise}")
    return name, torch_cmd, jax_cmd


def _check_paths(args: Settings) -> None:
    if not Path(args.torch_python).exists():
        raise SystemExit(
            f"--torch_python={args.torch_python} does not exist: make a virtualenv with "
            "torch==2.14.1 torchvision==0.29.1 timm==1.0.31 (see "
            "alz_jax/reference/torch_reference.py) and pass its python."
        )
    if not Path(args.reference).exists():
        raise SystemExit(f"--reference={args.reference}: no such file (the PyTorch anchor).")


def run(args: Settings) -> dict:
    """Runs the PyTorch anchor and `step` alternately in fresh processes; ratio per round."""
    _check_paths(args)
    name, torch_cmd, jax_cmd = compare_commands(args)
    rounds = []
    for _ in range(args.rounds):
        anchor = common.run_json(torch_cmd)
        ours = common.run_json(jax_cmd)
        rounds.append(
            {
                "torch_img_per_s": anchor["img_per_s"],
                "jax_img_per_s": ours["img_per_s"],
                "ratio": round(ours["img_per_s"] / anchor["img_per_s"], 3),
                "jax_achieved_gflop_per_s": ours["achieved_gflop_per_s"],
                "jax_first_step_s": ours["first_step_s"],
                "torch_first_step_s": anchor["first_step_s"],
            }
        )
        print(json.dumps({"round": len(rounds), **rounds[-1]}), file=sys.stderr, flush=True)
    settings = {"model": name, "batch": args.batch, "res": args.res, "in_chans": args.in_chans,
                "dtype": args.dtype, "steps": args.steps}  # fmt: skip
    return {
        "bench": "compare",
        "anchor": os.fspath(args.reference),
        "settings": settings,
        "anchor_model": anchor.get("builder"),
        "jax_model": ours["title"],
        "model_gflop_per_image": ours["model_gflop_per_image"],
        "jax_depthwise": ours["depthwise"],
        "config_hash": ours["config_hash"],
        "rounds": rounds,
        "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "glibc_tunables_both": os.environ.get("GLIBC_TUNABLES", ""),
    }
