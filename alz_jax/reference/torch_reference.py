"""PyTorch anchor for `python -m alz_jax.bench compare`: how fast torchvision's ConvNeXt trains.

One timed unit is what one step of alz_jax's train step does, in PyTorch eager mode: the forward
pass on a batch of random images, cross-entropy with label smoothing 0.1, the backward pass,
gradient clipping to global norm 1.0 and an AdamW update (lr 1e-3, weight decay 0.05), with
torchvision's default stochastic depth. The first step (allocation, kernel selection) is timed
apart; the median of the next --steps is the step time. Prints one JSON line with img_per_s.

The settings are those of `bench step`: --variant (tiny, small, base, large), --batch, --res,
--in_chans, --dtype (float32, or bfloat16 autocast) and --steps; --threads and --device
(cpu, cuda) as well.

It runs in its own virtualenv with PyTorch, which alz_jax does not depend on:

    python3.11 -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-torch/bin/python alz_jax/reference/torch_reference.py --variant=tiny --batch=16

and so takes its options with argparse (not absl) and imports nothing of alz_jax.
"""

import argparse
import json
import statistics
import time

import torch
import torchvision

VARIANTS = ("tiny", "small", "base", "large")


def parse_args() -> argparse.Namespace:
    """The command line (`--name=value` or `--name value`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--in_chans", "--in-chans", dest="in_chans", type=int, default=3)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return parser.parse_args()


def build_model(variant: str, in_chans: int, classes: int) -> torch.nn.Module:
    """torchvision's ConvNeXt with random weights; a stem for `in_chans` channels if not 3."""
    model = getattr(torchvision.models, f"convnext_{variant}")(weights=None, num_classes=classes)
    if in_chans != 3:
        stem = model.features[0][0]
        model.features[0][0] = torch.nn.Conv2d(
            in_chans, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride
        )
    return model


def main() -> None:
    """Times the train step and prints the JSON line."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.variant, args.in_chans, args.classes)
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
    print(json.dumps({
        "anchor": "torchvision_convnext_train_step",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "variant": args.variant,
        "batch": args.batch,
        "res": args.res,
        "in_chans": args.in_chans,
        "dtype": args.dtype,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "first_step_s": round(first_step_s, 3),
        "step_s": round(step_s, 4),
        "img_per_s": round(args.batch / step_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
