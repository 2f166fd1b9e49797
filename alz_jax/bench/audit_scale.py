"""The audit and the TFDS build at the size of the public OASIS-1 slice export: time and peak
memory.

    python -m alz_jax.bench.audit_scale --root=/tmp/oasis86k [--images=86437] [--phases=...]

Generates (once, deterministically) a synthetic collection shaped like the Kaggle OASIS-1 export
("imagesoasis": 86,437 JPEG slices of 496x248 in four class folders, 61 slices (100..160) per
acquisition, four acquisitions mpr-1..4 per session, named OAS1_xxxx_MR1_mpr-n_<slice>.jpg).
Each session renders one phantom brain (synthetic.render_scan); its four acquisitions are that
brain shifted by a few pixels with a new gain and noise, as repeated acquisitions are, so the
near-duplicate search finds pairs across acquisitions (never within one: those are one scan).
Then it runs, each in a child process, `python -m alz_jax.audit` on it and a TFDS build of it
(the builder's own audit included), and prints one JSON line per phase: wall seconds and the
peak resident memory of the phase's processes (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss,
which covers the child and its own children). `--phases=search` times the near-duplicate pair
search alone on random signatures (`--images` of them).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from alz_jax.host import logs
from alz_jax.tfds_builders.mri_slices import api as slices
from alz_jax.tfds_builders.mri_slices import near_duplicates, synthetic, synthetic_stages

OASIS_IMAGES = 86437  # the Kaggle OASIS-1 export (ninadaithal/imagesoasis)
SLICES = np.arange(100, 161)  # 61 slices per acquisition
RUNS = 4  # acquisitions per session (mpr-1..4)
# Acquisitions per class in the export: 67,222 / 13,725 / 5,002 / 488 images of 61 slices.
CLASS_SHARES = (67222, 13725, 5002, 488)
SIZE = (496, 248)  # width, height


def _session_classes(sessions: int) -> list[int]:
    """The class of each session (all its acquisitions), in the export's proportions."""
    total = sum(CLASS_SHARES)
    counts = [max(1, round(sessions * c / total)) for c in CLASS_SHARES]
    counts[0] += sessions - sum(counts)
    return [k for k, n in enumerate(counts) for _ in range(n)]


def generate(root: Path, images: int = OASIS_IMAGES, seed: int = 0) -> int:
    """Writes the collection under root/Data/<class>/ (skipped where root/.complete says this
    size and seed is there); returns the number of images."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{images} {seed}":
        return images
    rng = np.random.default_rng(seed)
    scans = -(-images // len(SLICES))
    classes = _session_classes(-(-scans // RUNS))
    written = 0
    for scan in range(scans):
        session, run = divmod(scan, RUNS)
        if run == 0:  # a new session: a new brain, severity by class
            severity = 0.1 + 0.25 * classes[session] + rng.uniform(0, 0.1)
            base = synthetic.render_scan(rng, severity, synthetic.random_anatomy(rng), SLICES)
        folder = root / "Data" / synthetic_stages.OASIS_NAMES[classes[session]]
        folder.mkdir(parents=True, exist_ok=True)
        dx, dy = rng.integers(-3, 4, 2)
        gain = rng.uniform(0.9, 1.1)
        for index, image in zip(SLICES, base, strict=True):
            if written == images:
                break
            moved = np.roll(image, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32) * gain
            noisy = moved + rng.normal(0, 3, moved.shape)
            pixels = cv2.resize(np.clip(noisy, 0, 255).astype(np.uint8), SIZE, cv2.INTER_LINEAR)
            ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            name = f"OAS1_{session + 1:04d}_MR1_mpr-{run + 1}_{index}.jpg"
            (folder / name).write_bytes(buf.tobytes())
            written += 1
    marker.write_text(f"{images} {seed}")
    return written


def build(root: Path, data_dir: Path) -> None:
    """The TFDS build of the collection (the builder's audit included), as `main` runs it."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (only the build child needs TFDS)

    kind, class_names = slices.describe_layout(root)
    config = slices.config_for(0.1, 0, kind, class_names)
    builder = slices.Builder(data_dir=str(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))


def search(images: int, seed: int = 0) -> int:
    """The near-duplicate pair search on `images` random unit signatures; the pairs found."""
    rng = np.random.default_rng(seed)
    sig = rng.standard_normal((images, near_duplicates.DIMS), np.float32)
    sig /= np.linalg.norm(sig, axis=1, keepdims=True)
    return len(near_duplicates.pairs_above(sig, np.arange(images)))


def measured(phase: str, argv: list[str], images: int) -> dict:
    """Runs `argv` as a child; its wall and CPU time and the peak RSS of it and its children
    (MiB)."""
    start = time.perf_counter()
    done = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds (all threads) say more than wall time on a machine shared with other jobs.
    return {"phase": phase, "images": images, "seconds": round(seconds, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "exit": done.returncode}  # fmt: skip


def main() -> None:
    """Generates the collection if needed, then measures each phase in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="collection folder")
    parser.add_argument("--images", type=int, default=OASIS_IMAGES)
    parser.add_argument("--phases", default="generate,audit,build", help="comma-separated")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.root, args.images)
        return
    if args.child == "build":
        logs.setup()  # INFO lines: the builder's audit and its progress, as `main` shows them
        data_dir = args.root.with_name(args.root.name + "_tfds")
        shutil.rmtree(data_dir, ignore_errors=True)  # a fresh build every time
        build(args.root, data_dir)
        return
    if args.child == "search":
        print(json.dumps({"pairs": search(args.images)}), file=sys.stderr)
        return
    me = [sys.executable, "-m", "alz_jax.bench.audit_scale", f"--root={args.root}",
          f"--images={args.images}"]  # fmt: skip
    commands = {
        "generate": [*me, "--child=generate"],
        "audit": [sys.executable, "-m", "alz_jax.audit", f"--manual_dir={args.root}"],
        "build": [*me, "--child=build"],
        "search": [*me, "--child=search"],
    }
    for phase in args.phases.split(","):
        # Each phase in a fresh measuring process: RUSAGE_CHILDREN is a maximum over all the
        # children a process has waited for, so one process per phase keeps the peaks apart.
        wrapper = [sys.executable, "-c", _MEASURE, phase, json.dumps(commands[phase]),
                   str(args.images)]  # fmt: skip
        subprocess.run(wrapper, check=True)


# The measuring process: runs one phase's command and prints its JSON line.
_MEASURE = (
    "import json, sys; from alz_jax.bench.audit_scale import measured; "
    "print(json.dumps(measured(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]))), "
    "flush=True)"
)

if __name__ == "__main__":
    main()
