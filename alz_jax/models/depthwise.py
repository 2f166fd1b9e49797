"""Depthwise (per-channel) 2D convolution, 'same' padding, stride 1: the 7x7 mixing op of a
ConvNeXt block, in two formulations with the same parameters and the same result.

- 'xla': XLA's grouped convolution (`feature_group_count` = channels): fast on GPU and TPU.
- 'shift': a sum over the kernel's taps of shifted input slices times that tap's per-channel
  weights, with a hand-written backward pass. XLA:CPU runs its grouped convolution and, worse,
  that convolution's kernel gradient far below memory speed; measured on a 2-core AVX-512 CPU
  (batch 16, ConvNeXt-T at 224 px) this formulation makes the forward plus backward of a stage-1
  block about 4x faster and of a stage-4 block about 15x faster (docs/performance.md).

`auto` picks 'shift' on CPU and 'xla' elsewhere. Both take the kernel in the layout of
`nnx.Conv(feature_group_count=C)`, (kh, kw, 1, C), so checkpoints don't depend on the choice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "shift")


def resolve(impl: str, backend: str | None = None) -> str:
    """The concrete implementation for `impl` on `backend` (default: JAX's default backend)."""
    if impl not in IMPLS:
        raise ValueError(f"config.model.depthwise = {impl!r}: expected one of {IMPLS}")
    if impl != "auto":
        return impl
    return "shift" if (backend or jax.default_backend()) == "cpu" else "xla"


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
    """Per-channel convolution of NHWC `x` with `kernel` (kh, kw, 1, C), odd kh and kw, zero
    padding to the same size, no bias; `impl` is 'xla' or 'shift' (see the module docstring)."""
    kh, kw, _, channels = kernel.shape
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=(1, 1),
            padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
    if impl == "shift":
        return _shift_conv(x, _varying_like(kernel[:, :, 0, :], x))
    raise ValueError(f"depthwise implementation {impl!r}: expected 'xla' or 'shift'")


def _varying_like(kernel: jax.Array, x: jax.Array) -> jax.Array:
    """Inside shard_map, marks a replicated kernel as varying over the axes `x` varies over, so
    the custom backward pass may return a per-device kernel gradient (the transpose of this cast
    sums it over devices, as autodiff does for any replicated parameter)."""
    axes = tuple(sorted(_varying_axes(x) - _varying_axes(kernel)))
    if not axes:
        return kernel
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(kernel, axes, to="varying")
    return jax.lax.pvary(kernel, axes)  # JAX before 0.8.2: the same cast under its old name


def _varying_axes(x: jax.Array) -> frozenset:
    """The mesh axes `x` varies over inside shard_map: `typeof(x).manual_axis_type.varying`
    since JAX 0.10 (which removed `.vma`), `typeof(x).vma` before; none outside shard_map."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()))


def _pad(x: jax.Array, kh: int, kw: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))


def _sum_of_taps(padded: jax.Array, kernel: jax.Array, height: int, width: int) -> jax.Array:
    """sum over taps (i, j) of padded[:, i:i+height, j:j+width] * kernel[i, j], in float32.

    One elementwise expression: XLA fuses it into a single pass over the output."""
    out = None
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            window = padded[:, i : i + height, j : j + width, :].astype(jnp.float32)
            term = window * kernel[i, j].astype(jnp.float32)
            out = term if out is None else out + term
    return out


@jax.custom_vjp
def _shift_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    kh, kw = kernel.shape[:2]
    return _sum_of_taps(_pad(x, kh, kw), kernel, *x.shape[1:3]).astype(x.dtype)


def _shift_conv_fwd(x, kernel):
    return _shift_conv(x, kernel), (x, kernel)


def _shift_conv_bwd(residuals, grad):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    batch, height, width, channels = x.shape
    # Input gradient: the same convolution of the output gradient with the flipped kernel.
    dx = _sum_of_taps(_pad(grad, kh, kw), kernel[::-1, ::-1], height, width).astype(x.dtype)
    # Kernel gradient dk[i, j, c] = sum over b, h, w of x_padded[b, h+i, w+j, c] grad[b, h, w, c].
    # The sum over the batch is an explicit chain of adds (one fused elementwise pass per tap);
    # the sum over pixels is a matrix-vector product. XLA:CPU's own reductions over the major
    # axes, and every other arrangement tried, ran 2-25x slower (docs/performance.md).
    padded = _pad(x, kh, kw).astype(jnp.float32)
    grad32 = grad.astype(jnp.float32)

    def batch_sum(i: int, j: int) -> jax.Array:
        total = None
        for b in range(batch):
            term = padded[b, i : i + height, j : j + width] * grad32[b]
            total = term if total is None else total + term
        return total.reshape(height * width, channels)

    per_tap = jnp.stack([batch_sum(i, j) for i in range(kh) for j in range(kw)])
    dk = jnp.einsum("tnc,n->tc", per_tap, jnp.ones((height * width,), jnp.float32))
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)
