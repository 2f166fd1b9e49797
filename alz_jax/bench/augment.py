"""`bench augment`: one core's decode + seed-report augmentation rate, on the input of
alz_jax/reference/seed_augment.py (the torchvision anchor)."""

from __future__ import annotations

import time

import cv2
import numpy as np

from alz_jax.bench.settings import Settings
from alz_jax.data import augment, preprocess
from alz_jax.host import command
from alz_jax.run import specs


def bench_augment(size: int, seconds: float) -> dict:
    """Images per second of decode + the seed augmentation pipeline on one core (OpenCV's own
    threads off), on the input of alz_jax/reference/seed_augment.py (the torchvision anchor):
    64 random 256x240 grayscale JPEGs, quality 90. Gaussian noise is not in this figure: it runs
    on the device."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        image = (rng.random((240, 256)) * 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        jpegs.append(buf.tobytes())
    spec = specs.augment_spec(command.load_config("convnext_t").augment)
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


def run(args: Settings) -> dict:
    """`bench_augment` at --res for --seconds."""
    return bench_augment(args.res, args.seconds)
