"""PyTorch anchor for `python -m alz_jax.bench compare`: how fast the model families train.

One timed unit is what one step of alz_jax's train step does, in PyTorch eager mode: the forward
pass on a batch of random images, cross-entropy with label smoothing 0.1, the backward pass,
gradient clipping to global norm 1.0 and an AdamW update (lr 1e-3, weight decay 0.05), with
stochastic depth at --drop_path_rate (0.1, alz_jax's configs/convnext_t.py). The first step
(allocation, kernel selection) is timed apart; the median of the next --steps is the step time.
Prints one JSON line with img_per_s.

--model takes the names of alz_jax's config.model.name (alz_jax/models/registry.py NAMES):

- convnext_tiny, _small, _base, _large: torchvision's ConvNeXt (the anchor of the CPU figures
  in docs/performance.md); convnext_atto, _femto, _pico, _nano: timm's (torchvision has none);
- vit_ti16, vit_s16, vit_b16 (or timm's names vit_tiny_patch16_224, ...): timm's ViT with
  img_size=--res;
- resnet50: torchvision's ResNet-50 (which has no stochastic depth; alz_jax's has);
- efficientnet_b0: timm's EfficientNet-B0;
- simple_cnn: the plain CNN of alz_jax/models/simple_cnn.py at its default sizes, written here in
  torch.nn (no stochastic depth: it has no residual branches).

--variant (tiny, small, base, large) is the older spelling of --model=convnext_VARIANT, and
convnext_tiny the default. The other settings are those of `bench step`: --batch, --res,
--in_chans, --classes, --dtype (float32, or bfloat16 autocast) and --steps; --threads and
--device (cpu, cuda) as well. Models are channels-last, with random weights (nothing is
downloaded).

It runs in its own virtualenv with PyTorch, which alz_jax does not depend on (timm only for the
models above that come from it):

    python3.11 -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31
    .venv-torch/bin/python alz_jax/reference/torch_reference.py --model=vit_s16 --batch=16

and so takes its options with argparse (not absl) and imports nothing of alz_jax. PyTorch,
torchvision and timm are imported when the model is built, not with the module: the command
line can be checked without them, and the torchvision models run where timm is not installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

VARIANTS = ("tiny", "small", "base", "large")  # --variant: torchvision's ConvNeXt sizes

# --model -> (library, builder): the builder's name in torchvision.models or timm.
MODELS: dict[str, tuple[str, str]] = {
    **{f"convnext_{v}": ("torchvision", f"convnext_{v}") for v in VARIANTS},
    **{f"convnext_{v}": ("timm", f"convnext_{v}") for v in ("atto", "femto", "pico", "nano")},
    "vit_ti16": ("timm", "vit_tiny_patch16_224"),
    "vit_s16": ("timm", "vit_small_patch16_224"),
    "vit_b16": ("timm", "vit_base_patch16_224"),
    "vit_tiny_patch16_224": ("timm", "vit_tiny_patch16_224"),
    "vit_small_patch16_224": ("timm", "vit_small_patch16_224"),
    "vit_base_patch16_224": ("timm", "vit_base_patch16_224"),
    "resnet50": ("torchvision", "resnet50"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
    "simple_cnn": ("torch", "simple_cnn"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (`--name=value` or `--name value`); `model` resolved from --model or
    --variant (which must agree when both are given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default=None)
    parser.add_argument("--variant", choices=VARIANTS, default=None, help="convnext_VARIANT")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--in_chans", "--in-chans", dest="in_chans", type=int, default=3)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--drop_path_rate", type=float, default=0.1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    from_variant = f"convnext_{args.variant or 'tiny'}"
    if args.model and args.variant and args.model != from_variant:
        parser.error(f"--model={args.model} and --variant={args.variant} disagree")
    args.model = args.model or from_variant
    return args


def _torchvision_model(builder: str, in_chans: int, classes: int, drop_path_rate: float):
    """torchvision's ConvNeXt or ResNet-50, its stem rebuilt for `in_chans` channels if not 3."""
    import torch  # noqa: PLC0415  (imported with the model: see the module's docstring)
    import torchvision  # noqa: PLC0415

    if builder.startswith("convnext"):
        model = getattr(torchvision.models, builder)(
            weights=None, num_classes=classes, stochastic_depth_prob=drop_path_rate
        )
        if in_chans != 3:
            stem = model.features[0][0]
            model.features[0][0] = torch.nn.Conv2d(
                in_chans, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride
            )
        return model
    model = getattr(torchvision.models, builder)(weights=None, num_classes=classes)
    if in_chans != 3:
        stem = model.conv1
        model.conv1 = torch.nn.Conv2d(
            in_chans, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride,
            padding=stem.padding, bias=False,
        )  # fmt: skip
    return model


def _simple_cnn(in_chans: int, classes: int, dims=(32, 64, 128, 256), depths=(2, 2, 2, 2)):
    """alz_jax's simple_cnn: blocks of (3x3 conv without bias, BatchNorm, ReLU) x depth, each
    closed by a 2x2 max pool; global average pool; linear classifier."""
    from torch import nn  # noqa: PLC0415  (imported with the model: see the module's docstring)

    layers, in_dim = [], in_chans
    for depth, dim in zip(depths, dims, strict=True):
        for _ in range(depth):
            layers += [nn.Conv2d(in_dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
                       nn.ReLU(inplace=True)]  # fmt: skip
            in_dim = dim
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_dim, classes)]
    return nn.Sequential(*layers)


def build_model(
    name: str, in_chans: int, classes: int, res: int = 224, drop_path_rate: float = 0.1
) -> torch.nn.Module:
    """The model `name` (a MODELS key) with random weights, for `in_chans` input channels,
    `classes` outputs and stochastic depth `drop_path_rate`; ViTs for `res` px inputs."""
    library, builder = MODELS[name]
    if library == "torchvision":
        return _torchvision_model(builder, in_chans, classes, drop_path_rate)
    if library == "torch":
        return _simple_cnn(in_chans, classes)
    import timm  # noqa: PLC0415  (only for the models that come from it)

    extra = {"img_size": res} if builder.startswith("vit_") else {}
    return timm.create_model(
        builder, pretrained=False, in_chans=in_chans, num_classes=classes,
        drop_path_rate=drop_path_rate, **extra,
    )  # fmt: skip


def _versions(torch_version: str, library: str) -> dict[str, str]:
    """PyTorch's version (with its build tag, e.g. +cu130) and the installed torchvision's
    and, for its models, timm's."""
    others = ("torchvision", "timm") if library == "timm" else ("torchvision",)
    return {"torch": torch_version, **{n: importlib.metadata.version(n) for n in others}}


def _anchor_name(name: str) -> str:
    """The JSON line's `anchor`: 'torchvision_convnext_train_step' as before for torchvision's
    ConvNeXt, else the library and builder."""
    library, builder = MODELS[name]
    family = "convnext" if builder.startswith("convnext") else builder
    return f"{library}_{family}_train_step"


def main() -> None:
    """Times the train step and prints the JSON line."""
    import torch  # noqa: PLC0415  (imported here: see the module's docstring)

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.in_chans, args.classes, args.res, args.drop_path_rate)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = torch.rand(args.batch, args.in_chans, args.res, args.res, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    autocast = args.dtype == "bfloat16"

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=autocast):
            loss = criterion(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    train_step()
    first_step_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    library, builder = MODELS[args.model]
    torchvision_convnext = library == "torchvision" and args.model.startswith("convnext_")
    print(json.dumps({
        "anchor": _anchor_name(args.model),
        **_versions(torch.__version__, library),
        "model": args.model,
        "builder": f"{library}.{builder}",
        "variant": args.model.removeprefix("convnext_") if torchvision_convnext else None,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "res": args.res,
        "in_chans": args.in_chans,
        "drop_path_rate": 0.0 if builder in ("resnet50", "simple_cnn") else args.drop_path_rate,
        "dtype": args.dtype,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "first_step_s": round(first_step_s, 3),
        "step_s": round(step_s, 4),
        "img_per_s": round(args.batch / step_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
