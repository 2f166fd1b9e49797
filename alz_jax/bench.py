"""Benchmarks, each printing one JSON line.

    python -m alz_jax.bench augment [--size 224] [--seconds 10]

`augment`: the rate of one worker process (one core, OpenCV's own threads off) decoding and
augmenting with the seed report's pipeline (configs/convnext_t.py's `augment` section), on the
same input as ../shared/bench/seed_augment.py (64 random 256x240 grayscale JPEGs, quality 90).
Gaussian noise is not in this figure: it runs on the device (see alz_jax/data/augment.py). Also
reports the bytes per image sent to the device, against float32 3-channel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import cv2
import numpy as np

from alz_jax.data import augment, preprocess


def _reference_augment_config():
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "convnext_t.py")
    spec = importlib.util.spec_from_file_location("convnext_t_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().augment


def bench_augment(size: int, seconds: float) -> dict:
    """Images per second of decode + the seed augmentation pipeline on one core."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        image = (rng.random((240, 256)) * 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        jpegs.append(buf.tobytes())
    spec = augment.AugmentSpec.from_config(_reference_augment_config())
    aug_rng = np.random.default_rng(1)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in jpegs:
            square = preprocess.pad_to_square(preprocess.decode_image(data))
            out = augment.augment(aug_rng, square, size, spec)
            n += 1
    elapsed = time.perf_counter() - start
    return {
        "bench": "augment",
        "size": size,
        "threads": 1,
        "pipeline": "seed report (configs/convnext_t.py augment), noise on device",
        "img_per_s": round(n / elapsed, 1),
        "bytes_per_image_to_device": int(out.nbytes),
        "bytes_per_image_float32_3ch": size * size * 3 * 4,
    }


def main() -> None:
    """Parses the subcommand and prints its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    aug = sub.add_parser("augment", help="host augmentation throughput on one core")
    aug.add_argument("--size", type=int, default=224)
    aug.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.command == "augment":
        print(json.dumps(bench_augment(args.size, args.seconds)))


if __name__ == "__main__":
    main()
