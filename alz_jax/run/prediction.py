"""P(AD) for image files or folders with a trained run's weights, threshold and temperature: the
library of `python -m alz_jax.predict` (and the model loading `export` shares). A model of K > 2
classes (dementia stages) gives each class's probability and calls the most probable.

Takes JPEG or PNG files of any size, grayscale or colour (converted to grayscale), and folders
(searched recursively for .jpg/.jpeg/.png). Each image gets the one evaluation preprocessing
(pad to a square, resize) and the run's normalisation. The temperature and the decision
thresholds are those chosen on the validation split, stored with the checkpoint. Files named
`<scanID>_<slice>.<ext>` are also grouped into scans (the mean of their slices' P(AD), called at
the scan threshold). An unreadable input is reported by name and the rest go on.

An image the data audit would not let into training is refused by name, not given a diagnosis:
one over Pillow's decompression-bomb limit (the audit's pixel limit, read from the header, so
it is never decoded), and a blank one (near-black by the audit's NEAR_BLACK_MEAN, or a single
grey level: no anatomy to judge).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from alz_jax.core import sharding, steps
from alz_jax.data import preprocess
from alz_jax.evaluation import tasks, uncertainty
from alz_jax.host import tables
from alz_jax.host.errors import UserError
from alz_jax.run.saved_run import SavedRun
from alz_jax.tfds_builders.mri_slices.audit import NEAR_BLACK_MEAN

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
    """The run's model, weights, pixel statistics, image size, task, class names and the
    calibration (temperature, thresholds) stored with checkpoint `which` (SavedRun.load_model).
    Reads no data set."""
    return SavedRun.open(workdir).load_model(which, weights)


class RefusedImageError(ValueError):
    """An image `predict` won't diagnose (too large to decode, or blank); the message says why."""


def check_pixel_count(path: Path) -> None:
    """Refuses (RefusedImageError) an image whose header gives more pixels than the data audit
    decodes: Pillow's decompression-bomb limit, which the audit's Image.open applies. Only the
    header is read, so a 20000x20000 PNG costs nothing."""
    try:
        with Image.open(path):
            pass
    except Image.DecompressionBombError as e:
        # Pillow: "Image size (N pixels) exceeds limit of M pixels, could be decompression ..."
        sizes = [int(n) for n in re.findall(r"\d+", str(e))]
        found = f"{sizes[0]:,} pixels, over its limit of {sizes[1]:,}" if len(sizes) == 2 else e
        message = f"too large to decode: {found} (the data audit's, Pillow's decompression limit)."
        raise RefusedImageError(message) from None
    except Exception:  # not for Pillow to judge: decode_image reports what it can't read
        return


def check_not_blank(image: np.ndarray) -> None:
    """Refuses (RefusedImageError) a blank image: near-black as the data audit counts it (mean
    intensity under NEAR_BLACK_MEAN of 255) or a single grey level."""
    mean = float(image.mean())
    if mean < NEAR_BLACK_MEAN:
        raise RefusedImageError(
            f"blank: mean intensity {mean:.1f} of 255, under the data audit's near-black limit "
            f"{NEAR_BLACK_MEAN:g}; no anatomy to diagnose."
        )
    if image.min() == image.max():
        level = int(image.min())
        raise RefusedImageError(f"blank: every pixel is {level}; no anatomy to diagnose.")


def read_inputs(
    files: list[Path], image_size: int, errors: list[dict], refused: list[dict]
) -> Iterator[tuple[Path, np.ndarray]]:
    """(file, model input) for each image that reads and passes the audit's checks; each other
    file is appended, {file, error}, to `errors` (unreadable) or `refused` (too large, blank)."""
    for path in files:
        try:
            check_pixel_count(path)
            image = preprocess.decode_image(path.read_bytes(), str(path))
            check_not_blank(image)
        except (OSError, preprocess.DecodeError) as e:
            errors.append({"file": str(path), "error": str(e).removeprefix(f"{path}: ")})
            continue
        except RefusedImageError as e:
            refused.append({"file": str(path), "error": str(e)})
            continue
        yield path, preprocess.to_model_input(image, image_size)


def predict_files(
    files: list[Path], loaded: dict, batch_size: int = 64
) -> tuple[list[dict], list[dict], list[dict]]:
    """(rows, errors, refused): one row per readable image {file, scan_id, slice, logit_ad,
    prob_ad, predicted}; one {file, error} per unreadable one, and per refused one."""
    predict_fn = steps.make_predict_step(loaded["model"], loaded["pixel_stats"], loaded["mesh"])
    devices = loaded["mesh"].devices.size
    batch_sharding = sharding.batch_sharded(loaded["mesh"])
    rows, errors, refused, pending = [], [], [], []

    def flush():
        if not pending:
            return
        images = np.stack([image for _, image in pending])
        padded = -len(images) % devices
        images = np.concatenate([images, np.zeros((padded, *images.shape[1:]), images.dtype)])
        outputs = predict_fn(loaded["params"], jax.device_put(images, batch_sharding))
        outputs = np.asarray(outputs)[: len(pending)]
        rows.extend(loaded["task"].image_rows([_base_row(p) for p, _ in pending], outputs, loaded))
        pending.clear()

    items = read_inputs(files, loaded["image_size"], errors, refused)
    for item in with_neighbours(items, loaded["model"].spec.in_chans):
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    flush()
    return rows, errors, refused


def with_neighbours(
    items: Iterable[tuple[Path, np.ndarray]], channels: int
) -> Iterable[tuple[Path, np.ndarray]]:
    """`items` (file, model input (S, S, 1)) as a model of `channels` input channels takes them:
    with 2.5D input (channels = 2n + 1 > 1) each image stacked with the n images before and
    after it in its scan (files named <scanID>_<slice>, in slice order, clamped at the scan's
    ends), as training stacked them; an image without a scan in its name is its own
    neighbours."""
    n = (channels - 1) // 2
    if n == 0:
        return items
    items = list(items)
    scans: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(items):
        scans.setdefault(_base_row(path)["scan_id"] or str(path), []).append(i)
    stacked = list(items)
    for members in scans.values():
        members.sort(key=lambda i: (_base_row(items[i][0])["slice"] or 0, str(items[i][0])))
        for rank, i in enumerate(members):
            picks = [members[min(max(rank + o, 0), len(members) - 1)] for o in range(-n, n + 1)]
            stacked[i] = (items[i][0], np.concatenate([items[j][1] for j in picks], axis=-1))
    return stacked


def predict_bags(
    files: list[Path], loaded: dict, batch_size: int = 8
) -> tuple[list[dict], list[dict], list[dict]]:
    """`predict_files` for a scan model: the images of one scan (files named
    <scanID>_<slice>, ordered by slice) form one bag, and every image's row carries its scan's
    prediction and its weight in the bag (`bag_weight`); an image without a scan in its name is
    a bag of its own."""
    predict_fn = steps.make_predict_step(loaded["model"], loaded["pixel_stats"], loaded["mesh"])
    devices = loaded["mesh"].devices.size
    batch_sharding = sharding.batch_sharded(loaded["mesh"])
    errors, refused, scans = [], [], {}
    items = read_inputs(files, loaded["image_size"], errors, refused)
    for path, image in with_neighbours(items, loaded["model"].spec.in_chans):
        base = _base_row(path)
        scans.setdefault(base["scan_id"] or str(path), []).append((base, image))
    bags_in = [sorted(members, key=lambda m: (m[0]["slice"] or 0, m[0]["file"]))
               for members in scans.values()]  # fmt: skip
    rows = []
    for start in range(0, len(bags_in), batch_size):
        chunk = bags_in[start : start + batch_size]
        count = len(chunk) + (-len(chunk) % devices)
        longest = max(len(bag) for bag in chunk)
        images = np.zeros((count, longest, *chunk[0][0][1].shape), np.uint8)
        mask = np.zeros((count, longest), np.int32)
        for b, bag in enumerate(chunk):
            images[b, : len(bag)] = [image for _, image in bag]
            mask[b, : len(bag)] = 1
        positions = np.broadcast_to(np.arange(longest, dtype=np.int32), mask.shape)
        placed = [jax.device_put(np.ascontiguousarray(a), batch_sharding)
                  for a in (images, mask, positions)]  # fmt: skip
        found = jax.device_get(predict_fn(loaded["params"], *placed))
        for b, bag in enumerate(chunk):
            outputs = np.repeat(found["outputs"][b : b + 1], len(bag), axis=0)
            bag_rows = loaded["task"].image_rows([base for base, _ in bag], outputs, loaded)
            for row, weight in zip(bag_rows, found["weights"][b, : len(bag)], strict=True):
                row["bag_weight"] = round(float(weight), 6)
            rows.extend(bag_rows)
    return rows, errors, refused


def _base_row(path: Path) -> dict:
    """{file, scan_id, slice} of an input file (a scan when named <scanID>_<slice>)."""
    match = SLICE_NAME.match(path.stem)
    return {
        "file": str(path),
        "scan_id": match["scan"] if match else "",
        "slice": int(match["slice"]) if match else None,
    }


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
    <stem>_errors.csv, refused images in <stem>_refused.csv; text cells made spreadsheet-safe:
    host/tables.py); returns the files written."""
    path = check_output(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(result, indent=1))
        return [path]
    written = []
    for name, target in (("images", path), ("scans", path.with_name(path.stem + "_scans.csv")),
                         ("errors", path.with_name(path.stem + "_errors.csv")),
                         ("refused", path.with_name(path.stem + "_refused.csv"))):  # fmt: skip
        if name != "images" and not result.get(name):
            continue
        fields = list(result[name][0]) if result[name] else ["file", "prob_ad"]
        tables.write_csv(target, fields, result[name])
        written.append(target)
    return written


def format_result(result: dict) -> str:
    """The table printed by the command: the task's rows of images and scans, then the
    unreadable files."""
    # Results without class names (before K classes) are NC/AD.
    task = tasks.for_classes(len(result.get("class_names") or ()) or 2, result.get("task"),
                             result.get("task_options"))  # fmt: skip
    lines = task.format_predictions(result)
    lines += [f"UNREADABLE  {e['file']}: {e['error']}" for e in result["errors"]]
    refused = result.get("refused", [])
    lines += [f"REFUSED  {e['file']}: {e['error']}" for e in refused]
    lines.append(
        f"{len(result['images'])} images predicted, {len(result['errors'])} unreadable"
        + (f", {len(refused)} refused (too large or blank)." if refused else ".")
    )
    return "\n".join(lines)


UNCERTAINTY_FIELDS = ("source", "alpha", "score", "calibration", "abstain_rate")


def with_uncertainty(rows: list[dict], level: str, loaded: dict) -> list[dict]:
    """`rows` (images: level "slice"; scans) with their prediction set and "call": "refer"
    for the least confident at the checkpoint's abstention threshold, else the prediction;
    unchanged for a checkpoint calibrated before prediction sets existed."""
    stored = loaded["calibration"].get("uncertainty")
    if not rows or not stored or level not in stored["levels"]:
        return rows
    task, names = loaded["task"], list(loaded["class_names"])
    class_probs = task.row_class_probs(rows, names)
    predicted = np.array([names.index(r["predicted"]) for r in rows], np.int64)
    annotated = uncertainty.annotate(rows, class_probs, predicted, stored["levels"][level],
                                     names, task.ordered)  # fmt: skip
    return [{**r, "call": "refer" if r["refer"] else r["predicted"]} for r in annotated]


def run(workdir: str, paths: list[str], which: str = "best", weights: str = "selected") -> dict:
    """Predicts every readable image under `paths`; the result holds images, scans, errors and
    the refused images (too large, blank)."""
    files, errors = find_inputs(paths)
    loaded = load_model(workdir, which, weights)
    predict = predict_bags if steps.is_bag_model(loaded["model"]) else predict_files
    rows, read_errors, refused = predict(files, loaded)
    calibration = loaded["calibration"]
    scans = loaded["task"].scan_rows(rows, calibration)
    return {
        "workdir": str(workdir),
        "checkpoint_step": loaded["step"],
        "weights": loaded["weights"],
        "calibration": {k: calibration[k] for k in ("temperature", "thresholds",
                                                    "threshold_method") if k in calibration},
        "task": loaded["task"].kind,
        "task_options": loaded["task"].options(),
        "class_names": loaded["class_names"],
        "uncertainty": {k: calibration["uncertainty"][k] for k in UNCERTAINTY_FIELDS}
        if "uncertainty" in calibration else None,
        "images": with_uncertainty(rows, "slice", loaded),
        "scans": with_uncertainty(scans, "scan", loaded),
        "errors": errors + read_errors,
        "refused": refused,
    }  # fmt: skip
