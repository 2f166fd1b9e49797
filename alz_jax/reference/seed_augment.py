"""Anchor for `python -m alz_jax.bench augment`: the seed report's torchvision augmentation of one
training image, decode included, on one core.

The input is the one `bench augment` uses: 64 random 256x240 grayscale JPEGs (quality 90),
decoded with PIL. The pipeline is the report's, in its order: grayscale to 3 channels, random
resized crop to --size (80-100% of the area), horizontal flip (p 0.5), vertical flip (p 0.2),
rotation within +-15 degrees, affine (translate 5%, scale 0.95-1.05, shear 5 degrees), 3x3
Gaussian blur (sigma 0.1-1.0), to a float tensor, Gaussian noise (std 0.02), random erasing
(p 0.25) and normalisation to [-1, 1]. Prints one JSON line with img_per_s.

It runs in its own virtualenv with PyTorch (see torch_reference.py beside it), so it takes its
options with argparse (not absl) and imports nothing of alz_jax:

    .venv-torch/bin/python alz_jax/reference/seed_augment.py --size=224 --seconds=10
"""

import argparse
import io
import json
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


class AddGaussianNoise:
    """x + std * N(0, 1), per element."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor + torch.randn_like(tensor) * self.std


def seed_pipeline(size: int) -> transforms.Compose:
    """The reference report's training transform."""
    return transforms.Compose([
        transforms.Grayscale(num_output_channels=3),
        transforms.RandomResizedCrop(size, scale=(0.8, 1.0)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomVerticalFlip(p=0.2),
        transforms.RandomRotation(degrees=15),
        transforms.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.95, 1.05), shear=5),
        transforms.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0)),
        transforms.ToTensor(),
        AddGaussianNoise(std=0.02),
        transforms.RandomErasing(p=0.25),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ])  # fmt: skip


def sample_jpegs(count: int = 64) -> list[bytes]:
    """Random 256x240 grayscale JPEGs, quality 90 (the input `bench augment` uses)."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        pixels = (rng.random((240, 256)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def main() -> None:
    """Augments the test images round after round for --seconds and prints the rate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transform = seed_pipeline(args.size)
    images = sample_jpegs()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for data in images:
            transform(Image.open(io.BytesIO(data)))
            done += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "anchor": "seed_report_torchvision_augment",
        "torch": torch.__version__,
        "size": args.size,
        "threads": 1,
        "img_per_s": round(done / elapsed, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
