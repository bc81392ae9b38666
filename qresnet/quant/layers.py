"""QConv and QDense: Flax linen layers that fake-quantize kernel and input.

Each layer takes a `QuantSpec`. Quantizer state (the activation bound) lives in
the `quant_stats` collection; a learned (LSQ) bound is a start kept there plus a
learned offset parameter. With a float spec the layers are exactly `nn.Conv` /
`nn.Dense` (same parameters, same outputs).

`act_quant` switches input quantization on: a Python bool decides statically;
a traced bool (e.g. `step >= start`) selects inside one compiled program. While
it is off and `train` is on, the `ema_max` bound tracks the EMA of the batch
max; once it is on, the bound is frozen. The trainer compiles each phase with
a Python bool (`steps.act_quant_phase`), so quantized steps compute no batch max
and no select; a traced switch costs both on every step.

Where the activation scale is one per tensor (`code_domain`), a layer multiplies
the integer codes (exact in bf16 up to 256) and divides the product by s_x * s_w,
which is the same function as multiplying the fake-quantized values but sums
exactly, as the integer inference model (`int_layers`) does; so the two agree to
the bit. With per-channel activation scales the layer multiplies q/s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from qresnet import conv_kernels
from qresnet.quant import ops
from qresnet.quant.specs import FLOAT, QuantSpec

Array = jax.Array
default_kernel_init = nn.initializers.lecun_normal()


def _select(flag, on, off):
    if isinstance(flag, bool):
        return on if flag else off
    return jnp.where(flag, on, off)


def _input_bound(module: nn.Module, x: Array, spec: QuantSpec, train: bool, act_quant):
    """The layer's activation bound, creating its state (EMA variable or LSQ parameter).

    The state exists whatever `act_quant` is, so variables made with it off
    still apply with it on.
    """
    if spec.a_bound == "lsq":
        return _lsq_learned_bound(module, x, spec, train, act_quant)
    if spec.a_bound == "ema_max":
        return _ema_bound(module, x, spec, train, act_quant)
    return spec.a_fixed_bound


def _learned_bound(module, name: str, statistic, coeff: float, train: bool, act_quant):
    """A learned (LSQ) bound: its start (`quant_stats/<name>`) plus a learned offset (`params/<name>_offset`,
    from 0), held above LSQ_MIN_FRACTION of the start (`ops.positive_bound`).

    The start is a statistic of the tensor (`statistic()`: LSQ's init or the max-abs), tracked (an EMA
    with `coeff`) while activation quantization is off and frozen once it is on: learning begins from
    the tensors of the network being quantized, not of the untrained one (which left the bounds far
    off when quantization started late in training), and a fine-tuned run starts from its source's
    weights.
    """
    start = module.variable("quant_stats", name, statistic)
    offset = module.param(name + "_offset", nn.initializers.zeros, start.value.shape, jnp.float32)
    if train and not module.is_initializing() and act_quant is not True:
        batch = lax.stop_gradient(statistic())
        updated = ops.ema_max_update(start.value, batch, batch > ops.LSQ_MIN_BOUND, coeff)
        start.value = _select(act_quant, start.value, updated)
    return ops.learned_bound(start.value, offset)


def _lsq_learned_bound(module, x, spec, train, act_quant):
    """An input's learned bound (`_learned_bound`), started per `spec.a_lsq_start` over the batch."""
    stat = lambda: _lsq_start(x, spec.a_bits, bool(spec.a_signed), spec.a_granularity, spec.a_lsq_start)  # noqa: E731
    return _learned_bound(module, "act_bound", stat, spec.a_ema_coeff, train, act_quant)


def _lsq_start(x: Array, bits: int, signed: bool, granularity: str, start: str) -> Array:
    """A learned bound's start from one tensor (`QuantSpec.w_lsq_start`, `a_lsq_start`): LSQ's init or
    the max-abs (per channel of the last axis, or per tensor), never below LSQ_MIN_BOUND."""
    if start == "max":
        return jnp.maximum(ops.batch_max_abs(x, granularity)[0], ops.LSQ_MIN_BOUND)
    return ops.lsq_init_bound(x, bits, signed, ops.reduction_axes(x.ndim, granularity))


def _lsq_grad_scale(x: Array, bound: Array, spec: QuantSpec) -> float:
    """LSQ's step-size gradient scale g = 1/sqrt(N_F * qmax), times N^2 for a bound parameter.

    N_F is the number of features one example gives the step (LSQ's "features in the layer"):
    the loss is a mean over the batch, so the step's gradient grows with the features per
    example, not with the batch; counting the batch too made g sqrt(batch) times too small.
    LSQ learns the step s = bound / N. Our parameter is the bound (so the forward value is the
    exact float32 sum that the export uses); dL/dbound = dL/ds / N, and a bound update moves the
    step 1/N as much, so with g alone the step would learn N^2 times slower than LSQ's (256x at
    4 bits unsigned: the bounds could barely leave their start). With N^2 g, SGD moves the step
    exactly as LSQ's does.
    """
    features = x.size // x.shape[0] // max(bound.size, 1)
    return _bound_grad_scale(features, spec.a_bits, bool(spec.a_signed))


def _bound_grad_scale(features: int, bits: int, signed: bool) -> float:
    n = ops.scale_numerator(bits, signed)
    return n * n / (features * ops.int_range(bits, signed)[1]) ** 0.5


def _kernel_bound(module, kernel: Array, spec: QuantSpec, train: bool, act_quant) -> tuple[Array, float]:
    """(learned bound, its gradient scale) of a kernel with `w_bound="lsq"`: one per output channel
    (or per tensor), started per `spec.w_lsq_start` from the kernel (LSQ's init, step 2 mean|W| /
    sqrt(qmax), or max|W|); the start follows the kernel while activation quantization is off
    (`_learned_bound`). The gradient scale is LSQ's 1/sqrt(weights per step * qmax), times N^2 as for
    inputs (`_lsq_grad_scale`)."""
    stat = lambda: _lsq_start(lax.stop_gradient(kernel), spec.w_bits, True, spec.w_granularity, spec.w_lsq_start)  # noqa: E731
    bound = _learned_bound(module, "kernel_bound", stat, 1.0, train, act_quant)
    return bound, _bound_grad_scale(kernel.size // max(bound.size, 1), spec.w_bits, True)


def quantize_input(module: nn.Module, x: Array, spec: QuantSpec, train: bool, act_quant) -> Array:
    """Fake-quantizes a layer input per `spec`, creating state in `module`."""
    if spec.a_bits is None:
        return x
    bits, signed = spec.a_bits, bool(spec.a_signed)
    bound = _input_bound(module, x, spec, train, act_quant)
    if act_quant is False:
        return x
    if spec.a_bound == "lsq":
        xq = ops.lsq_fake_quant(x, bits, bound, signed, _lsq_grad_scale(x, bound, spec))
    else:
        xq = ops.fake_quant(x, bits, bound, signed, spec.pow2_scale)
    return _select(act_quant, xq, x)


def input_codes(module: nn.Module, x: Array, spec: QuantSpec, train: bool, act_quant) -> tuple[Array, Array]:
    """(q, s) of a layer input, `quantize_input` = q / s, creating state in `module`.

    While activation quantization is off, q = x * s unrounded, so q / s = x.
    """
    bits, signed = spec.a_bits, bool(spec.a_signed)
    bound = _input_bound(module, x, spec, train, act_quant)
    if spec.a_bound == "lsq":
        q, s = ops.lsq_ste_codes(x, bits, bound, signed, _lsq_grad_scale(x, bound, spec))
    else:
        q, s = ops.ste_codes(x, bits, bound, signed, spec.pow2_scale)
    if act_quant is True:
        return q, s
    return _select(act_quant, q, x.astype(jnp.float32) * s), s


def _ema_bound(module, x, spec, train, act_quant):
    shape = () if spec.a_granularity == "per_tensor" else (x.shape[-1],)
    var = module.variable("quant_stats", "act_bound", jnp.zeros, shape, jnp.float32)
    if train and not module.is_initializing() and act_quant is not True:
        m, nonzero = ops.batch_max_abs(x, spec.a_granularity, module.stat_group)
        updated = ops.ema_max_update(var.value, m, nonzero, spec.a_ema_coeff)
        var.value = _select(act_quant, var.value, updated)
    return var.value


def quantize_kernel(module: nn.Module, kernel: Array, spec: QuantSpec, train: bool, act_quant) -> Array:
    """Fake-quantizes a kernel per `spec` (max-abs or learned bound), creating state in `module`."""
    if spec.w_bits is None:
        return kernel
    if spec.w_standardize:
        kernel = ops.standardize(kernel)
    if spec.w_bound == "lsq":
        bound, g = _kernel_bound(module, kernel, spec, train, act_quant)
        return ops.lsq_fake_quant(kernel, spec.w_bits, bound, True, g, spec.w_full_grid, spec.w_ste == "pass")
    return ops.fake_quant_weight(kernel, spec.w_bits, spec.w_granularity, spec.pow2_scale)


def kernel_codes(module: nn.Module, kernel: Array, spec: QuantSpec, train: bool, act_quant) -> tuple[Array, Array]:
    """(q, s_w) of a kernel, `quantize_kernel` = q / s_w, creating state in `module`."""
    if spec.w_standardize:
        kernel = ops.standardize(kernel)
    if spec.w_bound == "lsq":
        bound, g = _kernel_bound(module, kernel, spec, train, act_quant)
        return ops.lsq_ste_codes(kernel, spec.w_bits, bound, True, g, spec.w_full_grid, spec.w_ste == "pass")
    return ops.weight_ste_codes(kernel, spec.w_bits, spec.w_granularity, spec.pow2_scale)


def code_domain(spec: QuantSpec) -> bool:
    """Whether a layer multiplies integer codes and rescales after: both sides quantized and
    one activation scale per tensor, so the scales factor out of the sum, which is then exact
    as the integer model computes it. Per-input-channel activation scales cannot factor out."""
    return spec.w_bits is not None and spec.a_bits is not None and spec.a_granularity == "per_tensor"


def _quantized_operands(module, x, kernel_prefix: tuple[int, ...], train, act_quant, x_scale=None):
    """(input, kernel, bias, scale, (q, s_x)) in module.dtype: fake-quantized operands and scale None,
    or codes and the scale s_x * s_w to divide the product by (`code_domain`); (q, s_x) are the
    input's codes and scale ((x, None) outside the code domain). With `x_scale`, x are already
    codes of that scale (quantized by another layer that reads the same tensor)."""
    spec = module.spec or FLOAT
    kshape = kernel_prefix + (x.shape[-1], module.features)
    kernel = module.param("kernel", module.kernel_init, kshape, module.param_dtype)
    bias = None
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    scale, codes = None, (x, None)
    if x_scale is not None:
        if spec.w_bits is None:
            raise ValueError(f"{module.name}: given input codes, the layer needs quantized weights")
        kernel, s_w = kernel_codes(module, kernel, spec, train, act_quant)
        scale, codes = x_scale * s_w, (x, x_scale)
    elif code_domain(spec):
        x, s_x = input_codes(module, x, spec, train, act_quant)
        kernel, s_w = kernel_codes(module, kernel, spec, train, act_quant)
        scale, codes = s_x * s_w, (x, s_x)
    else:
        x = quantize_input(module, x, spec, train, act_quant)
        kernel = quantize_kernel(module, kernel, spec, train, act_quant)
        codes = (x, None)
    return (*nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype), scale, codes)


OUT_BITS = 8  # `QConv.out_bits`' only width: the int8 residual a fused integer conv takes


def output_codes(y: Array, bound: Array, pow2: bool = False) -> tuple[Array, Array]:
    """(q, s) of `quantize_output`: s = 127 / bound (pow2: rounded down to a power of two,
    `ops.pow2_floor`), q = floor(clip(y * s, -128, 127) + 0.5), int8's whole range (what a fused
    int8 conv's output clamp gives, so it needs no extra pass), with straight-through gradients;
    q = 0 and s = 1 where bound <= 0."""
    bound = lax.stop_gradient(jnp.asarray(bound, jnp.float32))
    positive = bound > 0
    s = jnp.float32(127) / jnp.where(positive, bound, 1.0)
    s = jnp.where(positive, ops.pow2_floor(s) if pow2 else s, 1.0)
    v = y.astype(jnp.float32) * s
    inside = (v >= -128) & (v <= 127)
    v = jnp.where(inside, v, lax.stop_gradient(jnp.clip(v, -128, 127)))
    q = v + lax.stop_gradient(jnp.floor(v + 0.5) - v)
    return jnp.where(positive, q, 0.0), s


def quantize_output(module: nn.Module, y: Array, bits: int, train: bool, act_quant, pow2: bool = False) -> Array:
    """Fake-quantizes a layer's output to int8 codes (`output_codes`; pow2 as there) with a per-tensor
    EMA-max bound (`quant_stats/out_bound`, tracked while activation quantization is off, then frozen)."""
    if bits != OUT_BITS:
        raise ValueError(f"{module.name}: out_bits must be {OUT_BITS} (int8 codes), got {bits}")
    var = module.variable("quant_stats", "out_bound", jnp.zeros, (), jnp.float32)
    if train and not module.is_initializing() and act_quant is not True:
        m, nonzero = ops.batch_max_abs(y, "per_tensor", module.stat_group)
        var.value = _select(act_quant, var.value, ops.ema_max_update(var.value, m, nonzero))
    if act_quant is False:
        return y
    q, s = output_codes(y, var.value, pow2)
    return _select(act_quant, (q / s).astype(y.dtype), y)


def _rescale(y: Array, scale) -> Array:
    return y if scale is None else (y.astype(jnp.float32) / scale).astype(y.dtype)


def pad_channels(x: Array, kernel: Array, multiple: int) -> tuple[Array, Array]:
    """Zero-pads x's channels and the kernel's input and output channels (HWIO) that exceed
    `multiple` to multiples of it (<= 1: unchanged). Zero channels add nothing, so the conv's first
    outputs are exact. Counts below the multiple (an RGB stem's 3 inputs) are left as they are:
    padding them does not make the stem faster."""
    if multiple <= 1:
        return x, kernel
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    pad_in = -c_in % multiple if c_in > multiple else 0
    pad_out = -c_out % multiple if c_out > multiple else 0
    if pad_in:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad_in)])
    if pad_in or pad_out:
        kernel = jnp.pad(kernel, [(0, 0), (0, 0), (0, pad_in), (0, pad_out)])
    return x, kernel


CONV_IMPLS = ("xla", "pallas")


@dataclasses.dataclass(frozen=True)
class ConvBackend:
    """How a QConv runs its convolution on the device: kernel choices only, no numerics (those
    are the QuantSpec's). Every backend computes the same function.

    Attributes:
      impl: "xla" (lax.conv_general_dilated, cuDNN on GPUs) or "pallas": 3x3 stride-1 convs with
        padding 1 over bf16 inputs run as `conv_kernels.conv3x3` (Triton kernels, faster than
        cuDNN for narrow layers; no channel padding needed), other convs as "xla". Off the GPU
        "pallas" runs in Pallas's interpreter (slow; tests).
      channel_multiple: if > 1, channel counts above it are padded (after quantization) with zero
        channels to multiples of it and the extra outputs dropped (`pad_channels`): the same result,
        but GPU conv kernels are much faster on multiples of 8 than on counts like 10 or 14 (0 = no
        padding).
      pallas_max_channels: with "pallas", convs with more input or output channels stay "xla".
    """

    impl: str = "xla"
    channel_multiple: int = 0
    pallas_max_channels: int = 32

    def __post_init__(self):
        if self.impl not in CONV_IMPLS:
            raise ValueError(
                f"conv_impl must be one of {CONV_IMPLS}, got {self.impl!r}; e.g. --config.model.conv_impl=xla"
            )
        if not isinstance(self.channel_multiple, int) or self.channel_multiple < 0:
            raise ValueError(f"channel_multiple must be an int >= 0 (e.g. 8), got {self.channel_multiple!r}")
        if not isinstance(self.pallas_max_channels, int) or self.pallas_max_channels < 1:
            raise ValueError(f"pallas_max_channels must be an int >= 1 (e.g. 32), got {self.pallas_max_channels!r}")


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
      backend: how the convolution runs (`ConvBackend`); the same result whichever.
      stat_group: 0: activation-bound statistics over the whole batch; G > 0: the mean over
        replicas of G examples of each replica's max (`ops.batch_max_abs`).
      out_bits: fake-quantize the output (after the bias) to int8 codes, -128..127, with a
        per-tensor bound (`quantize_output`; 8 only; a BN-folded projection, `resnet.ResNet.fold_bn`).
      return_codes: also return the input's codes and scale (see __call__).
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
    backend: ConvBackend = ConvBackend()
    stat_group: int = 0
    out_bits: int | None = None
    return_codes: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, act_quant=True, x_scale=None):
        """Args: x (N, H, W, C); train: update bound statistics; act_quant: see module doc;
        x_scale: x are already integer codes of this scale (another layer's quantizer).
        Returns y, or (y, (q, s_x)) with `return_codes`: the codes and scale of the input
        ((x, None) if the layer does not quantize it), for other layers reading the same tensor."""
        x, kernel, bias, scale, codes = _quantized_operands(self, x, tuple(self.kernel_size), train, act_quant, x_scale)
        padding = self.padding if isinstance(self.padding, str) else [tuple(p) for p in self.padding]
        backend = self.backend
        if backend.impl == "pallas" and conv_kernels.supported(
            x.shape, kernel.shape, self.strides, padding, x.dtype, backend.pallas_max_channels
        ):
            y = conv_kernels.conv3x3(x, kernel)
        else:
            x, kernel = pad_channels(x, kernel, backend.channel_multiple)
            y = lax.conv_general_dilated(
                x, kernel, tuple(self.strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        y = _rescale(y[..., : self.features], scale)
        pow2 = bool(self.spec and self.spec.pow2_scale)
        if bias is not None:
            # On the product's grid (pow2_scale), so that the integer conv's epilogue is exact (`ops.bias_on_grid`).
            y = y + (ops.bias_on_grid(bias, scale).astype(y.dtype) if pow2 and scale is not None else bias)
        if self.out_bits is not None:
            y = quantize_output(self, y, self.out_bits, train, act_quant, pow2)
        return (y, codes) if self.return_codes else y


class QDense(nn.Module):
    """Dense layer with fake-quantized kernel and input; nn.Dense when float.

    Attributes:
      features: output features.
      use_bias: add a bias.
      spec: the layer's QuantSpec; None or a float spec gives nn.Dense.
      dtype, param_dtype, kernel_init, bias_init: as nn.Dense.
      stat_group: as QConv's.
    """

    features: int
    use_bias: bool = True
    spec: QuantSpec | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    stat_group: int = 0

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, act_quant=True) -> Array:
        """Args: x (..., C); train: update bound statistics; act_quant: see module doc."""
        x, kernel, bias, scale, _ = _quantized_operands(self, x, (), train, act_quant)
        y = _rescale(lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))), scale)
        if bias is not None:
            y = y + bias
        return y
