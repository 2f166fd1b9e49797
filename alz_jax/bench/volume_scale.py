"""Slicing volumes and building the data set at the size of Clinica's t1-linear output: volumes
per second per process, peak memory, and the data set's size per 100 volumes.

    python -m alz_jax.bench.volume_scale --root=/tmp/caps100 [--volumes=100] [--workers=1,2]

Generates (once, deterministically) a synthetic CAPS cohort of `--volumes` sessions shaped like
t1-linear's crop (169x208x179 float32 voxels at 1 mm, .nii.gz; tfds_builders/mri_slices/volumes/
synthetic.py). Then, each phase in a child process, it slices every volume with the default
settings (sagittal, 20 dropped at each end: 129 slices of 224x224 per volume) with each number of
worker processes, and builds the TFDS data set from it (`dataset.prepare`: listing, slicing,
the builder's audit and the array_record files). One JSON line per phase: wall seconds, volumes
per second (and per process), the peak resident memory of the phase's own process and of its
largest worker (resource.getrusage; the phase's process imports JAX and TFDS, as `main` does)
and the bytes on disk of the slices (kept while the data set is built) and of the TFDS files,
per 100 volumes.
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

from alz_jax.data import dataset
from alz_jax.host import logs
from alz_jax.tfds_builders.mri_slices import api as slices
from alz_jax.tfds_builders.mri_slices.volumes import synthetic

SHAPE = (169, 208, 179)  # Clinica t1-linear's crop, 1 mm


def generate(root: Path, volumes: int) -> None:
    """The synthetic CAPS cohort of `volumes` subjects, one session each."""
    marker = root / ".complete"
    if marker.exists():
        return
    spec = synthetic.VolumeCohortSpec(subjects=volumes, shape=SHAPE, second_session_share=0.0)
    summary = synthetic.generate(root / "caps", 0, "caps", spec)
    marker.write_text(json.dumps(summary))


def _peak_mib() -> dict:
    """The peak resident memory (MiB) of this process and of the largest worker it waited for
    (0 without workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mib": round(own / 1024), "peak_worker_rss_mib": round(children / 1024)}


def _per_100(size: int, volumes: int) -> float:
    """MiB per 100 volumes."""
    return round(size / volumes * 100 / 2**20, 1)


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def slice_phase(root: Path, workers: int) -> dict:
    """Slices every volume of the cohort into a fresh folder with `workers` processes."""
    every_class = slices.VolumeSettings(classes=("NC", "MCI", "AD"))  # every session is used
    listing = slices.list_volumes(root / "caps", "caps", every_class)
    out = root / f"slices_w{workers}"
    shutil.rmtree(out, ignore_errors=True)  # not a forked `rm`: it would count as a child
    start = time.perf_counter()
    slices.slice_volumes(listing, every_class, out, workers)
    seconds = time.perf_counter() - start
    n = len(listing.volumes)
    return {"phase": f"slice_workers{workers}", "volumes": n, "seconds": round(seconds, 1),
            "volumes_per_s": round(n / seconds, 2),
            "volumes_per_s_per_process": round(n / seconds / workers, 2),
            **_peak_mib(), "slices_mib_per_100_volumes": _per_100(_bytes(out), n)}  # fmt: skip


def build_phase(root: Path, workers: int) -> dict:
    """Builds the TFDS data set of the cohort (slicing included) into a fresh data_dir."""
    data_dir = root / "tfds"
    shutil.rmtree(data_dir, ignore_errors=True)
    spec = dataset.DataSpec(manual_dir=str(root / "caps"), data_dir=str(data_dir),
                            volume_classes="NC,MCI,AD", volume_workers=workers)  # fmt: skip
    start = time.perf_counter()
    data = dataset.prepare(spec)
    seconds = time.perf_counter() - start
    n = len(data.metadata["volumes"])
    tfds_files = _bytes(next(data_dir.glob("adni-*")) / "adni")
    images = sum(data.num_examples(s) for s in dataset.SPLITS)
    return {"phase": f"build_workers{workers}", "volumes": n, "images": images,
            "seconds": round(seconds, 1), "volumes_per_s": round(n / seconds, 2),
            **_peak_mib(), "tfds_mib_per_100_volumes": _per_100(tfds_files, n)}  # fmt: skip


def main() -> None:
    """Generates the cohort, then runs each phase in a child process (its own peak memory)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="Worker processes to slice with.")
    parser.add_argument("--phase", default="", help="(internal) the phase a child runs.")
    args = parser.parse_args()
    logs.setup()
    if args.phase:
        kind, workers = args.phase.split(":")
        run = slice_phase if kind == "slice" else build_phase
        print(json.dumps(run(args.root, int(workers))))
        return
    start = time.perf_counter()
    generate(args.root, args.volumes)
    print(json.dumps({"phase": "generate", "seconds": round(time.perf_counter() - start, 1)}))
    workers = [int(w) for w in args.workers.split(",")]
    phases = [f"slice:{w}" for w in workers] + [f"build:{max(workers)}"]
    for phase in phases:
        done = subprocess.run(
            [sys.executable, "-m", "alz_jax.bench.volume_scale", f"--root={args.root}",
             f"--phase={phase}"], check=True, capture_output=True, text=True,
        )  # fmt: skip
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
