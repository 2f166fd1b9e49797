"""P(AD) for image files or folders with a trained run's weights, threshold and temperature: the
library of `python -m alz_jax.predict` (and the model loading `export` shares). A model of K > 2
classes (dementia stages) gives each class's probability and calls the most probable.

Takes JPEG or PNG files of any size, grayscale or colour (converted to grayscale), and folders
(searched recursively for .jpg/.jpeg/.png). Each image gets the one evaluation preprocessing
(pad to a square, resize) and the run's normalisation. The temperature and the decision
thresholds are those chosen on the validation split, stored with the checkpoint. Files named
`<scanID>_<slice>.<ext>` are also grouped into scans (the mean of their slices' P(AD), called at
the scan threshold). An unreadable input is reported by name and the rest go on.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import jax
import numpy as np

from alz_jax.core import checkpointing, sharding, steps
from alz_jax.data import preprocess
from alz_jax.evaluation import metrics, multiclass
from alz_jax.host import tables
from alz_jax.host.errors import UserError
from alz_jax.run import run_record, specs, train

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SLICE_NAME = re.compile(r"^(?P<scan>[^_/]+)_(?P<slice>\d+)$")


def find_inputs(paths: list[str]) -> tuple[list[Path], list[dict]]:
    """Image files named or found under the given folders (sorted), and errors for paths that
    don't exist. A file named explicitly is tried whatever its suffix."""
    files, errors = [], []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
            if not found:
                errors.append({"file": str(path), "error": "folder holds no .jpg/.jpeg/.png"})
            files += found
        elif path.is_file():
            files.append(path)
        else:
            errors.append({"file": str(path), "error": "no such file or folder"})
    return files, errors


def load_model(workdir: str, which: str = "best", weights: str = "selected") -> dict:
    """The run's model, weights, pixel statistics, image size and the calibration (temperature,
    thresholds) stored with checkpoint `which`. Reads no data set."""
    run_spec = specs.resolve(run_record.load_config(workdir))
    record = run_record.load(workdir)
    manager = checkpointing.make_manager(workdir, run_spec.checkpoint)
    mesh = sharding.make_mesh()
    # Only which averages exist and their dtypes matter here, not the run's length.
    step, weights, params, selection = train.restore_weights(
        manager, which, run_spec.model, run_spec.averages, weights, mesh
    )
    calibration = (selection or {}).get("calibration", {}).get(weights)
    num_classes = run_spec.model.num_classes
    class_names = (selection or {}).get("class_names") or (
        list(metrics.CLASS_NAMES) if num_classes == 2 else [str(k) for k in range(num_classes)]
    )
    if calibration is None and num_classes > 2:
        logging.warning("Checkpoint %d stores no validation calibration for %s weights: "
                        "temperature 1.", step, weights)  # fmt: skip
        calibration = {"temperature": 1.0}
    elif calibration is None:
        logging.warning("Checkpoint %d stores no validation calibration for %s weights: "
                        "temperature 1, thresholds 0.5.", step, weights)  # fmt: skip
        calibration = {"temperature": 1.0, "thresholds": {lv: 0.5 for lv in metrics.LEVELS},
                       "threshold_method": "none stored: 0.5"}  # fmt: skip
    return {
        "model": steps.make_model(run_spec.model),
        "params": params,
        "mesh": mesh,
        "pixel_stats": record["pixel_stats"],
        "image_size": run_spec.pipeline.image_size,
        "step": step,
        "weights": weights,
        "calibration": calibration,
        "class_names": class_names,
    }


def predict_files(
    files: list[Path], loaded: dict, batch_size: int = 64
) -> tuple[list[dict], list[dict]]:
    """(rows, errors): one row per readable image {file, scan_id, slice, logit_ad, prob_ad,
    predicted}; one error {file, error} per unreadable one."""
    predict_fn = steps.make_predict_step(loaded["model"], loaded["pixel_stats"], loaded["mesh"])
    cal = loaded["calibration"]
    devices = loaded["mesh"].devices.size
    batch_sharding = sharding.batch_sharded(loaded["mesh"])
    rows, errors, pending = [], [], []

    def flush():
        if not pending:
            return
        images = np.stack([image for _, image in pending])
        padded = -len(images) % devices
        images = np.concatenate([images, np.zeros((padded, *images.shape[1:]), images.dtype)])
        margins = predict_fn(loaded["params"], jax.device_put(images, batch_sharding))
        margins = np.asarray(margins)[: len(pending)]
        if margins.ndim == 2:  # K > 2 classes: logits
            rows.extend(_class_rows([p for p, _ in pending], margins, loaded))
            pending.clear()
            return
        for (path, _), margin in zip(pending, margins, strict=True):
            prob = float(metrics.sigmoid(float(margin) / cal["temperature"]))
            match = SLICE_NAME.match(path.stem)
            rows.append({
                "file": str(path),
                "scan_id": match["scan"] if match else "",
                "slice": int(match["slice"]) if match else None,
                "logit_ad": float(margin),
                "prob_ad": prob,
                "predicted": "AD" if prob >= cal["thresholds"]["slice"] else "NC",
            })  # fmt: skip
        pending.clear()

    for path in files:
        try:
            image = preprocess.decode_image(path.read_bytes(), str(path))
            pending.append((path, preprocess.to_model_input(image, loaded["image_size"])))
        except (OSError, preprocess.DecodeError) as e:
            errors.append({"file": str(path), "error": str(e).removeprefix(f"{path}: ")})
        if len(pending) == batch_size:
            flush()
    flush()
    return rows, errors


def _class_rows(paths: list[Path], logits: np.ndarray, loaded: dict) -> list[dict]:
    """Rows of a K-class model: {file, scan_id, slice, predicted (the most probable class),
    prob_<class> for each class}, probabilities at the validation temperature."""
    temperature = loaded["calibration"]["temperature"]
    probs = multiclass.softmax(np.asarray(logits, np.float64) / temperature)
    names = loaded["class_names"]
    rows = []
    for path, p in zip(paths, probs, strict=True):
        match = SLICE_NAME.match(path.stem)
        rows.append({
            "file": str(path),
            "scan_id": match["scan"] if match else "",
            "slice": int(match["slice"]) if match else None,
            "predicted": names[int(np.argmax(p))],
            **{f"prob_{n}": float(v) for n, v in zip(names, p, strict=True)},
        })  # fmt: skip
    return rows


def scan_rows(rows: list[dict], calibration: dict, num_classes: int = 2) -> list[dict]:
    """Per scan (files named <scanID>_<slice>): slice count, mean P(AD), call at the scan
    threshold; with K > 2 classes, the mean of each class's probability and the most probable."""
    if num_classes > 2:
        return _class_scan_rows(rows) if rows else []
    by_scan: dict[str, list[float]] = {}
    for row in rows:
        if row["scan_id"]:
            by_scan.setdefault(row["scan_id"], []).append(row["prob_ad"])
    threshold = calibration["thresholds"]["scan"]
    return [
        {"scan_id": scan, "slices": len(p), "prob_ad": float(np.mean(p)),
         "predicted": "AD" if np.mean(p) >= threshold else "NC"}
        for scan, p in sorted(by_scan.items())
    ]  # fmt: skip


def _class_scan_rows(rows: list[dict]) -> list[dict]:
    names = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_")]
    by_scan: dict[str, list[list[float]]] = {}
    for row in rows:
        if row["scan_id"]:
            by_scan.setdefault(row["scan_id"], []).append([row[f"prob_{n}"] for n in names])
    out = []
    for scan, probs in sorted(by_scan.items()):
        mean = np.mean(probs, axis=0)
        out.append({
            "scan_id": scan, "slices": len(probs), "predicted": names[int(np.argmax(mean))],
            **{f"prob_{n}": float(v) for n, v in zip(names, mean, strict=True)},
        })  # fmt: skip
    return out


OUTPUT_SUFFIXES = (".csv", ".json")


def check_output(path: str | Path) -> Path:
    """The --output path, refused (UserError) unless it names a .csv or .json file in an
    existing folder: checked before any model is loaded or image read, so a typo costs nothing."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(
            f"--output={path}: expected a file name ending in .csv or .json, found "
            f"{path.suffix or 'no suffix'!r}. Name a .csv (images; scans and errors beside it) "
            "or a .json (everything)."
        )
    folder = path.parent
    if not folder.is_dir():
        raise UserError(
            f"--output={path}: the folder {folder} does not exist. Create it first "
            f"(mkdir -p {folder}) or write elsewhere."
        )
    if path.is_dir():
        raise UserError(f"--output={path} is a folder; expected a .csv or .json file name.")
    return path


def write_output(path: Path, result: dict) -> list[Path]:
    """JSON (everything) or CSV (images; scans in <stem>_scans.csv; errors in
    <stem>_errors.csv, text cells made spreadsheet-safe: host/tables.py); returns the files
    written."""
    path = check_output(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(result, indent=1))
        return [path]
    written = []
    for name, target in (("images", path), ("scans", path.with_name(path.stem + "_scans.csv")),
                         ("errors", path.with_name(path.stem + "_errors.csv"))):  # fmt: skip
        if name != "images" and not result[name]:
            continue
        fields = list(result[name][0]) if result[name] else ["file", "prob_ad"]
        tables.write_csv(target, fields, result[name])
        written.append(target)
    return written


def _format_classes(result: dict) -> list[str]:
    """The K-class table: the called class and its probability per image and scan."""
    lines = [f"Checkpoint step {result['checkpoint_step']} ({result['weights']} weights); "
             f"temperature {result['calibration']['temperature']:.3f}; the most probable class "
             f"of {', '.join(result['class_names'])}", f"{'P':>7} {'call':<18} file"]  # fmt: skip
    lines += [f"{r['prob_' + r['predicted']]:>7.3f} {r['predicted']:<18} {r['file']}"
              for r in result["images"]]  # fmt: skip
    if result["scans"]:
        lines.append(f"{'P':>7} {'call':<18} scan (slices)")
        lines += [f"{s['prob_' + s['predicted']]:>7.3f} {s['predicted']:<18} {s['scan_id']} "
                  f"({s['slices']})" for s in result["scans"]]  # fmt: skip
    return lines


def format_result(result: dict) -> str:
    """The table printed by the command."""
    if len(result.get("class_names", ())) > 2:
        lines = _format_classes(result)
        lines += [f"UNREADABLE  {e['file']}: {e['error']}" for e in result["errors"]]
        lines.append(
            f"{len(result['images'])} images predicted, {len(result['errors'])} unreadable."
        )
        return "\n".join(lines)
    cal = result["calibration"]
    lines = [
        f"Checkpoint step {result['checkpoint_step']} ({result['weights']} weights); temperature "
        f"{cal['temperature']:.3f}; thresholds chosen on validation ({cal['threshold_method']}):"
        f" slice {cal['thresholds']['slice']:.3f}, scan {cal['thresholds']['scan']:.3f}",
        f"{'P(AD)':>7} {'call':>4}  file",
    ]
    lines += [f"{r['prob_ad']:>7.3f} {r['predicted']:>4}  {r['file']}" for r in result["images"]]
    if result["scans"]:
        lines.append(f"{'P(AD)':>7} {'call':>4}  scan (slices)")
        lines += [f"{s['prob_ad']:>7.3f} {s['predicted']:>4}  {s['scan_id']} ({s['slices']})"
                  for s in result["scans"]]  # fmt: skip
    for e in result["errors"]:
        lines.append(f"UNREADABLE  {e['file']}: {e['error']}")
    lines.append(f"{len(result['images'])} images predicted, {len(result['errors'])} unreadable.")
    return "\n".join(lines)


def run(workdir: str, paths: list[str], which: str = "best", weights: str = "selected") -> dict:
    """Predicts every readable image under `paths`; the result holds images, scans, errors."""
    files, errors = find_inputs(paths)
    loaded = load_model(workdir, which, weights)
    rows, read_errors = predict_files(files, loaded)
    calibration = loaded["calibration"]
    return {
        "workdir": str(workdir),
        "checkpoint_step": loaded["step"],
        "weights": loaded["weights"],
        "calibration": {k: calibration[k] for k in ("temperature", "thresholds",
                                                    "threshold_method") if k in calibration},
        "class_names": loaded["class_names"],
        "images": rows,
        "scans": scan_rows(rows, calibration, len(loaded["class_names"])),
        "errors": errors + read_errors,
    }  # fmt: skip
