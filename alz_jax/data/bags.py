"""Bags of slices: a scan (session) as the training and evaluation unit, on Grain.

`ScanIndex` (data/scans.py) groups a split's records into scans (slices in slice order). Training
(`train_bag_dataset`) yields B bags of K slices per step: scans shuffled per epoch (or drawn
class-balanced), each bag K of its scan's slices drawn by a generator seeded from the pipeline
seed and the bag's position in the global stream (without replacement when the scan has K,
else all of them and draws with replacement), so the stream is the same whatever the process
and worker count and a resumed run (`start_step`) sees the same batches. Mixup/CutMix mix whole
bags (`mixing.mix_group`: a partner bag's slices, one box on every slice). Evaluation
(`eval_bag_dataset`) yields every scan once, all its slices, padded to the longest scan.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from alz_jax.data import augment, neighbours
from alz_jax.data.input_pipeline import (
    ClassBalancedSampler,
    ProcessShard,
    _prefetch,
    batched_stream,
    per_process_batch,
    with_neighbours,
)
from alz_jax.data.pipeline_spec import PipelineSpec
from alz_jax.data.scans import ScanIndex  # re-exported: callers use bags.ScanIndex


def bag_slices(pipeline: PipelineSpec, scans: ScanIndex) -> int:
    """K, the slices of a training bag: `bag_size`, or with 0 the longest scan's count."""
    return pipeline.bag_size or scans.max_slices


def draw_slices(rng: np.random.Generator, available: int, k: int) -> np.ndarray:
    """K positions of a scan of `available` slices, sorted: without replacement when it has K,
    else every slice once plus draws with replacement."""
    if available >= k:
        pick = rng.choice(available, size=k, replace=False)
    else:
        pick = np.concatenate([np.arange(available), rng.choice(available, size=k - available)])
    return np.sort(pick)


@dataclasses.dataclass(frozen=True)
class TrainBagTransform:
    """Grain `random_map`: a scan index to its training bag {image (K, S, S, C), label,
    slice_mask (K,), positions (K,)}. With `per_bag`, every slice gets the same augmentation
    draws (one seed for the bag), else each slice its own."""

    source: object
    scans: ScanIndex
    k: int
    image_size: int
    spec: augment.AugmentSpec
    per_bag: bool

    def __call__(self, scan: int, rng: np.random.Generator) -> dict:
        members = self.scans.members[int(scan)]
        pick = draw_slices(rng, len(members), self.k)
        seeds = rng.integers(0, 2**63 - 1, size=1 if self.per_bag else self.k)
        seeds = np.broadcast_to(seeds, (self.k,))
        images = [
            neighbours.train_image(
                self.source[int(members[p])], np.random.default_rng(int(s)), self.image_size,
                self.spec,
            )
            for p, s in zip(pick, seeds, strict=True)
        ]  # fmt: skip
        return {
            "image": np.stack(images),
            "label": np.int32(self.scans.labels[int(scan)]),
            "slice_mask": np.ones(self.k, np.int32),
            "positions": pick.astype(np.int32),
        }


def train_bag_dataset(
    source, scans: ScanIndex, pipeline: PipelineSpec, global_batch: int, *, seed: int,
    start_step: int = 0, balanced: bool | None = None,
) -> grain.IterDataset:  # fmt: skip
    """Infinite training bags {image uint8 (b, K, S, S, C), label int32 (b,), slice_mask int32
    (b, K), positions int32 (b, K)} from `start_step` on; `global_batch` counts bags.

    Scans are shuffled per epoch, or drawn class-balanced (`balanced`, by default
    `pipeline.balanced_sampling`). With mixing on, batches carry soft `targets` (b, classes),
    whole bags mixed. With `pipeline.neighbours` > 0, C = 2n+1 (2.5D).
    """
    _check_source(source, scans)
    k = bag_slices(pipeline, scans)
    source = with_neighbours(source, pipeline, _neighbour_index(pipeline, scans))
    transform = TrainBagTransform(
        source, scans, k, pipeline.image_size, pipeline.augment, pipeline.bag_augment == "bag"
    )
    ds = grain.MapDataset.range(len(scans)).seed(seed)
    use_balanced = pipeline.balanced_sampling if balanced is None else balanced
    ds = ClassBalancedSampler(ds, scans.labels, seed) if use_balanced else ds.shuffle().repeat()
    return batched_stream(ds.random_map(transform), pipeline, global_batch, seed, start_step)


@dataclasses.dataclass(frozen=True)
class EvalBagTransform:
    """Grain `map`: a scan index to its whole scan {image (K_max, S, S, C), label, slice_mask,
    positions, records}, slices past the scan's end zero with mask 0 and record -1."""

    source: object
    scans: ScanIndex
    k_max: int
    image_size: int
    channels: int

    def __call__(self, scan: int) -> dict:
        members = self.scans.members[int(scan)]
        n, size = len(members), self.image_size
        image = np.zeros((self.k_max, size, size, self.channels), np.uint8)
        for j, record in enumerate(members):
            image[j] = neighbours.eval_image(self.source[int(record)], size)
        records = np.full(self.k_max, -1, np.int32)
        records[:n] = members
        real = np.arange(self.k_max) < n
        return {
            "image": image,
            "label": np.int32(self.scans.labels[int(scan)]),
            "slice_mask": real.astype(np.int32),
            "positions": np.where(real, np.arange(self.k_max), 0).astype(np.int32),
            "records": records,
        }


def _mark_padding(element: dict) -> dict:
    """A padding bag of the last global batch names no records."""
    if element["mask"] == 0:
        element = dict(element, records=np.full_like(element["records"], -1))
    return element


def eval_bag_dataset(
    source, scans: ScanIndex, pipeline: PipelineSpec, global_batch: int, *, k_max: int = 0
) -> grain.IterDataset:
    """One pass over the scans in scan order, each with all its slices, padded to `k_max` (0:
    the split's longest scan): {image, label, slice_mask, positions, records (b, K_max) record
    indices or -1, mask (b,), index (b,) scan index or -1}; the last global batch is padded with
    mask-0 bags, so every record appears exactly once."""
    _check_source(source, scans)
    k_max = k_max or scans.max_slices
    if k_max < scans.max_slices:
        raise ValueError(f"k_max {k_max} < the {scans.max_slices} slices of {scans.split}'s "
                         "longest scan")  # fmt: skip
    source = with_neighbours(source, pipeline, _neighbour_index(pipeline, scans))
    transform = EvalBagTransform(source, scans, k_max, pipeline.image_size, pipeline.channels)
    ds = grain.MapDataset.range(len(scans)).map(transform)
    b = per_process_batch(global_batch)
    ds = ProcessShard(ds, jax.process_index(), jax.process_count(), b, pad_to_global_batch=True)
    ds = ds.map(_mark_padding).batch(b, drop_remainder=True)
    return _prefetch(ds, pipeline.eval_num_workers, pipeline.prefetch_buffer_size)


def _neighbour_index(pipeline: PipelineSpec, scans: ScanIndex) -> np.ndarray | None:
    return scans.neighbour_index(pipeline.neighbours) if pipeline.neighbours else None


def _check_source(source, scans: ScanIndex) -> None:
    if len(source) != scans.num_records:
        raise ValueError(
            f"the source has {len(source)} records, the ScanIndex of {scans.split} "
            f"{scans.num_records}: build it from the same split's records"
        )


def bag_batch_bytes(per_process_bags: int, k: int, image_size: int, channels: int) -> int:
    """Bytes of one host batch of training bags: uint8 images plus the int32 label, slice mask
    and positions (soft targets with mixing add 4 bytes per class per bag)."""
    images = per_process_bags * k * image_size * image_size * channels
    return images + 4 * per_process_bags * (1 + 2 * k)


def describe_bags(pipeline: PipelineSpec, global_batch: int, scans: ScanIndex) -> str:
    """One line for the start of a bag run: bags per step, K, shapes, host batch memory, and
    how many training scans are shorter than K (filled by drawing slices again)."""
    k, s, c = bag_slices(pipeline, scans), pipeline.image_size, pipeline.channels
    b = per_process_batch(global_batch)
    mb = bag_batch_bytes(b, k, s, c) / 1e6
    counts = scans.counts
    short = int((counts < k).sum())
    return (
        f"bags: {global_batch}/step x {k} slices of {s}x{s}x{c} = {global_batch * k} images, "
        f"{mb:.1f} MB per host batch; {len(scans)} {scans.split} scans of "
        f"{counts.min()}-{counts.max()} slices, {short} under {k}"
    )


def split_source(data, split: str, neighbours_each_side: int = 0):
    """A prepared data set's random-access source of `split` (dataset.AdniData.source), whose
    records also carry their neighbours' images with 2.5D input (`neighbours_each_side` > 0,
    data.neighbours), so every pipeline, statistics pass and Grad-CAM reads the same input."""
    source = data.source(split)
    if neighbours_each_side == 0:
        return source
    scans = ScanIndex.from_records(data.records(split), split)
    return neighbours.NeighbourSource(source, scans.neighbour_index(neighbours_each_side))
