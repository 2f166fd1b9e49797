"""Command: compare models trained on the same data, on one split.

    python -m alz_jax.compare --workdirs=runs/convnext,runs/vit[,...] [--names=A,B,...] \
        [--split=test] [--out=DIR] [--resamples=1000] [--seed=0] [--batch=0] [--timed_steps=5] \
        [--warmup_steps=2] [--perturbations=all|none|noise,jpeg,...] \
        [--levels='noise=0.05,0.1;jpeg=50,10'] [--noevaluate_missing]

The first workdir is the reference A. Each run is named by --names, one per workdir in the same
order, or else by its config and model family ("demo_resnet (ResNet)"). Writes into --out
(default: `compare` beside the first workdir) compare.md, compare.json and the figures: each
model's metrics with subject-bootstrap intervals, the paired bootstrap difference of each model
to A on the same subjects, parameters, FLOPs, measured throughput and memory on this machine,
and robustness curves under graded perturbations (alz_jax/run/compare_runs.py; docs/compare.md
says what each number means). A run without a report on the split has its best checkpoint
evaluated first (--noevaluate_missing refuses instead). Runs tested on different images are
refused, naming the differences, and so is a workdir whose run is still training (it holds
run.lock): nothing is read or written there.
"""

from absl import flags

from alz_jax.evaluation import compare_stats as stats
from alz_jax.evaluation import robustness
from alz_jax.host import command
from alz_jax.run import compare_runs

_WORKDIRS = flags.DEFINE_list(
    "workdirs",
    None,
    "Workdirs of the runs to compare, comma-separated; the first is the reference.",
    required=True,
)
_NAMES = flags.DEFINE_list(
    "names",
    None,
    "A name per workdir, comma-separated, in --workdirs order (default: each run's config and "
    "model family, e.g. 'demo_resnet (ResNet)').",
)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split compared.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder (default: `compare` beside the first workdir)."
)
_RESAMPLES = flags.DEFINE_integer("resamples", 1000, "Subject bootstrap resamples.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the resamples and of the perturbations.")
_BATCH = flags.DEFINE_integer(
    "batch",
    0,
    f"Throughput batch (0: each run's batch size, at most {compare_runs.MAX_DEFAULT_BATCH}).",
)
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 2, "Untimed steps before timing.")
_TIMED_STEPS = flags.DEFINE_integer("timed_steps", 5, "Timed steps (0: no throughput/memory).")
_PERTURBATIONS = flags.DEFINE_string(
    "perturbations", "all", f"all, none, or some of {','.join(robustness.PERTURBATIONS)}."
)
_LEVELS = flags.DEFINE_string(
    "levels", "", "Levels replacing a perturbation's defaults: 'noise=0.05,0.1;jpeg=50,10'."
)
_WEIGHTED_VOTE = flags.DEFINE_bool(
    "weighted_vote",
    False,
    "Also compare each slice run's soft vote weighted by slice position (ClinicaDL's), as a "
    "model named '<run> + weighted vote' after it.",
)
_EVALUATE_MISSING = flags.DEFINE_bool(
    "evaluate_missing",
    True,
    "Evaluate the best checkpoint of a run without a report on the split (else refuse).",
)


def main(argv: list[str]) -> None:
    """Compares the runs and writes the report."""
    del argv
    settings = compare_runs.CompareSettings(
        split=_SPLIT.value,
        resamples=_RESAMPLES.value,
        seed=_SEED.value,
        batch=_BATCH.value,
        warmup_steps=_WARMUP_STEPS.value,
        timed_steps=_TIMED_STEPS.value,
        perturbations=tuple(robustness.parse_perturbations(_PERTURBATIONS.value)),
        levels=robustness.parse_levels(_LEVELS.value),
        evaluate_missing=_EVALUATE_MISSING.value,
        weighted_vote=_WEIGHTED_VOTE.value,
    )
    out = _OUT.value or compare_runs.default_out(_WORKDIRS.value)
    result = compare_runs.compare(_WORKDIRS.value, out, settings, _NAMES.value)
    print(stats.format_summary(result))
    print(
        f"Written: {result['out']}/compare.md, compare.json and {len(result['figures'])} figures."
    )


if __name__ == "__main__":
    command.run(main)
