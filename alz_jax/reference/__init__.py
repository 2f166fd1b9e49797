"""Anchors to measure alz_jax against, run by path in a separate PyTorch virtualenv (never
imported by alz_jax, and importing nothing of it):

- torch_reference.py: train-step throughput of torchvision's ConvNeXt, the other side of
  `python -m alz_jax.bench compare`;
- seed_augment.py: the seed report's torchvision augmentation pipeline on one core, the figure
  `python -m alz_jax.bench augment` is read against.

Each prints one JSON line. Quote ratios measured side by side on one machine, not absolute
numbers.
"""
