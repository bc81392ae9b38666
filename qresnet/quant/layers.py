"""QConv and QDense: Flax linen layers that fake-quantize kernel and input.

Each layer takes a `QuantSpec`. Quantizer state (the activation bound) lives in
the `quant_stats` collection; a learned (LSQ) bound is a parameter. With a
float spec the layers are exactly `nn.Conv` / `nn.Dense` (same parameters,
same outputs).

`act_quant` switches input quantization on: a Python bool decides statically;
a traced bool (what the trainer passes, `step >= start`) selects inside one
compiled program. While it is off and `train` is on, the `ema_max` bound
tracks the EMA of the batch max; once it is on, the bound is frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from qresnet.quant import ops
from qresnet.quant.specs import FLOAT, QuantSpec

Array = jax.Array
default_kernel_init = nn.initializers.lecun_normal()


def _select(flag, on, off):
    if isinstance(flag, bool):
        return on if flag else off
    return jnp.where(flag, on, off)


def quantize_input(module: nn.Module, x: Array, spec: QuantSpec, train: bool, act_quant) -> Array:
    """Fake-quantizes a layer input per `spec`, creating state in `module`.

    The bound's state (EMA variable or LSQ parameter) exists whatever `act_quant`
    is, so variables made with it off still apply with it on.
    """
    if spec.a_bits is None:
        return x
    bits, signed = spec.a_bits, bool(spec.a_signed)
    if spec.a_bound == "lsq":
        axes = ops.reduction_axes(x.ndim, spec.a_granularity)
        bound = module.param("act_bound", lambda _: ops.lsq_init_bound(x, bits, signed, axes))
    elif spec.a_bound == "ema_max":
        bound = _ema_bound(module, x, spec, train, act_quant)
    else:
        bound = spec.a_fixed_bound
    if act_quant is False:
        return x
    if spec.a_bound == "lsq":
        per_bound = x.size // max(bound.size, 1)
        grad_scale = 1.0 / (per_bound * ops.int_range(bits, signed)[1]) ** 0.5
        xq = ops.lsq_fake_quant(x, bits, bound, signed, grad_scale)
    else:
        xq = ops.fake_quant(x, bits, bound, signed)
    return _select(act_quant, xq, x)


def _ema_bound(module, x, spec, train, act_quant):
    shape = () if spec.a_granularity == "per_tensor" else (x.shape[-1],)
    var = module.variable("quant_stats", "act_bound", jnp.zeros, shape, jnp.float32)
    if train and not module.is_initializing() and act_quant is not True:
        m, nonzero = ops.batch_max_abs(x, spec.a_granularity)
        updated = ops.ema_max_update(var.value, m, nonzero, spec.a_ema_coeff)
        var.value = _select(act_quant, var.value, updated)
    return var.value


def quantize_kernel(kernel: Array, spec: QuantSpec) -> Array:
    if spec.w_bits is None:
        return kernel
    return ops.fake_quant_weight(kernel, spec.w_bits, spec.w_granularity)


def _quantized_operands(module, x, kernel_prefix: tuple[int, ...], train, act_quant):
    """Quantized input, quantized kernel (kernel_prefix + (C_in, features)) and bias, in module.dtype."""
    spec = module.spec or FLOAT
    x = quantize_input(module, x, spec, train, act_quant)
    kshape = kernel_prefix + (x.shape[-1], module.features)
    kernel = quantize_kernel(module.param("kernel", module.kernel_init, kshape, module.param_dtype), spec)
    bias = None
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)


class QConv(nn.Module):
    """2-D convolution (NHWC, HWIO) with fake-quantized kernel and input.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
      use_bias: add a bias (no bias in ResNets: BN follows).
      spec: the layer's QuantSpec; None or a float spec gives nn.Conv.
      dtype: compute dtype (e.g. bfloat16); None keeps the input's.
      param_dtype: parameter dtype.
      kernel_init, bias_init: initializers, as nn.Conv.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    spec: QuantSpec | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, act_quant=True) -> Array:
        """Args: x (N, H, W, C); train: update bound statistics; act_quant: see module doc."""
        x, kernel, bias = _quantized_operands(self, x, tuple(self.kernel_size), train, act_quant)
        padding = self.padding if isinstance(self.padding, str) else [tuple(p) for p in self.padding]
        y = lax.conv_general_dilated(
            x, kernel, tuple(self.strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if bias is not None:
            y = y + bias
        return y


class QDense(nn.Module):
    """Dense layer with fake-quantized kernel and input; nn.Dense when float.

    Attributes:
      features: output features.
      use_bias: add a bias.
      spec: the layer's QuantSpec; None or a float spec gives nn.Dense.
      dtype, param_dtype, kernel_init, bias_init: as nn.Dense.
    """

    features: int
    use_bias: bool = True
    spec: QuantSpec | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, act_quant=True) -> Array:
        """Args: x (..., C); train: update bound statistics; act_quant: see module doc."""
        x, kernel, bias = _quantized_operands(self, x, (), train, act_quant)
        y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if bias is not None:
            y = y + bias
        return y
