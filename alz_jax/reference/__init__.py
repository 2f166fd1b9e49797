"""Anchors to measure alz_jax against, run by path in a separate PyTorch virtualenv (never
imported by alz_jax, and importing nothing of it):

- torch_reference.py: train-step throughput of the PyTorch model of each family (torchvision's
  ConvNeXt and ResNet-50, timm's small ConvNeXts, ViTs and EfficientNet-B0), the other side of
  `python -m alz_jax.bench compare --model=NAME`;
- seed_augment.py: the seed report's torchvision augmentation pipeline on one core, the figure
  `python -m alz_jax.bench augment` is read against.

Each prints one JSON line. Quote ratios measured side by side on one machine, not absolute
numbers.
"""
