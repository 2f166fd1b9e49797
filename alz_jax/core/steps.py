"""The model, the train state and the jitted train and eval steps, built by one factory.

`main`, `evaluate` and the benchmarks all build their steps here, so they run the same code. The
train state is a plain pytree {step, params, opt_state} plus the weight averages (ema; swa and
swa_count) when enabled; parameters are a pure dict of arrays (the canonical checkpoint layout)
merged into the NNX module inside the step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alz_jax.core import averaging, sharding
from alz_jax.data import preprocess
from alz_jax.host.errors import check_fields
from alz_jax.models import batchnorm, heads, registry, scan

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Model:
    """A model's structure (graphdef) and spec; parameters (and running statistics) live in the
    train state.

    Evaluation takes *weights*: the parameter tree, or for a model with BatchNorm the dict
    {"params", "batch_stats"} (running statistics travel with the weights they belong to, in the
    EMA and SWA averages as in the raw state)."""

    spec: Any  # a model family's spec (models/registry.py)
    graphdef: nnx.GraphDef
    batch_stats: bool = False  # the model keeps BatchNorm running statistics
    bn_momentum: float = batchnorm.DEFAULT_MOMENTUM
    # BatchNorms of frozen layers ('layer1/0/bn1'): in training they normalise with their
    # running statistics and keep them (frozen_batch_norms).
    frozen_norms: tuple[str, ...] = ()
    # What the predict step returns from the logits (B, K): the task's outputs (the run's task,
    # evaluation/tasks.py); None: the logits.
    outputs: Callable[[jax.Array], jax.Array] | None = None

    def split(self, weights) -> tuple[Any, Any]:
        """(params, batch_stats) of evaluation weights; batch_stats {} without BatchNorm."""
        if self.batch_stats:
            return weights["params"], weights["batch_stats"]
        return weights, {}

    def weights(self, params, batch_stats):
        """Evaluation weights of (params, batch_stats): the inverse of `split`."""
        return {"params": params, "batch_stats": batch_stats} if self.batch_stats else params

    def module(self, weights) -> nnx.Module:
        """The NNX model carrying `weights`, in evaluation mode (running statistics)."""
        params, stats = self.split(weights)
        if self.batch_stats:
            return nnx.merge(self.graphdef, params, stats)
        return nnx.merge(self.graphdef, params)

    def apply(
        self, weights, images: jax.Array, sample_keys: jax.Array | None = None, **bag_inputs
    ) -> jax.Array:
        """Evaluation-mode logits for normalised NHWC float images (a bag model: (B, K, H, W,
        C) bags with their `slice_mask` and `positions` in `bag_inputs`); stochastic depth
        when per-sample keys are given."""
        return self.module(weights)(images, sample_keys=sample_keys, **bag_inputs)

    def train_apply(
        self, params, batch_stats, images: jax.Array, sample_keys: jax.Array | None,
        axis_name: str | None = None, **bag_inputs,
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """Training-mode logits and the running statistics after this batch: BatchNorm
        normalises with the batch's statistics (the global batch's: under shard_map averaged
        over `axis_name`) and the running ones move by `bn_momentum` towards them; the
        `frozen_norms` keep theirs and use them."""
        if not self.batch_stats:
            return self.apply(params, images, sample_keys, **bag_inputs), batch_stats
        module = nnx.merge(self.graphdef, params, batch_stats)
        logits, seen = batchnorm.observed(
            module, images, axis_name, self.frozen_norms, sample_keys=sample_keys, **bag_inputs
        )
        return logits, batchnorm.update_running(batch_stats, seen, self.bn_momentum)


def make_model(
    spec, frozen_norms: tuple[str, ...] = (),
    outputs: Callable[[jax.Array], jax.Array] | None = None,
) -> Model:  # fmt: skip
    """The Model (structure only, no parameter memory) for a spec of any family; `frozen_norms`
    as `frozen_batch_norms` gives them; `outputs` what its predict step returns."""
    abstract = registry.abstract(spec)
    has_stats = registry.has_batch_stats(spec)
    if has_stats:
        graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    else:
        graphdef, _ = nnx.split(abstract)
    return Model(spec=spec, graphdef=graphdef, batch_stats=has_stats, frozen_norms=frozen_norms,
                 outputs=outputs)  # fmt: skip


def frozen_batch_norms(spec, trainable_pattern: str) -> tuple[str, ...]:
    """The paths of the BatchNorms whose scale the regex `trainable_pattern` leaves frozen."""
    if not registry.has_batch_stats(spec):
        return ()
    regex = re.compile(trainable_pattern)
    return tuple(path for path, _ in batchnorm.named_batch_norms(registry.abstract(spec))
                 if not regex.fullmatch(f"{path}/scale"))  # fmt: skip


def _initial_state(
    spec, tx, averages: averaging.AveragingSpec, seed: int, variables=None
) -> TrainState:
    if variables is None:
        params, stats = registry.init_variables(spec, seed)
    else:
        params, stats = variables if isinstance(variables, tuple) else (variables, {})
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if stats:
        state["batch_stats"] = stats
        state.update(averaging.init_state(averages, {"params": params, "batch_stats": stats}))
        if averages.swa:  # the SWA update count its statistics were last recomputed at
            state["swa_stats_count"] = jnp.zeros((), jnp.int32)
    else:
        state.update(averaging.init_state(averages, params))
    return state


def create_train_state(
    spec,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    seed: int,
    averages: averaging.AveragingSpec = averaging.NO_AVERAGES,
    params=None,
) -> TrainState:
    """A fresh train state {step, params, opt_state[, ema][, swa, swa_count]} (with BatchNorm
    also batch_stats, and swa_stats_count) created directly on device, replicated over the
    mesh; from `params` (imported weights: a parameter tree or a (params, batch_stats) pair,
    whose copies the averages start from) or a fresh initialisation with `seed`."""
    return jax.jit(
        lambda p: _initial_state(spec, tx, averages, seed, p),
        out_shardings=sharding.replicated(mesh),
    )(params)


def abstract_train_state(
    spec,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    averages: averaging.AveragingSpec = averaging.NO_AVERAGES,
) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it (for restore)."""
    shapes = jax.eval_shape(lambda: _initial_state(spec, tx, averages, 0))
    repl = sharding.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float, head: str = "softmax"
) -> jax.Array:
    """Per-example loss (float32) of `head` (model.head; softmax: the cross-entropy) against
    label-smoothed one-hot targets over the head's classes (an ordinal head has one logit
    fewer than classes)."""
    loss_head = heads.get(head)
    num_classes = loss_head.num_classes(logits.shape[-1])
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return loss_head.loss(logits, targets)


def example_weights(batch: dict, class_weights: tuple[float, ...]) -> jax.Array:
    """Each example's loss weight: its class's weight, or for mixed soft targets the targets'
    mix of the two classes' weights, whatever the head. The loss is the batch mean of weight x
    the head's per-example loss (not
    divided by the batch's weight sum, which would make a step's scale depend on its class mix);
    'balanced' weights average 1 over the train split, so the loss keeps its scale."""
    weights = jnp.asarray(class_weights, jnp.float32)
    if "targets" in batch:
        return batch["targets"] @ weights
    return weights[batch["label"]]


_NOISE_STREAM = 0x6E6F6973
_AVERAGES_STREAM = 0x61766773


def add_gaussian_noise(
    sample_keys: jax.Array, images: jax.Array, prob: float, std: float
) -> jax.Array:
    """Adds N(0, std^2) noise to each image with probability `prob`, drawn from the image's own
    key (so an image's noise doesn't depend on the batch split), in float.

    The seed pipeline adds noise to [0, 1] tensors without clipping; here it is added after
    normalisation with std divided by the pixel std, which is the same thing.
    """

    def one(key, image):
        apply_key, noise_key = jax.random.split(jax.random.fold_in(key, _NOISE_STREAM))
        noise = jax.random.normal(noise_key, image.shape, image.dtype) * std
        return jnp.where(jax.random.bernoulli(apply_key, prob), image + noise, image)

    return jax.vmap(one)(sample_keys, images)


STEP_IMPLS = ("jit", "shard_map")
# What a batch of bags (data/bags.py) carries besides images and labels, passed to the model.
BAG_INPUTS = ("slice_mask", "positions")


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """How the train step computes an update: its implementation, microbatching, the loss's
    head and label smoothing, on-device noise, and the seed of its per-sample randomness."""

    impl: str = "jit"  # 'jit' (XLA partitions the step) or 'shard_map' (explicit pmean)
    grad_accum_steps: int = 1
    label_smoothing: float = 0.0
    noise_prob: float = 0.0  # Gaussian noise on device, after normalisation
    noise_std: float = 0.0  # in [0, 1] pixel units
    seed: int = 0
    # Per-class loss weights (optim.class_weights, resolved on the train split); () is none.
    class_weights: tuple[float, ...] = ()
    # The model's head (model.head, models/heads.py): its loss and its decision for accuracy.
    head: str = "softmax"

    def __post_init__(self):
        accum = self.grad_accum_steps
        smoothing = self.label_smoothing
        check_fields("", [
            ("step_impl", self.impl, self.impl in STEP_IMPLS, "|".join(STEP_IMPLS)),
            ("grad_accum_steps", accum, isinstance(accum, int) and accum >= 1, "an integer >= 1"),
            ("optim.label_smoothing", smoothing, 0.0 <= smoothing < 1.0, "in [0, 1)"),
            ("augment.noise_prob", self.noise_prob, 0.0 <= self.noise_prob <= 1.0, "in [0, 1]"),
            ("augment.noise_std", self.noise_std, 0 <= self.noise_std < math.inf,
             ">= 0 and finite"),
            ("seed", self.seed, isinstance(self.seed, int) and self.seed >= 0,
             "an integer >= 0"),
            ("optim.class_weights", self.class_weights,
             all(0 <= w < math.inf for w in self.class_weights)
             and (not self.class_weights or sum(self.class_weights) > 0),
             "finite weights >= 0, not all 0"),
            ("model.head", self.head, self.head in heads.HEADS, "|".join(heads.HEADS)),
        ])  # fmt: skip


def _microbatches(tree, accum: int):
    """(B, ...) -> (accum, B / accum, ...): microbatch a holds rows a, a + accum, a + 2 accum...

    Strided rather than contiguous so that each device's rows split the same way (with B / n
    divisible by accum), and a microbatch stays spread over all devices.
    """
    return jax.tree.map(
        lambda x: jnp.moveaxis(x.reshape((x.shape[0] // accum, accum, *x.shape[1:])), 1, 0), tree
    )


@dataclasses.dataclass(frozen=True)
class _Update:
    """What one train step needs besides the state and the batch (static under jit)."""

    model: Model
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    spec: StepSpec
    mean: float
    std: float
    averages: averaging.AveragingSpec

    def sums(self, params, stats, batch: dict, sample_keys: jax.Array, axis_name=None):
        """Summed loss, gradient of the summed loss, correct count over `batch`, and the
        running statistics after it ({} without BatchNorm)."""
        images = preprocess.normalize(batch["image"], self.mean, self.std)
        if self.spec.noise_prob > 0 and self.spec.noise_std > 0:
            images = add_gaussian_noise(
                sample_keys, images, self.spec.noise_prob, self.spec.noise_std / self.std
            )

        bag_inputs = {k: batch[k] for k in BAG_INPUTS if k in batch}

        def loss_fn(params):
            logits, new_stats = self.model.train_apply(
                params, stats, images, sample_keys, axis_name, **bag_inputs
            )
            if "targets" in batch:  # mixed on host, label smoothing already applied there
                loss = heads.get(self.spec.head).loss(logits, batch["targets"])
            else:
                loss = cross_entropy(logits, batch["label"], self.spec.label_smoothing,
                                     self.spec.head)  # fmt: skip
            if self.spec.class_weights:
                loss = loss * example_weights(batch, self.spec.class_weights)
            return loss.sum(), (logits, new_stats)

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        predicted = heads.get(self.spec.head).predicted(logits)
        correct = jnp.sum(predicted == batch["label"]).astype(jnp.float32)
        return (loss, grads, correct), new_stats

    def accumulated_sums(
        self, params, stats, batch: dict, sample_keys: jax.Array, constrain, axis_name=None
    ):
        """`sums` over the whole batch, as `grad_accum_steps` microbatches (BatchNorm's
        running statistics move once per microbatch, as in PyTorch's accumulation loops)."""
        accum = self.spec.grad_accum_steps
        if accum == 1:
            return self.sums(params, stats, batch, sample_keys, axis_name)
        micro = constrain(_microbatches((batch, sample_keys), accum))

        def body(carry, mb):
            total, stats = carry
            sums, stats = self.sums(params, stats, *mb, axis_name)
            return (jax.tree.map(jnp.add, total, sums), stats), None

        # XLA:CPU runs this model ~10x slower inside a while loop (measured: 4.9 s against
        # 0.41 s per step of the demo model), so on CPU the microbatches are a Python loop;
        # accelerators keep `scan`, which bounds activation memory to one microbatch.
        carry = self.sums(params, stats, *jax.tree.map(lambda x: x[0], micro), axis_name)
        if jax.default_backend() == "cpu":
            for a in range(1, accum):
                carry, _ = body(carry, jax.tree.map(lambda x, a=a: x[a], micro))
        else:
            carry, _ = jax.lax.scan(body, carry, jax.tree.map(lambda x: x[1:], micro))
        return carry

    def sample_keys(self, step: jax.Array, positions: jax.Array) -> jax.Array:
        """One key per sample from (seed, step, position in the global batch)."""
        step_key = jax.random.fold_in(jax.random.key(self.spec.seed), step)
        return jax.vmap(jax.random.fold_in, (None, 0))(step_key, positions)

    def apply(self, state: TrainState, loss, grads, accuracy, stats) -> tuple[TrainState, dict]:
        """The optimizer update, the weight averages and the step's metrics."""
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        base_key = jax.random.key(self.spec.seed)
        avg_key = jax.random.fold_in(jax.random.fold_in(base_key, _AVERAGES_STREAM), step)
        old_averages = {k: v for k, v in state.items() if k in ("ema", "swa", "swa_count")}
        new_state = {"step": step, "params": params, "opt_state": opt_state}
        averages = averaging.update(
            self.averages, old_averages, self.model.weights(params, stats), step, avg_key
        )
        if self.model.batch_stats:
            new_state["batch_stats"] = stats
            if "swa" in averages:
                # SWA averages parameters only; its statistics are recomputed over the training
                # data (make_statistics_pass), as torch's update_bn after AveragedModel.
                averages["swa"] = {
                    "params": averages["swa"]["params"],
                    "batch_stats": state["swa"]["batch_stats"],
                }
                new_state["swa_stats_count"] = state["swa_stats_count"]
        new_state.update(averages)
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "learning_rate": self.schedule(state["step"]),
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
        }
        return new_state, metrics

    def jit_step(self, mesh, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """The global-view step: XLA partitions the batch-sharded computation (BatchNorm's
        moments over the batch axis are the global batch's)."""
        size = batch["label"].shape[0]
        sample_keys = self.sample_keys(state["step"], jnp.arange(size))

        def constrain(tree):  # keep each microbatch spread over the devices
            micro = NamedSharding(mesh, P(None, "data"))
            return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, micro), tree)

        (loss, grads, correct), stats = self.accumulated_sums(
            state["params"], state.get("batch_stats", {}), batch, sample_keys, constrain
        )
        grads = jax.tree.map(lambda g: g / size, grads)
        return self.apply(state, loss / size, grads, correct / size, stats)

    def per_device_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """The per-device step under shard_map, with an explicit gradient pmean (and
        BatchNorm moments averaged over the devices)."""
        local = batch["label"].shape[0]
        first = jax.lax.axis_index("data") * local  # this shard's offset in the global batch
        sample_keys = self.sample_keys(state["step"], first + jnp.arange(local))
        (loss, grads, correct), stats = self.accumulated_sums(
            state["params"], state.get("batch_stats", {}), batch, sample_keys,
            lambda tree: tree, "data",
        )  # fmt: skip
        # Means over the global batch: each device's mean, averaged over equal-sized shards.
        grads = jax.lax.pmean(jax.tree.map(lambda g: g / local, grads), "data")
        loss, accuracy = jax.lax.pmean((loss / local, correct / local), "data")
        return self.apply(state, loss, grads, accuracy, stats)


def _shard_map() -> Callable:
    """`jax.shard_map`, or on an older JAX its earlier home `jax.experimental.shard_map` (same
    mesh/in_specs/out_specs keywords), so the step runs on the JAX a host happens to have."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map
    from jax.experimental.shard_map import shard_map  # noqa: PLC0415  (older JAX only)

    return shard_map


def make_train_step(
    model: Model,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    spec: StepSpec,
    pixel_stats: dict[str, float],
    mesh: jax.sharding.Mesh,
    averages: averaging.AveragingSpec = averaging.NO_AVERAGES,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Jitted, state-donating train step: (state, {image uint8, label[, targets]}) ->
    (state, metrics), as `spec.impl`: 'jit' (XLA partitions the batch-sharded computation) or
    'shard_map' (per-device code with an explicit gradient pmean).

    The batch is the whole global batch of one optimizer step; with `spec.grad_accum_steps`
    = A it is processed as A microbatches whose gradients are summed, the same update with a
    1/A activation footprint. Stochastic depth and noise draw from a key per sample, derived
    from (seed, step, the sample's position in the global batch): every implementation, device
    count and microbatching sees the same randomness.
    """
    update = _Update(model, tx, schedule, spec, pixel_stats["mean"], pixel_stats["std"], averages)
    if spec.impl == "jit":
        step_fn = functools.partial(update.jit_step, mesh)
    else:
        step_fn = _shard_map()(
            update.per_device_step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())
        )
    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


VIEWS = ("plain", "hflip", "vflip")  # test-time views: the image, flipped left-right, up-down


def view_of(images: jax.Array, view: str) -> jax.Array:
    """NHWC images (or bags of them, (B, K, H, W, C)) as seen by test-time augmentation
    `view`."""
    if view == "hflip":
        return images[..., ::-1, :]
    if view == "vflip":
        return images[..., ::-1, :, :]
    if view != "plain":
        raise ValueError(f"test-time view {view!r}; expected one of {VIEWS}")
    return images


def make_predict_step(
    model: Model, pixel_stats: dict[str, float], mesh: jax.sharding.Mesh, view: str = "plain"
) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted (params, images uint8) -> the model's outputs per image in float32: its task's
    (`Model.outputs`: for NC/AD the margin z_AD - z_NC, whose sigmoid is P(AD); for K classes
    the logits (B, K)), or the logits. Batch-sharded; `view` flips the images first (test-time
    augmentation). A scan model's is `make_bag_predict_step`'s."""
    if is_bag_model(model):
        return make_bag_predict_step(model, pixel_stats, mesh, view)
    mean, std = pixel_stats["mean"], pixel_stats["std"]
    view_of(jnp.zeros((1, 1, 1, 1)), view)  # an unknown view fails here, not inside jit
    outputs = model.outputs or (lambda logits: logits)

    def predict(params, images: jax.Array) -> jax.Array:
        logits = model.apply(params, preprocess.normalize(view_of(images, view), mean, std))
        return outputs(logits.astype(jnp.float32))

    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(predict, in_shardings=(repl, data), out_shardings=data)


def is_bag_model(model: Model) -> bool:
    """Whether the model reads bags of a scan's slices (a scan model, models/scan.py)."""
    return isinstance(model.spec, scan.ScanSpec)


def make_bag_predict_step(
    model: Model, pixel_stats: dict[str, float], mesh: jax.sharding.Mesh, view: str = "plain"
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Jitted (weights, bags uint8 (B, K, H, W, C), slice_mask (B, K), positions (B, K)) ->
    {outputs: the task's outputs per bag, weights: each slice's share of its bag (B, K),
    slice_outputs: the task's outputs of each slice alone (B, K, ...)} in float32, for a bag
    model (models/scan.py). Batch-sharded over bags; `view` flips every slice first."""
    mean, std = pixel_stats["mean"], pixel_stats["std"]
    view_of(jnp.zeros((1, 1, 1, 1)), view)
    outputs = model.outputs or (lambda logits: logits)

    def predict(weights, bags: jax.Array, slice_mask: jax.Array, positions: jax.Array) -> dict:
        # Evaluation bags are whole scans padded to the longest: positions are below K.
        scan.check_positions(model.spec, bags.shape[1])
        images = preprocess.normalize(view_of(bags, view), mean, std)
        out = model.module(weights).outputs(images, slice_mask=slice_mask, positions=positions)
        slice_logits = out["slice_logits"].astype(jnp.float32)
        b, k = slice_logits.shape[:2]
        alone = outputs(slice_logits.reshape(b * k, -1))
        return {
            "outputs": outputs(out["logits"].astype(jnp.float32)),
            "weights": out["weights"].astype(jnp.float32),
            "slice_outputs": alone.reshape(b, k, *alone.shape[1:]),
        }

    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(predict, in_shardings=(repl, data, data, data), out_shardings=data)


def make_statistics_pass(
    model: Model, pixel_stats: dict[str, float], mesh: jax.sharding.Mesh
) -> Callable[[Any, Any, jax.Array, jax.Array], Any]:
    """Jitted (weights, running, k, images uint8) -> running statistics after the k-th batch
    (0-based) of a BatchNorm statistics pass: the cumulative mean over batches of each layer's
    training-mode batch mean and unbiased variance, as `torch.optim.swa_utils.update_bn`
    (batchnorm.cumulative_statistics is the eager reference). The weights' own statistics are
    not read, except the frozen norms', which stay; batch moments are the global batch's."""
    mean, std = pixel_stats["mean"], pixel_stats["std"]

    def one_batch(weights, running, k, images):
        module = model.module(weights)
        normalized = preprocess.normalize(images, mean, std)
        _, seen = batchnorm.observed(module, normalized, frozen=model.frozen_norms)
        return batchnorm.update_running(running, seen, 1.0 / (k.astype(jnp.float32) + 1.0))

    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(one_batch, in_shardings=(repl, repl, repl, data), out_shardings=repl)
