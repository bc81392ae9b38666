"""Pure JAX quantization numerics: the paper's fake quantizers, bounds and LSQ.

Everything here is a small pure function of arrays; Flax layers live in
`layers.py`. Arithmetic runs in float32 whatever the input dtype (the paper's
`SCALE_DTYPE`), and results are cast back to the input dtype.

Grids (b = bits, B = bound):
  signed:   s = (2^(b-1)-1)/B,  q = clip(floor(x*s + 0.5), -(2^(b-1)-1), 2^(b-1)-1)
  unsigned: s = 2^b/B,          q = clip(floor(x*s), 0, 2^b-1)
  and x_hat = q/s. The signed grid's `full` variant (b >= 2) also takes the code -2^(b-1), as two's
  complement stores it and LSQ's weight grid has it: at 2 bits {-2, -1, 0, 1} instead of the
  symmetric {-1, 0, 1}, four levels where the symmetric grid has three.

Edge cases, chosen so every input gives a finite result:
  * bits = 1, signed: the formula's grid collapses to {0}; we use the binary
    grid q in {-1, +1} (s = 1/B, q = +1 where x >= 0), as BinaryConnect does.
  * bound = 0 (or negative): x_hat = 0 and the gradient is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

GRANULARITIES = ("per_channel", "per_tensor")
# Smallest LSQ start bound: channels whose activations are all zero (dead ReLUs) get it.
LSQ_MIN_BOUND = 1e-8
# A learned bound never falls below this fraction of its start in the forward pass (`positive_bound`).
LSQ_MIN_FRACTION = 1e-2


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")


def int_range(bits: int, signed: bool, full: bool = False) -> tuple[int, int]:
    """The integer codes a quantizer can produce.

    Args:
      bits: bit width, 1..16.
      signed: signed (symmetric, round half up) or unsigned (floor) grid.
      full: a signed grid that also takes -2^(b-1) (two's complement's whole range); b >= 2.

    Returns:
      (qmin, qmax), inclusive.
    """
    _check_bits(bits)
    if full and (not signed or bits < 2):
        raise ValueError(f"the full-range grid is a signed grid of 2 or more bits, got bits={bits}, signed={signed}")
    if signed:
        qmax = 2 ** (bits - 1) - 1 if bits > 1 else 1
        return -qmax - int(full), qmax
    return 0, 2**bits - 1


def scale_numerator(bits: int, signed: bool) -> int:
    """The N in s = N / bound: 2^(b-1)-1 signed (1 for b=1), 2^b unsigned."""
    _check_bits(bits)
    if signed:
        return 2 ** (bits - 1) - 1 if bits > 1 else 1
    return 2**bits


def _round(v: jax.Array, bits: int, signed: bool) -> jax.Array:
    if not signed:
        return jnp.floor(v)
    if bits == 1:
        return jnp.where(v >= 0, 1.0, -1.0).astype(v.dtype)
    return jnp.floor(v + 0.5)


def pow2_floor(s: jax.Array) -> jax.Array:
    """2^floor(log2(s)) of positive float32 s, exactly (from the float's exponent, not a log)."""
    _, e = jnp.frexp(jnp.asarray(s, jnp.float32))
    return jnp.ldexp(jnp.float32(1), e - 1)


def _scale(bound, bits: int, signed: bool, pow2: bool = False) -> tuple[jax.Array, jax.Array]:
    """(bound > 0, s = N / bound) with a safe s of N where the bound is not positive; with pow2,
    s rounded down to a power of two (`pow2_floor`: the grid then reaches at least to the bound)."""
    positive = bound > 0
    s = scale_numerator(bits, signed) / jnp.where(positive, bound, 1.0)
    return positive, pow2_floor(s) if pow2 else s


def bias_on_grid(bias: jax.Array, scale: jax.Array) -> jax.Array:
    """(floor(bias * s) + 0.5) / s, with a straight-through gradient: a conv's bias on the grid of its
    integer sums divided by s (s = s_x * s_w), offset by half a step. With power-of-two scales the
    output then sits halfway between grid points of every coarser power-of-two grid, never on a
    rounding boundary of the next quantizer (`QuantSpec.pow2_scale`)."""
    b = bias.astype(jnp.float32)
    s = jnp.asarray(scale, jnp.float32)
    q = (jnp.floor(b * s) + 0.5) / s
    return (b + lax.stop_gradient(q - b)).astype(bias.dtype)


def _ste_codes(
    x, bound, bits, signed, bound_grad: bool, pow2: bool = False, full: bool = False, pass_outside: bool = False
):
    """(q, s): codes q = clip-round(x*s) with straight-through gradients and the scale s.

    Where bound <= 0, q = 0 and s = 1. With bound_grad=False no gradient reaches
    the bound (the paper's quantizers); with True the bound gets the LSQ gradient
    through both q and s. q is float32. `full`: the full-range signed grid (`int_range`).
    `pass_outside`: x's gradient passes beyond the clip range too (else it is zero there).
    """
    x = x.astype(jnp.float32)
    bound = jnp.asarray(bound, jnp.float32)
    if not bound_grad:
        bound = lax.stop_gradient(bound)
    positive, s = _scale(bound, bits, signed, pow2)
    qmin, qmax = int_range(bits, signed, full)
    v = x * s
    inside = (v >= qmin) & (v <= qmax)
    # Straight-through: identity inside the clip range, zero outside (identity too with pass_outside).
    held = lax.stop_gradient(jnp.clip(v, qmin, qmax))
    if pass_outside:
        # Forward value unchanged (x - x is 0); x gets the gradient it gets inside, the bound none more.
        held = held + (x - lax.stop_gradient(x)) * lax.stop_gradient(s)
    v_clipped = jnp.where(inside, v, held)
    q = v_clipped + lax.stop_gradient(_round(v_clipped, bits, signed) - v_clipped)
    return jnp.where(positive, q, 0.0), jnp.where(positive, s, 1.0)


def _quantize(x, bound, bits, signed, bound_grad: bool, pow2: bool = False):
    """x_hat = q/s (see `_ste_codes`), in x's dtype."""
    q, s = _ste_codes(x, bound, bits, signed, bound_grad, pow2)
    return (q / s).astype(x.dtype)


def ste_codes(
    x: jax.Array, bits: int, bound: jax.Array, signed: bool, pow2: bool = False
) -> tuple[jax.Array, jax.Array]:
    """The codes of `fake_quant` with its straight-through gradient, and the scale: fake_quant = q / s.

    For layers that multiply codes and rescale afterwards (exact integer sums,
    as the integer model computes them) instead of multiplying q/s.

    Args:
      x: input array.
      bits: bit width.
      bound: clip bound, broadcastable to x; no gradient reaches it.
      signed: grid type.
      pow2: the scale rounded down to a power of two (`QuantSpec.pow2_scale`).

    Returns:
      (q, s), float32; q = 0 and s = 1 where bound <= 0.
    """
    return _ste_codes(x, bound, bits, signed, bound_grad=False, pow2=pow2)


def lsq_ste_codes(
    x: jax.Array,
    bits: int,
    bound: jax.Array,
    signed: bool,
    grad_scale: float,
    full: bool = False,
    pass_outside: bool = False,
):
    """`ste_codes` with the LSQ gradient into the bound (see `lsq_fake_quant`)."""
    bound = _lsq_bound(bound, grad_scale)
    return _ste_codes(x, bound, bits, signed, bound_grad=True, full=full, pass_outside=pass_outside)


def _lsq_bound(bound, grad_scale):
    bound = jnp.asarray(bound, jnp.float32)
    scaled = bound * grad_scale
    # Forward value exactly `bound` (y - y is 0), gradient scaled by grad_scale.
    return lax.stop_gradient(bound) + (scaled - lax.stop_gradient(scaled))


def positive_bound(bound: jax.Array, floor: jax.Array) -> jax.Array:
    """max(bound, floor) in the forward pass, with the gradient of `bound` itself.

    A learned bound that one large step pushes to or below zero would quantize its whole channel to
    0 and, since nothing then depends on it, get no gradient again: the channel would be dead for
    the rest of training. Held at `floor` (> 0) with a straight-through gradient, it keeps learning
    and can come back.
    """
    b = jnp.asarray(bound, jnp.float32)
    return b + lax.stop_gradient(jnp.maximum(b, floor) - b)


def learned_bound(start: jax.Array, offset: jax.Array) -> jax.Array:
    """A learned (LSQ) bound: start + offset, held above LSQ_MIN_FRACTION of the start (`positive_bound`)."""
    start = jnp.asarray(start, jnp.float32)
    return positive_bound(start + jnp.asarray(offset, jnp.float32), LSQ_MIN_FRACTION * start)


def int_codes(
    x: jax.Array, bits: int, bound: jax.Array, signed: bool, pow2: bool = False, full: bool = False
) -> tuple[jax.Array, jax.Array]:
    """The integer codes q and the scale s of a quantizer (forward only, no gradient).

    `fake_quant(x, ...) == q / s` wherever bound > 0 (where bound <= 0, q = 0 and
    s = 1). q is float32 holding integers in `int_range(bits, signed)`.

    Args:
      x: input array.
      bits: bit width.
      bound: clip bound, broadcastable to x.
      signed: grid type.
      pow2: the scale rounded down to a power of two (`QuantSpec.pow2_scale`).
      full: the full-range signed grid (`int_range`).

    Returns:
      (q, s), both float32.
    """
    positive, s = _scale(jnp.asarray(bound, jnp.float32), bits, signed, pow2)
    qmin, qmax = int_range(bits, signed, full)
    q = _round(jnp.clip(x.astype(jnp.float32) * s, qmin, qmax), bits, signed)
    return jnp.where(positive, q, 0.0), jnp.where(positive, s, 1.0)


def fake_quant_signed(x: jax.Array, bits: int, bound: jax.Array) -> jax.Array:
    """The paper's signed (symmetric) fake quantizer.

    s = (2^(b-1)-1)/bound, q = clip(floor(x*s + 0.5), -(2^(b-1)-1), 2^(b-1)-1),
    returns q/s. Gradient: 1 where |x*s| <= 2^(b-1)-1, else 0; none into bound.

    Args:
      x: input array, any float dtype.
      bits: bit width 1..16 (1 bit: binary grid {-bound, +bound}).
      bound: clip bound, broadcastable to x; 0 gives 0.

    Returns:
      The dequantized array, same shape and dtype as x.
    """
    return _quantize(x, bound, bits, signed=True, bound_grad=False)


def fake_quant_unsigned(x: jax.Array, bits: int, bound: jax.Array) -> jax.Array:
    """The paper's unsigned (floor) fake quantizer for non-negative inputs.

    s = 2^b/bound, q = clip(floor(x*s), 0, 2^b-1), returns q/s; negatives go to
    0. Gradient: 1 where 0 <= x*s <= 2^b-1, else 0; none into bound.

    Args:
      x: input array, any float dtype.
      bits: bit width 1..16.
      bound: clip bound, broadcastable to x; 0 gives 0.

    Returns:
      The dequantized array, same shape and dtype as x.
    """
    return _quantize(x, bound, bits, signed=False, bound_grad=False)


def fake_quant(x: jax.Array, bits: int, bound: jax.Array, signed: bool, pow2: bool = False) -> jax.Array:
    """`fake_quant_signed` or `fake_quant_unsigned`, chosen by `signed` (pow2: the scale rounded down
    to a power of two, `QuantSpec.pow2_scale`)."""
    return _quantize(x, bound, bits, signed=signed, bound_grad=False, pow2=pow2)


def lsq_fake_quant(
    x: jax.Array,
    bits: int,
    bound: jax.Array,
    signed: bool,
    grad_scale: float,
    full: bool = False,
    pass_outside: bool = False,
) -> jax.Array:
    """Fake quantizer with a learned bound (LSQ, Esser et al. 2020).

    Same grid as `fake_quant`; the bound B = step * N (N = `scale_numerator`)
    receives the LSQ gradient d x_hat/d step = q - x/step inside the clip range
    and q at the clipped ends, scaled by `grad_scale` (LSQ uses
    1/sqrt(numel * qmax)).

    Args:
      x: input array.
      bits: bit width.
      bound: learned bound, broadcastable to x.
      signed: grid type.
      grad_scale: factor applied to the bound's gradient only.
      full: the full-range signed grid (`int_range`): the bound is the positive end, the grid reaches
        -bound * 2^(b-1) / (2^(b-1)-1) below zero.
      pass_outside: x's gradient passes straight through beyond the clip range as well (APoT's
        kernels), instead of LSQ's zero there; the forward value and the bound's gradient are the same.

    Returns:
      The dequantized array, same shape and dtype as x.
    """
    q, s = lsq_ste_codes(x, bits, bound, signed, grad_scale, full, pass_outside)
    return (q / s).astype(x.dtype)


def standardize(w: jax.Array) -> jax.Array:
    """(w - mean(w)) / std(w) over the whole tensor, in w's dtype, the statistics held out of the gradient
    (APoT's weight normalization): the gradient is w's, divided by std. A constant tensor (std 0) gives 0s."""
    w32 = jnp.asarray(w, jnp.float32)
    mean = lax.stop_gradient(jnp.mean(w32))
    std = lax.stop_gradient(jnp.std(w32))
    return jnp.where(std > 0, (w32 - mean) / jnp.where(std > 0, std, 1.0), 0.0).astype(w.dtype)


def lsq_init_bound(x: jax.Array, bits: int, signed: bool, axes) -> jax.Array:
    """LSQ's data-driven start: step = 2*mean|x|/sqrt(qmax), bound = step*N."""
    _, qmax = int_range(bits, signed)
    mean_abs = jnp.mean(jnp.abs(x.astype(jnp.float32)), axis=axes)
    step = 2.0 * mean_abs / jnp.sqrt(float(qmax))
    return jnp.maximum(step * scale_numerator(bits, signed), LSQ_MIN_BOUND)


def reduction_axes(ndim: int, granularity: str, keep: int = -1) -> tuple[int, ...]:
    """Axes to reduce for a bound: all but `keep` (per_channel) or all."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "per_tensor":
        return tuple(range(ndim))
    keep = keep % ndim
    return tuple(a for a in range(ndim) if a != keep)


def weight_bound(w: jax.Array, granularity: str = "per_channel") -> jax.Array:
    """max|W| per output channel (every axis but the last) or per tensor.

    Args:
      w: kernel, output features last (HWIO conv, IO dense).
      granularity: "per_channel" or "per_tensor".

    Returns:
      Bound of shape (C_out,) or (), float32, gradient stopped.
    """
    axes = reduction_axes(w.ndim, granularity)
    return lax.stop_gradient(jnp.max(jnp.abs(w.astype(jnp.float32)), axis=axes))


def fake_quant_weight(w: jax.Array, bits: int, granularity: str = "per_channel", pow2: bool = False) -> jax.Array:
    """Signed per-channel (or per-tensor) max-abs fake quantization of a kernel (pow2: `fake_quant`)."""
    return fake_quant(w, bits, weight_bound(w, granularity), True, pow2)


def weight_ste_codes(
    w: jax.Array, bits: int, granularity: str = "per_channel", pow2: bool = False
) -> tuple[jax.Array, jax.Array]:
    """`ste_codes` of a kernel with its max-abs bound: fake_quant_weight = q / s (pow2: `ste_codes`)."""
    return ste_codes(w, bits, weight_bound(w, granularity), True, pow2)


def batch_max_abs(x: jax.Array, granularity: str, group: int = 0) -> tuple[jax.Array, jax.Array]:
    """Per input channel (last axis) or per tensor max|x| of one batch.

    Args:
      x: (N, ...) activations.
      granularity: "per_channel" or "per_tensor".
      group: 0 takes the max over the whole batch; G > 0 splits the batch into replicas of G
        examples (consecutive rows; N must divide by G) and returns the mean over replicas of each
        replica's max, as the paper's data-parallel statistic (each replica's max, averaged over
        replicas), whatever the number of devices. Replicas whose channel is all zeros are left out
        of that channel's mean.

    Returns:
      (max_abs, has_nonzero): channels whose batch is all zeros report has_nonzero = False, so
      the EMA can skip them (zeros excluded).
    """
    ax = jnp.abs(x.astype(jnp.float32))
    if group:
        if x.shape[0] % group:
            raise ValueError(f"a batch of {x.shape[0]} does not split into replicas of {group}")
        ax = ax.reshape(x.shape[0] // group, group, *x.shape[1:])
        per_replica = jnp.max(ax, axis=tuple(a + 1 for a in reduction_axes(x.ndim, granularity)))
        valid = per_replica > 0
        count = jnp.sum(valid, axis=0)
        m = jnp.sum(jnp.where(valid, per_replica, 0.0), axis=0) / jnp.maximum(count, 1)
        return lax.stop_gradient(m), count > 0
    m = lax.stop_gradient(jnp.max(ax, axis=reduction_axes(x.ndim, granularity)))
    return m, m > 0


def ema_max_update(ema: jax.Array, batch_max: jax.Array, has_nonzero: jax.Array, coeff: float = 0.1) -> jax.Array:
    """ema + coeff*(batch_max - ema), skipping channels with no nonzero value."""
    return jnp.where(has_nonzero, ema + coeff * (batch_max - ema), ema)
