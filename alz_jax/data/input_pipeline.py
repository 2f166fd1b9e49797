"""Grain input pipeline: shuffle, repeat, decode, augment, shard by process, batch, prefetch.

Training: a seeded shuffle that changes every epoch, per-record augmentation seeded by the
record's position in the global stream, then each process takes its contiguous slice of every
global batch. The global batch at a step is therefore the same whatever the number of processes
and workers. Evaluation: deterministic order, the last global batch padded and masked, so every
image counts exactly once. Batches leave the host as uint8 and become global `jax.Array`s with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import grain
import jax
import numpy as np

from alz_jax.data import augment, mixing, neighbours
from alz_jax.data.pipeline_spec import PipelineSpec  # re-exported: callers use this name


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """Decode, pad to a square, then the host augmentation suite; keeps image and label."""

    image_size: int
    spec: augment.AugmentSpec

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict:
        image = neighbours.train_image(record, rng, self.image_size, self.spec)
        return {"image": image, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Decode and the one evaluation preprocessing; keeps image and label."""

    image_size: int

    def __call__(self, record: Mapping[str, Any]) -> dict:
        return {
            "image": neighbours.eval_image(record, self.image_size),
            "label": np.int32(record["label"]),
        }


class ProcessShard(grain.MapDataset):
    """This process's contiguous slice of every global batch of `parent`.

    Element m of process p is global position (m // b) * b * P + p * b + m % b, with b the
    per-process batch and P the process count. With `pad_to_global_batch`, positions past the end
    of a finite parent yield `padding` (mask 0), so the last global batch is full.
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        process_index: int,
        process_count: int,
        per_process_batch: int,
        pad_to_global_batch: bool = False,
    ):
        super().__init__(parent)
        self._p, self._n_proc, self._b = process_index, process_count, per_process_batch
        self._pad = pad_to_global_batch
        global_batch = per_process_batch * process_count
        n = len(parent)
        n_batches = math.ceil(n / global_batch) if pad_to_global_batch else n // global_batch
        self._length = n_batches * per_process_batch
        self._padding = None
        if pad_to_global_batch and n:
            self._padding = jax.tree.map(np.zeros_like, dict(parent[0], mask=np.int32(0)))
            self._padding["index"] = np.int32(-1)

    def __len__(self) -> int:
        return self._length

    def global_position(self, index: int) -> int:
        """Position in the parent of this process's element `index`."""
        batch, offset = divmod(index, self._b)
        return batch * self._b * self._n_proc + self._p * self._b + offset

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        position = self.global_position(index)
        if not self._pad:
            return self._parent[position]
        if position >= len(self._parent):
            return dict(self._padding)
        return dict(self._parent[position], mask=np.int32(1), index=np.int32(position))

    def __str__(self) -> str:
        return f"ProcessShard(process={self._p}/{self._n_proc}, batch={self._b})"


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Each Grain worker is one core's worth of work: OpenCV's own thread pool off. Workers
    ignore SIGTERM: a scheduler signals the whole process group, and the main process must
    outlive it long enough to save a checkpoint (it closes its workers itself)."""
    del worker_index, worker_count
    cv2.setNumThreads(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _prefetch(ds: grain.MapDataset, num_workers: int, buffer_size: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer_size))
    if num_workers > 0:
        it = it.mp_prefetch(
            # Each worker may run `buffer_size` batches ahead too, not just one (Grain's default):
            # on few cores it catches up while the step holds the CPU (docs/performance.md).
            grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=max(buffer_size, 1)
            ),
            worker_init_fn=_init_worker,
        )
    return it


def per_process_batch(global_batch: int) -> int:
    """The batch each process loads; the global batch must divide evenly over processes."""
    if global_batch % jax.process_count():
        raise ValueError(
            f"batch_size {global_batch} must be divisible by the {jax.process_count()} processes"
        )
    return global_batch // jax.process_count()


class ClassBalancedSampler(grain.MapDataset):
    """An endless stream over `parent` in which every class is equally likely: "epoch" e (as
    many draws as records) draws records with replacement, each with probability proportional
    to 1 / (its class's count), from a generator seeded by (seed, e). Random access, so a
    resumed run finds its position from the step alone."""

    def __init__(self, parent: grain.MapDataset, labels: np.ndarray, seed: int):
        super().__init__(parent)
        labels = np.asarray(labels, np.int64)
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        self._p = weights / weights.sum()
        self._n, self._seed = len(labels), seed
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def __len__(self) -> int:
        return sys.maxsize

    def indices(self, epoch: int) -> np.ndarray:
        """The records epoch `epoch` draws, in order."""
        rng = np.random.default_rng([self._seed, epoch, 0x62616C])
        return rng.choice(self._n, size=self._n, replace=True, p=self._p)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, offset = divmod(index, self._n)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.indices(epoch)
        return self._parent[int(self._order[offset])]

    def __str__(self) -> str:
        return f"ClassBalancedSampler(records={self._n})"


def train_dataset(
    source, pipeline: PipelineSpec, global_batch: int, *, seed: int, start_step: int = 0,
    labels: np.ndarray | None = None, neighbour_index: np.ndarray | None = None,
) -> grain.IterDataset:  # fmt: skip
    """Infinite training batches {image uint8 (b,S,S,1), label int32 (b,)} from `start_step` on.

    With mixing on (`pipeline.mix`), batches also carry soft `targets` (b, K) float32, label
    smoothing included, on the mixing schedule of the run's `mix.total_steps`. With
    `pipeline.balanced_sampling`, records are drawn class-balanced (`labels`: the source's).
    With `pipeline.neighbours` = n > 0 (2.5D), images have 2n+1 channels: `neighbour_index`.
    """
    transform = TrainTransform(pipeline.image_size, pipeline.augment)
    source = with_neighbours(source, pipeline, neighbour_index)
    ds = grain.MapDataset.source(source).seed(seed)
    if pipeline.balanced_sampling:
        if labels is None or len(labels) != len(source):
            raise ValueError("balanced sampling needs the label of every record of the source")
        ds = ClassBalancedSampler(ds, labels, seed)
    else:
        ds = ds.shuffle().repeat()
    return batched_stream(ds.random_map(transform), pipeline, global_batch, seed, start_step)


def batched_stream(
    examples: grain.MapDataset, pipeline: PipelineSpec, global_batch: int, seed: int,
    start_step: int,
) -> grain.IterDataset:  # fmt: skip
    """An endless stream of training examples (images, or bags of a scan's slices) as this
    process's slice of each global batch, mixed (Mixup/CutMix) where the pipeline mixes, from
    `start_step` on, prefetched."""
    b = per_process_batch(global_batch)
    ds = ProcessShard(examples, jax.process_index(), jax.process_count(), b)
    ds = ds.batch(b, drop_remainder=True)
    if pipeline.mix.enabled:  # its group size divides `b`: checked with the batch (run.specs)
        # Before the resume slice, so the mixer sees the true step.
        ds = ds.map_with_index(
            mixing.BatchMixer(pipeline.mix, seed, jax.process_index(), jax.process_count(), b)
        )
    ds = ds[start_step:]
    return _prefetch(ds, pipeline.num_workers, pipeline.prefetch_buffer_size)


def eval_dataset(
    source, pipeline: PipelineSpec, global_batch: int, neighbour_index: np.ndarray | None = None
) -> grain.IterDataset:
    """One deterministic pass: {image, label, mask, index}; padded entries have mask 0, index -1."""
    source = with_neighbours(source, pipeline, neighbour_index)
    ds = grain.MapDataset.source(source).map(EvalTransform(pipeline.image_size))
    b = per_process_batch(global_batch)
    ds = ProcessShard(ds, jax.process_index(), jax.process_count(), b, pad_to_global_batch=True)
    ds = ds.batch(b, drop_remainder=True)
    return _prefetch(ds, pipeline.eval_num_workers, pipeline.prefetch_buffer_size)


def check_counted_once(seen: np.ndarray, split: str) -> None:
    """An evaluation pass counted every image of `split` exactly once (`seen`: its count per
    record), or it is a bug of the pass (padding, sharding), never a user's error."""
    if not np.all(seen == 1):
        raise RuntimeError(
            f"Evaluation of {split} counted images {seen.min()}..{seen.max()} times; expected once."
        )


def with_neighbours(source, pipeline: PipelineSpec, neighbour_index: np.ndarray | None):
    """`source` itself, or with 2.5D (`pipeline.neighbours` > 0) its records' neighbours too
    (`neighbour_index`: (N, 2n+1) record indices from `bags.ScanIndex.neighbour_index`)."""
    n = pipeline.neighbours
    if n == 0 or isinstance(source, neighbours.NeighbourSource):
        return source
    if neighbour_index is None or np.shape(neighbour_index) != (len(source), 2 * n + 1):
        raise ValueError(
            f"data.neighbours = {n} needs the scan structure of the split: neighbour_index of "
            f"shape ({len(source)}, {2 * n + 1}) (ScanIndex.neighbour_index({n})), got "
            f"{None if neighbour_index is None else np.shape(neighbour_index)}"
        )
    return neighbours.NeighbourSource(source, neighbour_index)


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
    """Places this process's batch into global arrays sharded along the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def pixel_stats(source, image_size: int, max_images: int = 0) -> dict[str, float]:
    """Mean and std (in [0, 1]) of the evaluation-preprocessed images of `source`.

    Exact over all images by default; `max_images` > 0 uses an evenly spaced subset.
    """
    n = len(source)
    indices = range(n) if not max_images or max_images >= n else np.linspace(0, n - 1, max_images)
    transform = EvalTransform(image_size)
    total = total_sq = count = 0.0
    for i in indices:
        image = transform(source[int(i)])["image"].astype(np.float64) / 255.0
        total += image.sum()
        total_sq += np.square(image).sum()
        count += image.size
    mean = total / count
    return {"mean": float(mean), "std": float(math.sqrt(max(total_sq / count - mean**2, 1e-12)))}


def iterate(dataset: grain.IterDataset) -> Iterator[dict]:
    """Iterates a Grain dataset (a hook point for timing and closing)."""
    return iter(dataset)
