"""Classification heads (`model.head`): the layer a family puts after its pooled embedding, the
per-example loss of its logits, the class probabilities and the head's own decision.

- `softmax`: K logits, softmax cross-entropy, argmax (the unordered classes' head).
- `coral`: CORAL (Cao, Mirjalili and Raschka, "Rank consistent ordinal regression for neural
  networks with application to age estimation", Pattern Recognition Letters 2020): K - 1
  binary tasks "y > k" sharing one weight vector, each with its own bias.
- `corn`: CORN (Shi, Cao and Raschka, "Deep neural networks for rank-consistent ordinal
  regression based on conditional probabilities", 2021): K - 1 independent logits, task k
  the conditional P(y > k | y > k - 1), trained on the examples its condition holds for.

Every loss takes soft targets (B, K) (Mixup/CutMix mixes and label smoothing) and is linear in
them: the loss of a mix of two labels is the same mix of the two labels' losses. Families
build their classifier with `Head.layer` at the attribute their softmax classifier had, so
parameter paths, the `optim.trainable` presets and Grad-CAM keep working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alz_jax.host.errors import UserError

# The smallest probability log_probs takes the log of: a class probability that rounds (or,
# for CORAL, clips) to 0 gives a finite log.
TINY = float(np.finfo(np.float32).tiny)


def _reverse_cumsum(targets: jax.Array) -> jax.Array:
    """(B, K) -> (B, K): entry k is sum_{j >= k} targets_j, i.e. P(y >= k)."""
    return jnp.flip(jnp.cumsum(jnp.flip(targets, -1), -1), -1)


@dataclasses.dataclass(frozen=True)
class Head:
    """The softmax head; the ordinal heads subclass it. `name` is its `model.head` value."""

    name: str = "softmax"

    def num_outputs(self, num_classes: int) -> int:
        """The classifier's outputs for `num_classes` classes (softmax: K; ordinal: K - 1)."""
        return num_classes

    def num_classes(self, num_outputs: int) -> int:
        """The classes behind `num_outputs` logits (the inverse of `num_outputs`)."""
        return num_outputs

    def macs(self, in_features: int, num_classes: int) -> int:
        """Multiply-adds of the classifier on one embedding of `in_features` (FLOPs count)."""
        return in_features * self.num_outputs(num_classes)

    def layer(
        self,
        in_features: int,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        kernel_init: Callable,
        bias_init: Callable,
        dtype,
        param_dtype,
    ) -> nnx.Module:
        """The classifier: an nnx.Linear (in_features -> num_outputs) with the family's
        initialisers, parameters `kernel` and `bias`."""
        return nnx.Linear(in_features, self.num_outputs(num_classes), kernel_init=kernel_init,
                          bias_init=bias_init, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)  # fmt: skip

    def loss(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-example loss (B,) of logits (B, num_outputs) against soft targets (B, K)."""
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)

    def class_probs(self, logits: jax.Array) -> jax.Array:
        """Class probabilities (B, K): entries >= 0, rows summing to 1."""
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def log_probs(self, logits: jax.Array) -> jax.Array:
        """Log class probabilities (B, K), finite."""
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    def predicted(self, logits: jax.Array) -> jax.Array:
        """The head's own decision (B,) int32: the most probable class."""
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


class CoralLayer(nnx.Module):
    """CORAL's output layer: logits_k = w . x + b_k (B, K - 1), float32 or `dtype`. `kernel`
    (in, 1) is the one weight vector the K - 1 tasks share (no bias of its own), `bias` (K - 1,)
    the tasks' thresholds, initialised as coral-pytorch's CoralLayer(preinit_bias=True):
    arange(K - 1, 0, -1) / (K - 1), i.e. (K-1)/(K-1), ..., 1/(K-1), descending (ordered)."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs,
                 kernel_init: Callable, dtype, param_dtype):  # fmt: skip
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, 1), param_dtype))
        self.bias = nnx.Param(coral_initial_bias(num_classes).astype(param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        return x @ self.kernel.value.astype(self.dtype) + self.bias.value.astype(self.dtype)


def coral_initial_bias(num_classes: int) -> jax.Array:
    """coral-pytorch's preinit_bias: arange(K - 1, 0, -1) / (K - 1) (float32, K - 1 values)."""
    return jnp.arange(num_classes - 1, 0, -1, dtype=jnp.float32) / (num_classes - 1)


@dataclasses.dataclass(frozen=True)
class _OrdinalHead(Head):
    """What CORAL and CORN share: K - 1 logits, one per threshold "y > k"."""

    def num_outputs(self, num_classes: int) -> int:
        """K - 1 logits, one per threshold between ordered classes."""
        return num_classes - 1

    def num_classes(self, num_outputs: int) -> int:
        """K = outputs + 1."""
        return num_outputs + 1

    def log_probs(self, logits: jax.Array) -> jax.Array:
        """log of `class_probs`, each probability clipped at TINY first (finite)."""
        return jnp.log(jnp.maximum(self.class_probs(logits), TINY))

    def predicted(self, logits: jax.Array) -> jax.Array:
        """The number of thresholds passed: sum_k [P(y > k) > 0.5] (B,) int32."""
        return jnp.sum(self.exceed_probs(logits) > 0.5, axis=-1).astype(jnp.int32)

    def exceed_probs(self, logits: jax.Array) -> jax.Array:
        """P(y > k), k = 0..K-2 (B, K - 1)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class CoralHead(_OrdinalHead):
    """CORAL: P(y > k) = sigmoid(logits_k), with the logits from one shared weight vector.

    Loss (the paper's eq. 4, coral-pytorch's coral_loss before its batch mean): -sum_k
    [levels_k log s_k + (1 - levels_k) log(1 - s_k)], s_k = sigmoid(logits_k), with levels_k =
    P(y > k) = sum_{j > k} targets_j (for a hard label y: [y > k]).

    Class probabilities: p_k = P(y > k - 1) - P(y > k) (P(y > -1) = 1, P(y > K - 1) = 0). The
    paper's rank consistency holds when the biases are ordered (non-increasing); were they not,
    a difference could be negative: those are clipped to 0 and the row renormalised."""

    name: str = "coral"

    def layer(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs, kernel_init: Callable,
              bias_init: Callable, dtype, param_dtype) -> nnx.Module:  # fmt: skip
        """A CoralLayer (kernel (in, 1), bias (K - 1,)); `bias_init` is not used: the biases
        start as coral-pytorch's preinit_bias."""
        return CoralLayer(in_features, num_classes, rngs=rngs, kernel_init=kernel_init,
                          dtype=dtype, param_dtype=param_dtype)  # fmt: skip

    def macs(self, in_features: int, num_classes: int) -> int:
        """One shared dot product per embedding (the K - 1 biases are additions)."""
        return in_features

    def loss(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-example CORAL loss (B,) against soft targets (B, K)."""
        z = logits.astype(jnp.float32)
        levels = _reverse_cumsum(targets.astype(jnp.float32))[:, 1:]
        log_s, log_not_s = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
        return -jnp.sum(levels * log_s + (1.0 - levels) * log_not_s, axis=-1)

    def exceed_probs(self, logits: jax.Array) -> jax.Array:
        """P(y > k) = sigmoid(logits_k)."""
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    def class_probs(self, logits: jax.Array) -> jax.Array:
        """Differences of the cumulative probabilities, negatives clipped to 0, renormalised."""
        s = self.exceed_probs(logits)
        ones, zeros = jnp.ones_like(s[:, :1]), jnp.zeros_like(s[:, :1])
        cum = jnp.concatenate([ones, s, zeros], axis=-1)
        probs = jnp.maximum(cum[:, :-1] - cum[:, 1:], 0.0)
        # The unclipped differences sum to 1, so the clipped ones sum to at least 1.
        return probs / jnp.sum(probs, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class CornHead(_OrdinalHead):
    """CORN: s_k = sigmoid(logits_k) = P(y > k | y > k - 1), P(y > k) = s_0 s_1 ... s_k.

    Loss per example: -sum_k [P(y > k) log s_k + (P(y >= k) - P(y > k)) log(1 - s_k)] with the
    targets' P (P(y >= 0) = 1): for a hard label, the sum of the binary cross-entropies of the
    tasks whose conditional subset (y > k - 1) holds the example. coral-pytorch's corn_loss
    divides the batch's sum by the number of (example, task) pairs; the train step needs a
    per-example loss (it sums over devices and microbatches and divides by the global batch),
    so this differs from it by a batch-dependent positive scale (the mean number of tasks an
    example is in), not in its minimiser.

    Class probabilities: p_k = P(y > k - 1) (1 - s_k), p_{K-1} = P(y > K - 2): >= 0 and
    summing to 1 for any logits."""

    name: str = "corn"

    def loss(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-example CORN loss (B,) against soft targets (B, K)."""
        z = logits.astype(jnp.float32)
        at_least = _reverse_cumsum(targets.astype(jnp.float32))
        # P(y >= k) - P(y > k) = targets_k.
        return -jnp.sum(at_least[:, 1:] * jax.nn.log_sigmoid(z)
                        + targets[:, :-1] * jax.nn.log_sigmoid(-z), axis=-1)  # fmt: skip

    def exceed_probs(self, logits: jax.Array) -> jax.Array:
        """P(y > k) = prod_{j <= k} sigmoid(logits_j)."""
        return jnp.cumprod(jax.nn.sigmoid(logits.astype(jnp.float32)), axis=-1)

    def class_probs(self, logits: jax.Array) -> jax.Array:
        """P(y = k) from the conditional probabilities."""
        z = logits.astype(jnp.float32)
        above = jnp.concatenate([jnp.ones_like(z[:, :1]), self.exceed_probs(z)], axis=-1)
        stop = jnp.concatenate([jax.nn.sigmoid(-z), jnp.ones_like(z[:, :1])], axis=-1)
        return above * stop


HEADS: dict[str, Head] = {}


def register(head: Head) -> Head:
    """Makes a head known to `model.head` (a name taken is an error)."""
    if head.name in HEADS:
        raise ValueError(f"head {head.name!r}: already registered")
    HEADS[head.name] = head
    return head


def get(name: str) -> Head:
    """The head `model.head` names; an unknown name is a UserError listing the choices."""
    if name not in HEADS:
        raise UserError(f"config.model.head = {name!r}: expected one of {'|'.join(HEADS)}.")
    return HEADS[name]


def is_ordinal(name: str) -> bool:
    """Whether the head `name` models ordered classes (fewer outputs than classes)."""
    return isinstance(HEADS.get(name), _OrdinalHead)


register(Head())
register(CoralHead())
register(CornHead())
