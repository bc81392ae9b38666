"""Integer inference with int8 codes from conv to conv: the fused deployment of a BN-folded ResNet.

The integer model of `qresnet.quant.int_layers` writes float32 activations between its
integer products and re-quantizes them in separate passes, which runs a ResNet-50
slower than bf16 (docs/deployment.md). A network trained with
`model.fold_bn=True` (BN folded into per-tensor-quantized weights, each activation
quantized once for all its readers: `resnet.ResNet`) can instead run every block conv as
one call that takes int8 codes and gives the next tensor's int8 codes:

    codes_out = round(clamp(alpha * conv(codes_in, w_codes) + bias + beta * side_codes))

with ReLU where the network has one and the residual as the side input. Written as that
HLO idiom with alpha and beta compile-time constants, XLA turns each such conv into one
cuDNN int8 -> int8 convolution (every conv of ResNet-50 but none of the float parts;
docs/deployment.md). So `FusedResNet` holds an export's scales as Python floats and takes
only the arrays (codes, biases) as arguments.

Codes. An unsigned b-bit activation (after ReLU) has codes floor(clip(v * s, 0, 2^b - 1));
8-bit ones (0..255) are stored shifted by -128 to fit int8, so convs reading them pad
explicitly with the stored code of 0 and get 128 * sum(W) back in their bias. The
projection's output has int8 codes over all of -128..127 (`quant.layers.output_codes`).

Rounding. cuDNN rounds the fused output to nearest, ties to even;
XLA's `convert` truncates. So with `rounding="cudnn"` the idiom carries no rounding op
(the floor of the unsigned grid is round-half-even of v - 0.5) and is only right where
XLA fuses it; `rounding="explicit"` rounds in the graph (floor(v + 0.5)) and is right
everywhere. `rounding="auto"` picks "cudnn" on GPUs and "explicit" elsewhere, and
`compile_forward` checks on the GPU that every conv was fused and that the first batch
agrees with "explicit", else recompiles with "explicit". Convs whose codes need a
narrower clip than int8's (4-bit activations) round in the graph either way: an
operation after the convert keeps XLA from fusing.
"explicit" computes in the fake-quant model's float order and equals it to the bit;
"cudnn" differs from it only where a value falls within float32 rounding of a rounding
boundary (cuDNN computes the epilogue in its own order): w8a8 logits can be a few percent
off on the worst image. With `QuantSpec.pow2_scale` (power-of-two scales, each bias on its
product's grid, `ops.bias_on_grid`) every term of the epilogue is exact in float32 and no
value comes near a boundary, so "cudnn" equals the fake-quant model to the bit as well
(docs/deployment.md).

Kernels. cuDNN runs int8 convs over 16 channels, and an int8 conv whose float32 output is
fused with a residual, on a slow generic engine; so on the fused path the activations are
zero-padded to 32 channels (`channel_multiple`) and the last conv of a basic-block network
is kept apart from its epilogue (an optimization barrier). Neither moves a value.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from qresnet import resnet
from qresnet.quant import int_layers, ops
from qresnet.quant.specs import QuantSpec, specs_from_json

_DN = ("NHWC", "HWIO", "NHWC")
ROUNDINGS = ("auto", "cudnn", "explicit")
# The stem's integer products: as float32 (exact; TF32 tensor cores on GPUs) or, for the 7x7 ImageNet stem,
# as an int8 conv over space-to-depth blocks whose output is fused like the block convs' (the same sums;
# faster); "auto" takes "s2d" where it applies.
STEMS = ("auto", "float", "s2d")
# cuDNN's int8 -> int8 convs over 16 channels are slow (several times a bf16 conv's time, where the same conv
# over 32 channels is as fast as bf16), so on that path the model carries its activations zero-padded to a
# multiple of this many channels (`FusedResNet`'s channel_multiple).
FUSED_CHANNEL_MULTIPLE = 32


class FusedError(ValueError):
    """An export that cannot run as fused integer convs."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """How a tensor's codes are stored: value = (stored + zero) / scale, stored in [lo, hi]."""

    scale: float
    zero: int  # 128 for unsigned 8-bit codes (stored shifted), else 0
    lo: int
    hi: int
    floor: bool  # the unsigned grid rounds down; the signed one to nearest, half up (`ops`)

    @classmethod
    def of(cls, bits: int, bound: float, signed: bool, pow2: bool = False) -> Grid:
        """The grid of a b-bit quantizer with this bound, as `ops.int_codes` quantizes (the scale in
        float32, as the fake quantizer computes it; pow2: rounded down to a power of two)."""
        scale = _scale(ops.scale_numerator(bits, signed), bound, pow2)
        lo, hi = ops.int_range(bits, signed)
        zero = 128 if hi > 127 else 0
        return cls(scale, zero, lo - zero, hi - zero, not signed)

    @classmethod
    def output(cls, bound: float, pow2: bool = False) -> Grid:
        """The grid of a projection's output quantizer (`quant.layers.output_codes`): all of int8."""
        return cls(_scale(127, bound, pow2), 0, -128, 127, False)

    def quantize(self, v: jax.Array) -> jax.Array:
        """Stored codes of float values v, exactly as the fake quantizer computes them."""
        t = jnp.clip(v * np.float32(self.scale), self.lo + self.zero, self.hi + self.zero)
        return ((jnp.floor(t) if self.floor else jnp.floor(t + 0.5)) - self.zero).astype(jnp.int8)


def _scale(numerator: int, bound: float, pow2: bool) -> float:
    """numerator / bound in float32 (as the fake quantizer computes it), with pow2 rounded down to a power of two."""
    if not bound > 0:
        return 1.0
    s = np.float32(numerator) / np.float32(bound)
    return float(ops.pow2_floor(s)) if pow2 else float(s)


def _conv(x, w, stride: int, pads, out=None):
    return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=_DN, preferred_element_type=out)


def _layer_scale(variables, path) -> float:
    s = np.asarray(_get(variables["params"], path)["w_scale"], np.float64)
    if not np.all(s == s.flat[0]):
        raise FusedError(f"layer {'/'.join(path)} has per-channel weight scales; train with w_granularity='per_tensor'")
    return float(s.flat[0])


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


class FusedResNet:
    """The integer inference model of a BN-folded export (module doc).

    Args:
      header: the export's header (model, width, num_classes, specs, fold_bn).
      variables: its variables (`export.read`); only the scales and bounds are read here.
      rounding: "auto", "cudnn" or "explicit" (module doc).
      stem: "auto", "float" or "s2d" (`STEMS`; "s2d" for 7x7 stems with at most 8-bit codes, which
        "auto" picks where it can).
      channel_multiple: activations (and the kernels that read and write them) are zero-padded to a
        multiple of this many channels; the padding's codes are those of 0 and its weights 0, so the
        logits are the same. "auto": `FUSED_CHANNEL_MULTIPLE` where the convs run as cuDNN's fused int8
        convs (rounding "cudnn" and 8-bit activations after the stem), else 1 (no padding).
    """

    def __init__(
        self,
        header: Mapping[str, Any],
        variables: Mapping[str, Any],
        rounding: str = "auto",
        stem: str = "auto",
        channel_multiple: int | str = "auto",
    ):
        if rounding not in ROUNDINGS:
            raise FusedError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if stem not in STEMS:
            raise FusedError(f"stem must be one of {STEMS}, got {stem!r}")
        if rounding == "auto":
            rounding = "cudnn" if jax.default_backend() == "gpu" else "explicit"
        self.rounding = rounding
        self.check: dict[str, Any] = {}  # what `compile_forward` found
        self.arch = resnet.get_arch(header["model"])
        self.specs: Mapping[str, QuantSpec] = specs_from_json(header["specs"])
        convs = [n for n in self.specs if n != "head"]
        floats = [n for n in convs if self.specs[n].is_float]
        if floats:
            raise FusedError(f"fused integer inference quantizes every conv; {floats[0]!r} is float")
        self.head_spec = self.specs.get("head")
        self.num_classes = int(header["num_classes"])
        self.blocks = [
            (f"stage{s}_block{b}", 2 if s > 0 and b == 0 else 1)
            for s, n in enumerate(self.arch.stage_sizes)
            for b in range(n)
        ]
        stats = variables["quant_stats"]
        self.w_scale = {}
        for path in _int_paths(variables["params"]):
            if path[-1] != "head":
                self.w_scale[path] = _layer_scale(variables, path)
        self.act = {}  # (module path) of a conv -> the Grid of its input
        self.pow2 = {}  # (module path) of a conv -> its spec's pow2_scale (its bias then goes on the grid)
        for path in self.w_scale:
            spec = self.specs[_name(path)]
            self.pow2[path] = spec.pow2_scale
            if path[-1] != "proj":
                bound = float(np.asarray(_get(stats, path)["act_bound"]))
                self.act[path] = Grid.of(spec.a_bits, bound, bool(spec.a_signed), spec.pow2_scale)
            else:
                out_bound = float(np.asarray(_get(stats, path)["out_bound"]))
                self.act[path + ("out",)] = Grid.output(out_bound, spec.pow2_scale)
        s2d_ok = not self.arch.cifar and max(self.specs["stem"].a_bits, self.specs["stem"].w_bits) <= 8
        if stem == "auto":
            stem = "s2d" if s2d_ok else "float"
        self.stem = stem
        if stem == "s2d" and not s2d_ok:
            raise FusedError("stem 's2d' needs the 7x7 ImageNet stem with at most 8-bit codes; use stem 'float'")
        first = self.act[(self.blocks[0][0], "conv1")]
        self.expected_fused = self._count_fusable() + (stem == "s2d" and _fusable(first, True))
        if channel_multiple == "auto":
            channel_multiple = FUSED_CHANNEL_MULTIPLE if rounding == "cudnn" and _fusable(first, True) else 1
        if not (isinstance(channel_multiple, int) and channel_multiple >= 1):
            raise FusedError(f"channel_multiple must be 'auto' or an int >= 1, got {channel_multiple!r}")
        self.channel_multiple = channel_multiple
        terms = int(np.prod(np.shape(variables["params"]["stem"]["kernel_int"])[:3]))
        if not int_layers.exact_in_float(self.specs["stem"], terms):
            raise FusedError("the stem's integer sums can exceed float32's exact range; quantize it to <= 8 bits")

    def _count_fusable(self) -> int:
        """How many convs the cuDNN path leaves to XLA to fuse (`_fusable` outputs)."""
        convs = ("conv1", "conv2", "conv3") if self.arch.bottleneck else ("conv1", "conv2")
        n = 0
        for i, (block, _) in enumerate(self.blocks):
            outs = [(self.act[(block, c)], True) for c in convs[1:]]
            if i + 1 < len(self.blocks):
                outs.append((self.act[(self.blocks[i + 1][0], "conv1")], True))
            if (block, "proj") in self.w_scale:
                outs.append((self.act[(block, "proj", "out")], False))
            n += sum(_fusable(g, relu) for g, relu in outs)
        return n

    def _kernel(self, w, cin: int):
        """An integer kernel zero-padded to `cin` input channels (its input's, padded) and to a multiple of
        `channel_multiple` output channels."""
        pad_out = -w.shape[3] % self.channel_multiple
        return jnp.pad(w, [(0, 0), (0, 0), (0, cin - w.shape[2]), (0, pad_out)])

    # One conv: int8 codes in, the next tensor's int8 codes (or float32 for the head) out.
    def _fused(self, a, x, x_grid: Grid, path, stride, out: Grid | None, side=None, relu=True):
        p = _get(a["params"], path)
        w = self._kernel(p["kernel_int"], x.shape[-1])
        k = w.shape[0]
        if k > 1 and x_grid.zero:  # pad with the stored code of 0 (then the border needs no correction)
            x = jnp.pad(x, [(0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)], constant_values=-x_grid.zero)
            pads = [(0, 0), (0, 0)]
        else:
            pads = [(k // 2, k // 2)] * 2
        acc = _conv(x, w, stride, pads, jnp.float32)
        if x_grid.zero:  # exact: integers below 2^24
            acc = acc + x_grid.zero * jnp.sum(w.astype(jnp.float32), axis=(0, 1, 2))
        return self._epilogue(acc, x_grid, path, p["bias"], out, side, relu)

    def _epilogue(self, acc, x_grid: Grid, path, bias, out: Grid | None, side, relu):
        """The output of a conv whose integer sums are `acc`: int8 codes on `out`'s grid (float32 if None)."""
        s_in = np.float32(x_grid.scale) * np.float32(self.w_scale[path])  # float32, as the fake layer's
        bias = self._bias(bias, s_in, path, acc.shape[-1])
        if self.rounding == "explicit" or not _fusable(out, relu):
            return self._rounded(acc, s_in, bias, out, side, relu)
        # The idiom XLA fuses (module doc): nothing may follow the convert, or XLA folds it into the
        # clamp, whose bounds must stay -128 and 127, and leaves the conv unfused.
        alpha = float(np.float32(out.scale) / s_in)
        offset = bias * np.float32(out.scale)
        if side is not None:
            side_codes, side_grid = side
            beta = float(np.float32(out.scale) / np.float32(side_grid.scale))
            offset = offset + beta * side_grid.zero
        # floor(t) is round-half-even(t - 0.5), and half-up rounding is round-half-even(t) but at ties
        offset = offset - out.zero - (0.5 if out.floor else 0.0)
        v = acc * alpha + offset
        if side is not None:
            v = v + side_codes.astype(jnp.float32) * beta
        if relu and not out.zero:
            v = jnp.maximum(v, 0.0)
        return _to_int8(v)

    def _bias(self, bias, s_in, path, channels: int):
        """The conv's float32 bias, on its product's grid where the spec has pow2_scale (as `QConv`), then
        zero-padded to `channels` (after the grid, which would move a 0: the padding's values stay 0)."""
        bias = bias.astype(jnp.float32)
        bias = ops.bias_on_grid(bias, s_in) if self.pow2[path] else bias
        return jnp.pad(bias, (0, channels - bias.shape[0]))

    def _rounded(self, acc, s_in, bias, out: Grid | None, side, relu):
        """The conv's output computed in the fake-quant model's order and rounded in the graph:
        (acc / (s_x * s_w) + bias + side value), ReLU, then the next quantizer."""
        if out is None and not self.arch.bottleneck:
            # The last conv (float32 out, the residual as side input): fused, it runs on cuDNN's generic int8
            # engine, which takes most of a small ResNet's time; kept apart, it runs on tensor-core kernels.
            # Measured on basic blocks only: bottleneck networks (ResNet-50) keep the program that was timed.
            acc = lax.optimization_barrier(acc)
        v = acc / s_in + bias
        if side is not None:
            side_codes, side_grid = side
            v = v + (side_codes.astype(jnp.float32) + side_grid.zero) / np.float32(side_grid.scale)
        if relu:
            v = jax.nn.relu(v)
        return v if out is None else out.quantize(v)

    def _stem(self, a, x, out: Grid):
        spec, path = self.specs["stem"], ("stem",)
        p = a["params"]["stem"]
        bound = a["quant_stats"]["stem"]["act_bound"]
        q, s_x = ops.int_codes(x, spec.a_bits, bound, bool(spec.a_signed), spec.pow2_scale)
        w = self._kernel(p["kernel_int"], x.shape[-1])
        k = w.shape[0]
        stride = 1 if self.arch.cifar else 2
        if self.stem == "s2d":
            acc = _space_to_depth_conv(q.astype(jnp.int8), w)
            codes = self._epilogue(acc, self.act[path], path, p["bias"], out, None, True)
        else:
            acc = _conv(q, w.astype(jnp.float32), stride, [(k // 2, k // 2)] * 2)
            s_in = s_x * np.float32(self.w_scale[path])
            codes = out.quantize(jax.nn.relu(acc / s_in + self._bias(p["bias"], s_in, path, acc.shape[-1])))
        if not self.arch.cifar:
            codes = lax.reduce_window(
                codes, jnp.int8(-128), lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
            )
        return codes

    def apply(self, variables: Mapping[str, Any], x: jax.Array, train: bool = False, **_) -> jax.Array:
        """Logits (float32) of normalized NHWC images x. Args: the export's variables; train must be False."""
        if train:
            raise FusedError("FusedResNet is an inference model (train=False)")
        x = x.astype(jnp.float32)
        first = self.blocks[0][0]
        y = self._stem(variables, x, self.act[(first, "conv1")])
        y_grid = self.act[(first, "conv1")]
        convs = ("conv1", "conv2", "conv3") if self.arch.bottleneck else ("conv1", "conv2")
        for i, (block, stride) in enumerate(self.blocks):
            nxt = self.act[(self.blocks[i + 1][0], "conv1")] if i + 1 < len(self.blocks) else None
            h, h_grid = y, y_grid
            for j, conv in enumerate(convs[:-1]):
                conv_stride = stride if (conv == "conv1") != self.arch.bottleneck else 1
                out = self.act[(block, convs[j + 1])]
                h = self._fused(variables, h, h_grid, (block, conv), conv_stride, out)
                h_grid = out
            if (block, "proj") in self.w_scale:
                p_grid = self.act[(block, "proj", "out")]
                side = (self._fused(variables, y, y_grid, (block, "proj"), stride, p_grid, relu=False), p_grid)
            else:
                side = (y, y_grid)
            y = self._fused(variables, h, h_grid, (block, convs[-1]), 1, nxt, side=side)
            y_grid = nxt
        # the padding's codes are those of 0; the head reads the real channels
        pooled = jnp.mean(y[..., : variables["params"]["head"]["kernel_int"].shape[0]], axis=(1, 2))
        head = int_layers.IntDense(self.num_classes, spec=self.head_spec)
        hv = {"params": variables["params"]["head"], "quant_stats": variables["quant_stats"].get("head", {})}
        return head.apply(hv, pooled).astype(jnp.float32)

    def fused_convs(self, hlo: str) -> int:
        """How many int8 -> int8 cuDNN convs an optimized HLO text has."""
        return sum(
            1
            for line in hlo.splitlines()
            if re.search(r'custom_call_target="__cudnn\$conv', line) and re.search(r"= \(s8\[", line)
        )


def _to_int8(v):
    """The idiom's end, convert<s8>(clamp(-128, v, 127)): on a fused conv, cuDNN rounds v half to even here."""
    lo, hi = jnp.broadcast_to(np.float32(-128), v.shape), jnp.broadcast_to(np.float32(127), v.shape)
    return lax.clamp(lo, v, hi).astype(jnp.int8)


S2D_CHANNELS = 32  # the stem's space-to-depth input is zero-padded to this many channels (int8 tensor-core kernels)


def _space_to_depth_conv(q, w):
    """The 7x7 stride-2 stem conv (padding 3) over int8 codes as a 4x4 stride-1 int8 conv over 2x2
    space-to-depth blocks: the same integer sums (the kernel padded to 8x8 with zeros), with 4 x 3
    channels (zero-padded to `S2D_CHANNELS`) where cuDNN has no fast int8 kernel for 3. float32 out."""
    n, h, wd, c = q.shape
    k, f = w.shape[0], w.shape[-1]
    if k != 7:
        raise FusedError(f"a space-to-depth stem needs the 7x7 stride-2 stem, got a {k}x{k} kernel")
    hp, wp = h + 6 + (h % 2), wd + 6 + (wd % 2)  # even sizes; an odd size's extra zero row/column adds nothing
    x = jnp.pad(q, [(0, 0), (3, hp - h - 3), (3, wp - wd - 3), (0, 0)])
    x = x.reshape(n, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // 2, wp // 2, 4 * c)
    w8 = jnp.pad(w, [(0, 1), (0, 1), (0, 0), (0, 0)]).reshape(4, 2, 4, 2, c, f)
    w8 = w8.transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, f)
    extra = max(S2D_CHANNELS - 4 * c, 0)
    x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, extra)])
    w8 = jnp.pad(w8, [(0, 0), (0, 0), (0, extra), (0, 0)])
    out = _conv(x, w8, 1, [(0, 0), (0, 0)], jnp.float32)
    # No slice may follow the conv (XLA fuses only an epilogue that reads it whole); none is needed.
    assert out.shape[1:3] == ((h - 1) // 2 + 1, (wd - 1) // 2 + 1), out.shape
    return out


def _fusable(out: Grid | None, relu: bool) -> bool:
    """Whether cuDNN's int8 output can give a conv's codes: int8 out, clipped by int8's own range (a
    narrower grid, such as 4 bits, needs a clip after the convert, which keeps XLA from fusing, so
    those convs round in the graph; ReLU makes a signed grid's lower clip moot)."""
    return out is not None and out.hi == 127 and (out.lo == -128 or relu)


def _int_paths(params, prefix=()) -> list[tuple[str, ...]]:
    """Paths of the layers with integer kernels in an export's params."""
    out = []
    for key, value in params.items():
        if isinstance(value, Mapping):
            out += [prefix + (key,)] if "kernel_int" in value else _int_paths(value, prefix + (key,))
    return out


def _name(path) -> str:
    return "/".join(re.sub(r"stage(\d+)_block(\d+)", r"stage\1/block\2", p) for p in path)


CHECK_TOLERANCE = 1e-2  # relative logit difference on the first batch beyond which cuDNN's path is refused


def compile_forward(model: FusedResNet, variables, sample, fn=None):
    """The jitted forward pass `fn(variables, x)` (default: model.apply), checked on `sample`. With
    rounding "cudnn", checks that XLA fused every conv it must (`FusedResNet.expected_fused`) and
    that on `sample` the logits are within `CHECK_TOLERANCE` (relative) of the in-graph rounding's
    (rounding differs only at float32 ties; a conv whose int8 output truncated instead would move
    them far more); otherwise it warns and returns the forward pass with rounding "explicit" (exact
    everywhere, slower). `model.check` records what was found.

    Returns:
      (the jitted forward pass, already compiled for `sample`'s shapes when checked; its rounding).
    """
    fn = fn or (lambda v, x: model.apply(v, x))
    forward = jax.jit(fn)
    if model.rounding != "cudnn":
        return forward, model.rounding
    found = model.fused_convs(forward.lower(variables, sample).compile().as_text())
    model.rounding = "explicit"
    # A new function: jax keeps traces per function object, and `fn`'s has cuDNN's rounding.
    explicit = jax.jit(lambda v, x: fn(v, x))
    model.check = {"fused_convs": found, "expected_fused": model.expected_fused}
    if found < model.expected_fused:
        warnings.warn(
            f"XLA fused {found} of {model.expected_fused} integer convs; rounding them explicitly instead", stacklevel=2
        )
        return explicit, model.rounding
    y_cudnn, y_explicit = np.asarray(forward(variables, sample)), np.asarray(explicit(variables, sample))
    rel = float(np.linalg.norm(y_cudnn - y_explicit) / max(np.linalg.norm(y_explicit), 1e-12))
    model.check["first_batch_rel_diff"] = rel
    if not rel <= CHECK_TOLERANCE:
        warnings.warn(
            f"cuDNN's fused convs gave logits {rel:.3g} (relative) off the in-graph rounding's on the first batch; "
            "rounding explicitly instead",
            stacklevel=2,
        )
        return explicit, model.rounding
    model.rounding = "cudnn"
    return forward, model.rounding
