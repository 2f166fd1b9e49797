"""Synthetic stand-in for the dementia-stage collections: four stages of graded atrophy, written in
the layout of each public collection, so that every layout runs and is tested without downloads.

Each subject is one brain-like phantom (`synthetic.render_scan`: own anatomy, pose, intensity,
bias field and noise) whose atrophy grows with the stage: NonDemented < VeryMildDemented <
MildDemented < ModerateDemented, neighbouring stages overlapping. Layouts (`LAYOUTS`):

- `folders`: `train|test/<Stage>/<prefix><n>.jpg`, 176x208 (width x height), as the "4 class of
  images" set, and like it divided into train and test BY IMAGE (slices of one brain in both);
- `oasis`: `Data/<OASIS class name>/OAS1_<subject>_MR1_mpr-1_<slice>.jpg`, no split folders,
  imbalanced (Moderate rare), as the OASIS-1 slice exports;
- `parquet`: `train-00000-of-00001.parquet` and `test-...`, 128x128 JPEG bytes in an `image`
  struct and integer labels in the hub's order (0 Mild, 1 Moderate, 2 Non, 3 VeryMild) named in
  the files' Hugging Face metadata, divided by image.

Deterministic by seed. Command line: `python -m alz_jax.synthetic --layout=oasis --out=DIR`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import synthetic
from .layouts import classes

LAYOUTS = ("folders", "oasis", "parquet")
STAGES = classes.STAGES
# Bump when the images a seed produces change, so that stale generated sets are not reused.
GENERATOR_VERSION = 1
# How each collection names the stages.
OASIS_NAMES = ("Non Demented", "Very mild Dementia", "Mild Dementia", "Moderate Dementia")
FOLDER_PREFIXES = ("nonDem", "verymildDem", "mildDem", "moderateDem")
HUB_NAMES = ("Mild_Demented", "Moderate_Demented", "Non_Demented", "Very_Mild_Demented")
HUB_LABEL_OF_STAGE = (2, 3, 0, 1)  # stage index -> the hub's integer label


@dataclasses.dataclass(frozen=True)
class StagesSpec:
    """Size, class balance and difficulty of the synthetic four-stage set."""

    subjects: int = 160
    slices_per_subject: int = 24
    # Share of subjects per stage (OASIS-1 is dominated by non-demented, Moderate is rare).
    stage_shares: tuple[float, float, float, float] = (0.45, 0.25, 0.18, 0.12)
    # Atrophy severity per stage (mean, sd): graded, neighbouring stages overlap.
    severities: tuple[tuple[float, float], ...] = ((0.10, 0.06), (0.36, 0.06), (0.62, 0.06),
                                                   (0.88, 0.06))  # fmt: skip
    test_share: float = 0.2  # of images (folders, parquet): the collections divide by image
    jpeg_quality: int = 92
    # How much head size, ventricles and hippocampus vary between subjects (1: the standard
    # phantoms; atrophy shows in the same structures, so more spread hides the stage more).
    anatomy_spread: float = 1.0


# `data.synthetic_difficulty`: the standard set, and a harder one for tuning recipes on small
# collections: neighbouring stages closer and overlapping more, and twice the between-subject
# anatomy, so that a subject's own ventricles and hippocampus vary about as much as a stage's
# atrophy changes them (as in real brains, where age and head size blur the stages).
DIFFICULTIES = {
    "standard": StagesSpec(),
    "hard": StagesSpec(
        severities=((0.15, 0.09), (0.33, 0.09), (0.51, 0.09), (0.69, 0.09)),
        anatomy_spread=2.0,
    ),
}


def spec_for(difficulty: str, subjects: int) -> StagesSpec:
    """The spec of a difficulty (DIFFICULTIES) with `subjects` subjects."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty {difficulty!r}; expected one of {tuple(DIFFICULTIES)}")
    return dataclasses.replace(DIFFICULTIES[difficulty], subjects=subjects)


def tag(spec: StagesSpec, seed: int, layout: str) -> str:
    """A short name for the set a (spec, seed, layout, generator version) produces."""
    fields = dataclasses.asdict(spec)
    if fields["anatomy_spread"] == 1.0:  # added later: the standard set keeps its name
        del fields["anatomy_spread"]
    payload = json.dumps([GENERATOR_VERSION, seed, layout, fields])
    return f"{layout}_seed{seed}_{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def _subjects(rng: np.random.Generator, spec: StagesSpec):
    """(stage, slices uint8 (n, 240, 256)) per subject, stages in proportion to the shares."""
    counts = np.floor(np.asarray(spec.stage_shares) / sum(spec.stage_shares) * spec.subjects)
    counts = np.maximum(counts.astype(int), 1)  # every stage has a subject, however few
    counts[0] += spec.subjects - counts.sum()
    stages = np.repeat(np.arange(len(STAGES)), counts)
    rng.shuffle(stages)
    for stage in stages:
        anatomy = synthetic.random_anatomy(rng, spec.anatomy_spread)
        mean, sd = spec.severities[stage]
        severity = float(np.clip(rng.normal(mean, sd), 0.0, 1.0))
        start = int(rng.integers(67, 96))
        slices = np.arange(start, start + spec.slices_per_subject)
        yield int(stage), slices, synthetic.render_scan(rng, severity, anatomy, slices)


def _jpeg(image: np.ndarray, size: tuple[int, int] | None, quality: int) -> bytes:
    if size is not None:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def generate(
    out_dir: str | os.PathLike, seed: int = 0, spec: StagesSpec | None = None,
    layout: str = "oasis",
) -> dict:  # fmt: skip
    """Writes the synthetic four-stage set in `layout` under out_dir; returns per split and
    stage the images and subjects written."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
    spec = spec or StagesSpec()
    rng = np.random.default_rng([seed, 7])
    split_rng = np.random.default_rng([seed, 8])
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    rows: dict[str, list] = {"train": [], "test": []}
    counters = [0] * len(STAGES)
    for number, (stage, slices, images) in enumerate(_subjects(rng, spec), start=1):
        for index, image in zip(slices, images, strict=True):
            split = "all" if layout == "oasis" else (
                "test" if split_rng.random() < spec.test_share else "train")  # fmt: skip
            entry = summary.setdefault(split, {}).setdefault(
                STAGES[stage], {"images": 0, "subjects": set()}
            )
            entry["images"] += 1
            entry["subjects"].add(number)
            if layout == "oasis":
                folder = root / "Data" / OASIS_NAMES[stage]
                name = f"OAS1_{number:04d}_MR1_mpr-1_{index}.jpg"
                data = _jpeg(image, None, spec.jpeg_quality)
            elif layout == "folders":
                folder = root / split / STAGES[stage]
                name = f"{FOLDER_PREFIXES[stage]}{counters[stage]}.jpg"
                counters[stage] += 1
                data = _jpeg(image, (176, 208), spec.jpeg_quality)
            else:
                rows[split].append((_jpeg(image, (128, 128), spec.jpeg_quality),
                                    HUB_LABEL_OF_STAGE[stage]))  # fmt: skip
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    if layout == "parquet":
        for split, split_rows in rows.items():
            _write_parquet(root / f"{split}-00000-of-00001.parquet", split_rows)
    return {
        split: {s: {"images": e["images"], "subjects": len(e["subjects"])} for s, e in st.items()}
        for split, st in summary.items()
    }


def _write_parquet(path: Path, rows: list[tuple[bytes, int]]) -> None:
    """The hub's parquet form: image struct {bytes, path}, integer label, named in metadata."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": None} for b, _ in rows], image_type),
        "label": pa.array([label for _, label in rows], pa.int64()),
    })  # fmt: skip
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(HUB_NAMES), "_type": "ClassLabel"},
    }
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
