"""Integer inference layers: int8 codes in, exact integer products, float rescale.

`IntConv`/`IntDense` take the variables `qresnet.export` writes: per layer the
integer kernel (`kernel_int`, int8 codes), its per-output-channel scale
(`w_scale`) in `params`, and the frozen activation bound in `quant_stats`. The
input is turned into its integer codes with the same formula as fake
quantization, multiplied with the integer kernel (an int8 x int8 convolution with
float32 output, exact while the sum stays below 2^24; an int8 x int8 -> int32 dot
for dense) and divided by s_x * s_w. This is what a fake-quant layer with one
activation scale per tensor computes (`layers.code_domain`), to the bit; a
per-input-channel scale cannot be factored out of the integer sum (export refuses
it and names the per_tensor setting to train with).

A 1x1 convolution is a matrix multiply over the (strided) pixels, so by default
(`pointwise_as_dot`) it runs as an int8 x int8 -> int32 dot, which GPUs run on
integer GEMM kernels, rather than as an integer convolution.

A conv with fewer than 8 input channels (an RGB stem) gets no integer tensor-core
kernel on GPUs (cuDNN falls back to a slow generic one), so by default
(`narrow_as_float`, for any such conv but a 1x1 one run as a dot) it multiplies its
codes as float32: still exact integer arithmetic, since codes up to 2048 in
magnitude are exact even in the TF32 inputs of GPU tensor cores and every partial
sum of their products is an integer below 2^24, which float32 holds exactly
(checked per layer; otherwise the layer stays int8). Float32 operands rather than
bf16 ones with a float32 result: that mixed-precision conv may be lowered as a bf16
conv followed by a conversion, which would round the sums.

Unsigned 8-bit codes (0..255) do not fit int8: they are shifted by -128 and the
conv gets 128 * sum(W) back per output channel; the padding is applied in the
code domain (the code of 0), so the correction is the same at every position.
Layers with one float side run in float with the other side dequantized; fully
float layers are plain convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from qresnet.quant import ops
from qresnet.quant.specs import FLOAT, QuantSpec

_DN = ("NHWC", "HWIO", "NHWC")


NARROW_CHANNELS = 8  # below this many input channels, `narrow_as_float` applies
_EXACT_CODE = 2**11  # integers up to this are exact in TF32 (10 stored mantissa bits) and float32


def exact_in_float(spec: QuantSpec, terms: int) -> bool:
    """Whether a sum of `terms` products of this spec's codes is exact as a float32 (or TF32) conv."""
    a_max = ops.int_range(spec.a_bits, bool(spec.a_signed))[1]
    w_max = -ops.int_range(spec.w_bits, True, spec.w_full_grid)[0]
    return a_max <= _EXACT_CODE and w_max <= _EXACT_CODE and terms * a_max * w_max < 2**24


def _act_codes(module, x, spec: QuantSpec, integer: bool):
    bound = module.variable("quant_stats", "act_bound", jnp.zeros, (), jnp.float32).value
    if integer and bound.ndim:
        raise ValueError(
            f"{module.name}: per-input-channel activation scales cannot be applied by an integer layer; "
            "train with a_granularity='per_tensor'"
        )
    return ops.int_codes(x, spec.a_bits, bound, bool(spec.a_signed), spec.pow2_scale)


def _int_kernel(module, kshape):
    q = module.param("kernel_int", nn.initializers.zeros_init(), kshape, jnp.int8)
    s = module.param("w_scale", nn.initializers.ones_init(), (kshape[-1],), jnp.float32)
    return q, s


def _float_kernel(module, spec, kshape):
    if spec.w_bits is None:
        return module.param("kernel", nn.initializers.zeros_init(), kshape, jnp.float32)
    q, s = _int_kernel(module, kshape)
    return q.astype(jnp.float32) / s


def _float_input(module, x, spec):
    if spec.a_bits is None:
        return x.astype(jnp.float32)
    q, s = _act_codes(module, x, spec, integer=False)
    return q / s


class IntConv(nn.Module):
    """Conv over integer codes (see module doc); same constructor as QConv, plus
    `pointwise_as_dot`: run an unpadded 1x1 conv as an int8 dot with int32 accumulation, and
    `narrow_as_float`: run a conv over fewer than 8 input channels on exact float32 products.
    The rescaled output is cast to `dtype` (float32 if None)."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    spec: QuantSpec | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None
    bias_init: Any = None
    pointwise_as_dot: bool = True
    narrow_as_float: bool = True

    @nn.compact
    def __call__(self, x, *, train: bool = False, act_quant=True):
        if self.use_bias:
            raise ValueError(f"{self.name}: IntConv has no bias (ResNet convs are followed by BN)")
        spec = self.spec or FLOAT
        kshape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        pads = (
            lax.padtype_to_pads(x.shape[1:3], self.kernel_size, self.strides, self.padding)
            if isinstance(self.padding, str)
            else [tuple(p) for p in self.padding]
        )
        out_dtype = self.dtype or jnp.float32
        if spec.w_bits is None or spec.a_bits is None:
            xf, k = _float_input(self, x, spec), _float_kernel(self, spec, kshape)
            return lax.conv_general_dilated(xf, k, tuple(self.strides), pads, dimension_numbers=_DN).astype(out_dtype)
        q_x, s_x = _act_codes(self, x, spec, integer=True)
        q_w, s_w = _int_kernel(self, kshape)
        pointwise = self.pointwise_as_dot and kshape[:2] == (1, 1) and all(p == (0, 0) for p in pads)
        terms = kshape[0] * kshape[1] * kshape[2]
        if self.narrow_as_float and not pointwise and kshape[2] < NARROW_CHANNELS and exact_in_float(spec, terms):
            # Codes, unshifted, are the integers themselves; padding with 0 is the code of 0.
            q_xf, q_wf = q_x.astype(jnp.float32), q_w.astype(jnp.float32)
            acc = lax.conv_general_dilated(q_xf, q_wf, tuple(self.strides), pads, dimension_numbers=_DN)
            return (acc / (s_x * s_w)).astype(out_dtype)
        shift = 128.0 if (not spec.a_signed and spec.a_bits == 8) else 0.0
        if pointwise:
            sh, sw = self.strides
            q_x = (q_x[:, ::sh, ::sw, :] - shift).astype(jnp.int8)
            acc = lax.dot_general(q_x, q_w[0, 0], (((3,), (0,)), ((), ())), preferred_element_type=jnp.int32)
            acc = acc.astype(jnp.float32)
        else:
            if shift:  # pad with the shifted code of 0, so the correction below holds at the borders too
                q_x, pads = jnp.pad(q_x - shift, [(0, 0), *pads, (0, 0)], constant_values=-shift), "VALID"
            acc = lax.conv_general_dilated(
                q_x.astype(jnp.int8),
                q_w,
                tuple(self.strides),
                pads,
                dimension_numbers=_DN,
                preferred_element_type=jnp.float32,
            )
        if shift:
            acc = acc + shift * jnp.sum(q_w.astype(jnp.float32), axis=(0, 1, 2))
        return (acc / (s_x * s_w)).astype(out_dtype)


class IntDense(nn.Module):
    """Dense over integer codes: int8 x int8 -> int32 dot, then the float rescale."""

    features: int
    use_bias: bool = True
    spec: QuantSpec | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None
    bias_init: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool = False, act_quant=True):
        spec = self.spec or FLOAT
        kshape = (x.shape[-1], self.features)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32) if self.use_bias else 0.0
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        if spec.w_bits is None or spec.a_bits is None:
            y = lax.dot_general(_float_input(self, x, spec), _float_kernel(self, spec, kshape), dims)
            return y + bias
        q_x, s_x = _act_codes(self, x, spec, integer=True)
        q_w, s_w = _int_kernel(self, kshape)
        shift = 128.0 if (not spec.a_signed and spec.a_bits == 8) else 0.0
        acc = lax.dot_general((q_x - shift).astype(jnp.int8), q_w, dims, preferred_element_type=jnp.int32)
        acc = acc.astype(jnp.float32)
        if shift:
            acc = acc + shift * jnp.sum(q_w.astype(jnp.float32), axis=0)
        return acc / (s_x * s_w) + bias


def kernel_codes(kernel: jax.Array, spec: QuantSpec, bound: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(int8 codes, per-output-channel scale) of a kernel, as the fake quantizer rounds it: with its
    max-abs bound, or with `bound` (a learned one, `w_bound="lsq"`), standardized first where the spec says."""
    if spec.w_standardize:
        kernel = ops.standardize(kernel)
    if bound is None:
        bound = ops.weight_bound(kernel, spec.w_granularity)
    q, s = ops.int_codes(kernel, spec.w_bits, bound, True, spec.pow2_scale, spec.w_full_grid)
    s = jnp.broadcast_to(s, (kernel.shape[-1],))
    return q.astype(jnp.int8), s.astype(jnp.float32)
