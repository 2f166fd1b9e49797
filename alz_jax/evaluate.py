"""Evaluation: predictions over a split, the slice/scan/subject report, and its command line.

One path serves validation during training, the test report at the end of `main`, and

    python -m alz_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best|latest|STEP] \
        [--weights=selected|raw|ema|swa]

which writes <workdir>/report_<split>.json and prints the summary table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from jax.experimental import multihost_utils

from alz_jax import metrics, sharding
from alz_jax.data import input_pipeline

REPORT_LEVELS = ("slice", "scan", "subject")


def predict_split(data, split: str, params, predict_fn, config, mesh) -> np.ndarray:
    """P(AD) for every image of a split, in record order; every image is counted exactly once."""
    return predict_split_multi(data, split, {"params": params}, predict_fn, config, mesh)["params"]


def predict_split_multi(
    data, split: str, params_by_name: dict, predict_fn, config, mesh
) -> dict[str, np.ndarray]:
    """P(AD) of a split under several weight sets (raw, EMA, SWA) in one pass over the data."""
    n = data.num_examples(split)
    prob_ad = {name: np.full(n, np.nan, np.float64) for name in params_by_name}
    seen = np.zeros(n, np.int64)
    batch_sharding = sharding.batch_sharded(mesh)
    dataset = input_pipeline.eval_dataset(data.source(split), config, config.batch_size)
    iterator = iter(dataset)
    try:
        for batch in iterator:
            images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
            indices = jax.make_array_from_process_local_data(batch_sharding, batch["index"])
            probs = {name: predict_fn(p, images) for name, p in params_by_name.items()}
            probs, indices = multihost_utils.process_allgather((probs, indices), tiled=True)
            valid = indices >= 0
            for name in params_by_name:
                prob_ad[name][indices[valid]] = probs[name][valid, 1]
            np.add.at(seen, indices[valid], 1)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    if not np.all(seen == 1):
        raise RuntimeError(
            f"Evaluation of {split} counted images {seen.min()}..{seen.max()} times; expected once."
        )
    return prob_ad


def validation_metrics(records: dict, prob_ad: np.ndarray) -> dict:
    """Flat scalars for TensorBoard and best-checkpoint selection: loss, accuracy, scan, AUC."""
    levels = metrics.multilevel_metrics(records, prob_ad, subjects_known=False)
    out = {
        "loss": metrics.nll(records["label"], prob_ad),
        "accuracy": levels["slice"]["accuracy"],
        "balanced_accuracy": levels["slice"]["balanced_accuracy"],
        "scan_accuracy": levels["scan"]["accuracy"],
    }
    if levels["slice"]["roc_auc"] is not None:
        out["roc_auc"] = levels["slice"]["roc_auc"]
    return out


def build_report(
    split: str, records: dict, prob_ad: np.ndarray, data_metadata: dict, step: int
) -> dict:
    """The report of one split: metrics per level plus what the numbers rest on."""
    subjects_known = data_metadata.get("subject_source") != "scan_id"
    report = {
        "split": split,
        "checkpoint_step": int(step),
        "weights": "raw",
        "subjects_known": subjects_known,
        "subject_source": data_metadata.get("subject_source"),
        "subject_coverage": data_metadata.get("subject_coverage"),
        "protocol": data_metadata.get("protocol"),
        "num_images": len(prob_ad),
        "loss": metrics.nll(records["label"], prob_ad),
        **metrics.multilevel_metrics(records, prob_ad, subjects_known),
    }
    if not subjects_known:
        report["subject_note"] = "subjects unknown (no metadata): subject level not reported"
    if split == "test":
        report["test_subjects_also_in_train"] = data_metadata.get("test_subjects_also_in_train")
    return report


def format_report(report: dict) -> str:
    """A readable table of the report."""
    lines = [
        f"Report: {report['split']} split, checkpoint step {report['checkpoint_step']} "
        f"({report['weights']} weights), "
        f"{report['num_images']} images, subjects from {report['subject_source']}",
        f"{'level':<8} {'n':>6} {'acc':>6} {'bal_acc':>7} {'sens':>6} {'spec':>6} "
        f"{'F1 NC':>6} {'F1 AD':>6} {'AUC':>6}  confusion [[TN FP] [FN TP]]",
    ]
    for level in REPORT_LEVELS:
        if level not in report:
            continue
        m = report[level]
        auc = f"{m['roc_auc']:.3f}" if m["roc_auc"] is not None else "  -  "
        lines.append(
            f"{level:<8} {m['n']:>6} {m['accuracy']:>6.3f} {m['balanced_accuracy']:>7.3f} "
            f"{m['sensitivity']:>6.3f} {m['specificity']:>6.3f} {m['per_class']['NC']['f1']:>6.3f} "
            f"{m['per_class']['AD']['f1']:>6.3f} {auc:>6}  {m['confusion_matrix']['counts']}"
        )
    if report.get("test_subjects_also_in_train"):
        lines.append(
            f"Note: {report['test_subjects_also_in_train']} test subjects also have visits in "
            "train or validation: test accuracy is optimistic."
        )
    coverage = report.get("subject_coverage")
    if not report["subjects_known"]:
        lines.append(
            "Note: subjects unknown (no metadata): splits are by scan, and one subject's visits "
            "may be in train and in validation or test."
        )
    elif coverage is not None and coverage < 1.0:
        lines.append(f"Note: subjects known for {coverage:.1%} of scans; the rest stand alone.")
    return "\n".join(lines)


PREDICTION_COLUMNS = ("file_name", "scan_id", "subject_id", "label", "prob_ad")


def write_predictions(records: dict, prob_ad: np.ndarray, path: str | Path) -> None:
    """One CSV row per image: file_name, scan_id, subject_id, label, prob_ad (process 0)."""
    if jax.process_index() != 0:
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for i in range(len(prob_ad)):
            writer.writerow([records["file_name"][i], records["scan_id"][i],
                             records["subject_id"][i], int(records["label"][i]),
                             f"{prob_ad[i]:.6f}"])  # fmt: skip


def read_predictions(path: str | Path) -> tuple[dict, np.ndarray]:
    """Reads a predictions CSV back into (records, prob_ad)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    records = {
        k: np.asarray([r[k] for r in rows], dtype=object)
        for k in ("file_name", "scan_id", "subject_id")
    }
    records["label"] = np.asarray([int(r["label"]) for r in rows], np.int64)
    return records, np.asarray([float(r["prob_ad"]) for r in rows], np.float64)


def write_report(report: dict, workdir: str | Path) -> Path:
    """Writes <workdir>/report_<split>.json (process 0 only); returns its path."""
    path = Path(workdir) / f"report_{report['split']}.json"
    if jax.process_index() == 0:
        path.write_text(json.dumps(report, indent=1))
    return path


def _define_flags() -> None:
    # Defined only when run as a command, so that `main` can import this module.
    from alz_jax import distributed

    distributed.define_flags()
    flags.DEFINE_string("workdir", None, "Workdir of a training run.", required=True)
    flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
    flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
    flags.DEFINE_enum(
        "weights",
        "selected",
        ["selected", "raw", "ema", "swa"],
        "Weights to evaluate; 'selected': those that won the checkpoint's validation.",
    )


def main(argv: list[str]) -> None:
    """Evaluates a checkpoint of a finished or running training on one split."""
    del argv
    from alz_jax import distributed, logs, train
    from alz_jax.errors import exit_on_user_error

    logs.setup()
    with exit_on_user_error():
        distributed.initialize_from_flags()
        report = train.evaluate_checkpoint(
            flags.FLAGS.workdir, flags.FLAGS.split, flags.FLAGS.checkpoint, flags.FLAGS.weights
        )
    print(format_report(report))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
