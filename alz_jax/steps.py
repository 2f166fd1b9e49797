"""The model, the train state and the jitted train and eval steps, built by one factory.

`main`, `evaluate` and the benchmarks all build their steps here, so they run the same code. The
train state is a plain pytree {step, params, opt_state}; parameters are a pure dict of arrays
(the canonical checkpoint layout) merged into the NNX module inside the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from alz_jax import optim, sharding
from alz_jax.data import preprocess
from alz_jax.models import convnext

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Model:
    """A ConvNeXt's structure (graphdef) and spec; parameters live in the train state."""

    spec: convnext.ConvNeXtSpec
    graphdef: nnx.GraphDef

    def apply(self, params, images: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits for normalised NHWC float images."""
        return nnx.merge(self.graphdef, params)(images, dropout_key=dropout_key)


def init_params(spec: convnext.ConvNeXtSpec, seed: int):
    """Initial parameters (a pure dict) of a ConvNeXt."""
    return nnx.to_pure_dict(nnx.state(convnext.ConvNeXt(spec, rngs=nnx.Rngs(seed)), nnx.Param))


def make_model(spec: convnext.ConvNeXtSpec) -> Model:
    """The Model (structure only, no parameter memory) for a spec."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: convnext.ConvNeXt(spec, rngs=nnx.Rngs(0))))
    return Model(spec=spec, graphdef=graphdef)


def create_train_state(
    spec: convnext.ConvNeXtSpec,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    seed: int,
) -> TrainState:
    """A fresh train state created directly on device, replicated over the mesh."""

    def init() -> TrainState:
        params = init_params(spec, seed)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def abstract_train_state(
    spec: convnext.ConvNeXtSpec, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it (for restore)."""

    def init() -> TrainState:
        params = init_params(spec, 0)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    shapes = jax.eval_shape(init)
    repl = sharding.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy against label-smoothed one-hot targets (float32)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


_NOISE_STREAM = 0x6E6F6973


def add_gaussian_noise(key: jax.Array, images: jax.Array, prob: float, std: float) -> jax.Array:
    """Adds N(0, std^2) noise to each image with probability `prob` (per image), in float.

    The seed pipeline adds noise to [0, 1] tensors without clipping; here it is added after
    normalisation with std divided by the pixel std, which is the same thing.
    """
    apply_key, noise_key = jax.random.split(key)
    apply = jax.random.bernoulli(apply_key, prob, (images.shape[0],) + (1,) * (images.ndim - 1))
    noise = jax.random.normal(noise_key, images.shape, images.dtype) * std
    return images + jnp.where(apply, noise, jnp.zeros_like(noise))


def make_train_step(
    model: Model,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    pixel_stats: dict[str, float],
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Jitted, state-donating train step: (state, {image uint8, label}) -> (state, metrics)."""
    smoothing = config.optim.label_smoothing
    base_key = jax.random.key(config.seed)
    mean, std = pixel_stats["mean"], pixel_stats["std"]
    noise_prob, noise_std = (
        config.augment.get("noise_prob", 0.0),
        config.augment.get("noise_std", 0.0),
    )

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        images = preprocess.normalize(batch["image"], mean, std)
        # Derived from the step, so a resumed run draws the same stochastic depth masks and noise.
        dropout_key = jax.random.fold_in(base_key, state["step"])
        if noise_prob > 0 and noise_std > 0:
            images = add_gaussian_noise(
                jax.random.fold_in(dropout_key, _NOISE_STREAM), images, noise_prob, noise_std / std
            )

        def loss_fn(params):
            logits = model.apply(params, images, dropout_key)
            if "targets" in batch:  # mixed on host, label smoothing already applied there
                loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), batch["targets"])
            else:
                loss = cross_entropy(logits, batch["label"], smoothing)
            return loss.mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "learning_rate": schedule(state["step"]),
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
        }
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        return new_state, metrics

    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        train_step,
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )


def make_predict_step(
    model: Model, pixel_stats: dict[str, float], mesh: jax.sharding.Mesh
) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted (params, images uint8) -> class probabilities (float32), batch-sharded."""
    mean, std = pixel_stats["mean"], pixel_stats["std"]

    def predict(params, images: jax.Array) -> jax.Array:
        logits = model.apply(params, preprocess.normalize(images, mean, std))
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(predict, in_shardings=(repl, data), out_shardings=data)


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule for a run of `total_steps`."""
    schedule = optim.learning_rate_schedule(config.optim, total_steps, warmup_steps)
    return optim.make_optimizer(config.optim, schedule), schedule
