"""ONNX export in QDQ form (`qresnet export --format onnx`) and its evaluation in ONNX Runtime.

The graph is the integer model `qresnet.export` describes, written as the field's common form of
a quantized CNN: each quantized layer input passes QuantizeLinear -> DequantizeLinear with the
frozen activation scale, each quantized kernel is stored as integer codes behind a
DequantizeLinear with its per-output-channel scales, and BN is folded into the conv (its
multiplier into the kernel's dequantization scales, so the codes stay the trained ones; its shift
into the conv's bias). Residual adds, ReLU and pooling stay float, as in the trained model. The
input is the uint8 NHWC image; normalisation is the graph's first op.

The trained quantizers are not ONNX's: a signed code is floor(x*s + 1/2) clipped to +-(2^(b-1)-1),
an unsigned one floor(x*s) clipped to 0..2^b-1, where QuantizeLinear rounds x/scale half to even and
saturates to the storage type. The graph makes them agree: a Clip to the code range where it is
narrower than the storage type's, and for unsigned inputs x - scale/2 before rounding (floor(v) is
round(v - 1/2) wherever v is not an integer; at 0, the most common exact integer, both give 0).
What remains: ties (a signed input exactly halfway between two codes, an unsigned one exactly on an
odd code) round to the even code, and float32 rounding can move a value across a code boundary
(x/scale is not always x*s to the bit; BN is folded), which `onnx_eval.evaluate(..., compare=RUN)` measures.

Storage: activations as uint8 or int8 (ONNX Runtime's integer kernels take 8-bit activations;
4-bit activations are 4-bit codes in 8-bit integers). Kernels of 4 bits or fewer as INT4 (opset
21; half the bytes) unless `int4_weights=False`, which stores their codes in int8.

Runtimes run a conv on integers where they find DequantizeLinear -> Conv -> [Relu] ->
QuantizeLinear, and then round the conv's bias to its int32 accumulator grid. The trained deploy
models keep BN's shift in float, so that rounding moves codes. By default the graph keeps the
unsigned half-step shift as its own op, which no runtime fuses: every conv runs in float on the
dequantized values and gives the trained codes. With `integer_kernels=True` the conv before a ReLU
whose output the next layer quantizes on an unsigned grid takes that half step into its bias
(relu(y - h) and relu(y) - h give the same codes), so the runtime sees the pattern: in a basic
block conv1, whose output goes to conv2 alone, runs on integers; the convs that feed a float
residual add cannot. `onnx_eval.evaluate(..., optimize=False)` runs a graph as written, without the
runtime's rewriting.

Built with the `onnx` package's helpers rather than traced from JAX (jax2onnx): a trace of the
fake-quant model gives floor/clip/multiply arithmetic, not QuantizeLinear/DequantizeLinear nodes,
so no runtime would see a quantized model in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qresnet import data, resnet, results
from qresnet.quant import ops
from qresnet.quant import specs as specs_lib

OPSET = 21
IR_VERSION = 10  # the first with opset 21 and INT4; newer onnx packages default to IRs runtimes do not read yet
FORMAT = "qresnet-onnx"


class OnnxError(ValueError):
    """An ONNX export that cannot be written or read; the message names the fix."""


def onnx_package():
    """The `onnx` module, or OnnxError naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise OnnxError('ONNX export needs the onnx package: pip install -e ".[onnx]"') from None
    return onnx


class _Graph:
    """Nodes and initializers of one graph, with unique names."""

    def __init__(self):
        self.onnx = onnx_package()
        self.nodes, self.inits = [], []

    def const(self, name: str, value, dtype=None) -> str:
        helper, tp = self.onnx.helper, self.onnx.TensorProto
        value = np.asarray(value)
        if dtype == tp.INT4:  # two codes a byte, the first in the low nibble (ONNX's packing and export's)
            from qresnet.export import pack_int4

            self.inits.append(helper.make_tensor(name, dtype, value.shape, pack_int4(value).tobytes(), raw=True))
        else:
            self.inits.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _grid(spec: specs_lib.QuantSpec, bound) -> tuple[np.float32, int, int]:
    """(ONNX scale = 1/s, qmin, qmax) of a layer's input quantizer with this frozen bound."""
    bits, signed = spec.a_bits, bool(spec.a_signed)
    qmin, qmax = ops.int_range(bits, signed)
    bound = np.float32(bound)
    if not bound > 0:  # ops.int_codes: every code 0
        return np.float32(1), 0, 0
    s = np.float32(ops.scale_numerator(bits, signed)) / bound
    if spec.pow2_scale:
        s = np.float32(np.asarray(ops.pow2_floor(s)))
    return np.float32(1) / s, qmin, qmax


def _act_qdq(g: _Graph, x: str, spec: specs_lib.QuantSpec, bound, name: str, shifted: bool = False) -> str:
    """x -> QuantizeLinear -> DequantizeLinear on the layer's input grid (module doc); `shifted`: the
    producer already subtracted the unsigned grid's half step (a conv's bias, before its ReLU)."""
    step, qmin, qmax = _grid(spec, bound)
    signed = bool(spec.a_signed)
    dtype, (lo, hi) = (np.int8, (-128, 127)) if signed else (np.uint8, (0, 255))
    if not signed and not shifted:
        x = g.op("Sub", [x, g.const(f"{name}/half_step", step / np.float32(2))], f"{name}/shifted")
    if qmin > lo or qmax < hi:
        lo_c, hi_c = (
            g.const(f"{name}/clip_lo", np.float32(qmin) * step),
            g.const(f"{name}/clip_hi", np.float32(qmax) * step),
        )
        x = g.op("Clip", [x, lo_c, hi_c], f"{name}/clipped")
    scale, zero = g.const(f"{name}/x_scale", step), g.const(f"{name}/x_zero", dtype(0))
    q = g.op("QuantizeLinear", [x, scale, zero], f"{name}/x_q")
    return g.op("DequantizeLinear", [q, scale, zero], f"{name}/x_dq")


def _weight(g: _Graph, layer: Mapping[str, Any], spec, mult, name: str, conv: bool, int4: bool, quantized: bool) -> str:
    """The layer's float kernel (ONNX layout) times the per-output-channel `mult` (folded BN):
    integer codes behind DequantizeLinear when quantized, a float initializer otherwise."""
    tp = g.onnx.TensorProto
    if spec.w_bits is None or not quantized:
        if spec.w_bits is None:
            w = np.asarray(layer["kernel"], np.float32) * mult
        else:  # the same kernel, dequantized: the float32 model of the same network
            w = np.asarray(layer["kernel_int"], np.float32) / np.asarray(layer["w_scale"], np.float32) * mult
        return g.const(f"{name}/w", w.transpose(3, 2, 0, 1) if conv else w)
    codes = np.asarray(layer["kernel_int"], np.int8)
    per_out = mult / np.asarray(layer["w_scale"], np.float32)
    sign = np.where(per_out < 0, -1, 1).astype(np.int8)  # codes are symmetric: -q is a code too
    codes, scale = codes * sign, np.abs(per_out).astype(np.float32)
    codes = codes.transpose(3, 2, 0, 1) if conv else codes
    dtype = tp.INT4 if (int4 and spec.w_bits <= 4) else tp.INT8
    q = g.const(f"{name}/w_q", codes, dtype)
    zero = g.const(f"{name}/w_zero", np.zeros(scale.shape, np.int8), dtype)
    return g.op("DequantizeLinear", [q, g.const(f"{name}/w_scale", scale), zero], f"{name}/w_dq", axis=0 if conv else 1)


def _bn_fold(params, stats, bn: str | None, features: int):
    """(multiplier, shift) per channel of inference BN (ones and zeros without BN)."""
    if bn is None:
        return np.ones(features, np.float32), np.zeros(features, np.float32)
    p, st = params[bn], stats[bn]
    mult = np.asarray(p["scale"], np.float32) / np.sqrt(
        np.asarray(st["var"], np.float32) + np.float32(resnet.BN_EPSILON)
    )
    return mult, np.asarray(p["bias"], np.float32) - np.asarray(st["mean"], np.float32) * mult


class _Builder:
    def __init__(self, variables, specs, int4: bool, quantized: bool, integer_kernels: bool):
        self.g, self.specs, self.int4, self.quantized = _Graph(), specs, int4, quantized
        self.integer_kernels = integer_kernels and quantized
        self.params = variables["params"]
        self.stats = variables.get("batch_stats", {})
        self.qstats = variables.get("quant_stats", {})

    def _bound(self, name: str, path):
        bound = _lookup(self.qstats, path)["act_bound"]
        if np.ndim(bound):
            raise OnnxError(
                f"layer {name!r} has per-input-channel activation scales, which no integer conv can apply; train "
                "for deployment with a_granularity='per_tensor' (e.g. setting w8a8_deploy or w4a4_ends8_deploy)"
            )
        return bound

    def _input(self, x: str, name: str, path, shifted: bool = False) -> str:
        spec = self.specs.get(name, specs_lib.FLOAT)
        if spec.a_bits is None or not self.quantized:
            return x
        return _act_qdq(self.g, x, spec, self._bound(name, path), name, shifted)

    def half_step(self, name: str, path) -> np.float32:
        """The half step a conv before ReLU subtracts from its bias for the next layer's unsigned
        quantizer (relu(y - h) quantizes as relu(y) - h: both give code 0 below h), so that the
        runtime sees Conv -> Relu -> QuantizeLinear and can run the conv on integers; 0 where the
        next layer's input is float or signed."""
        spec = self.specs.get(name, specs_lib.FLOAT)
        if spec.a_bits is None or spec.a_signed or not self.quantized:
            return np.float32(0)
        return _grid(spec, self._bound(name, path))[0] / np.float32(2)

    def input_step(self, name: str, path) -> np.float32 | None:
        """The ONNX scale (1/s) of a layer's input grid; None where its input is float."""
        spec = self.specs.get(name, specs_lib.FLOAT)
        return None if spec.a_bits is None else _grid(spec, self._bound(name, path))[0]

    def conv(
        self,
        x: str,
        shape,
        name: str,
        path,
        bn: str | None,
        kernel: int,
        strides: int,
        pad,
        *,
        shifted=False,
        then=None,
        given_step=None,
    ) -> tuple[str, tuple]:
        """Conv (+ folded BN, or a BN-folded run's bias) of NCHW tensor `x` of `shape` (N, C, H, W);
        returns (output, its shape). `shifted`: `x` comes with this layer's half step subtracted
        (`half_step`); `then`: (name, path) of the layer that quantizes this conv's ReLU output, whose
        half step the bias takes; `given_step`: `x` is already quantized, on this grid (a BN-folded
        block's input, quantized once for conv1 and the projection)."""
        from jax import lax

        layer = _lookup(self.params, path)
        spec = self.specs.get(name, specs_lib.FLOAT)
        features = (layer["kernel_int"] if spec.w_bits is not None else layer["kernel"]).shape[-1]
        parent = _lookup(self.params, path[:-1]) if len(path) > 1 else self.params
        stats = (_lookup(self.stats, path[:-1]) if len(path) > 1 else self.stats) if bn else {}
        mult, shift = _bn_fold(parent, stats, bn, features)
        step = given_step if given_step is not None else self.input_step(name, path)
        if "bias" in layer:  # a BN-folded run's conv
            shift = np.asarray(layer["bias"], np.float32)
            if spec.pow2_scale and step is not None and spec.w_bits is not None:
                # On its product's grid, as the layer adds it (ops.bias_on_grid).
                s = (np.float32(1) / step) * np.asarray(layer["w_scale"], np.float32)
                shift = ((np.floor(shift * s) + np.float32(0.5)) / s).astype(np.float32)
        if then is not None and self.integer_kernels:
            shift = shift - self.half_step(*then)
        pads = (
            lax.padtype_to_pads(shape[2:], (kernel, kernel), (strides, strides), pad) if isinstance(pad, str) else pad
        )
        xq = x if given_step is not None else self._input(x, name, path, shifted and self.integer_kernels)
        w = _weight(self.g, layer, spec, mult, name, True, self.int4, self.quantized)
        y = self.g.op(
            "Conv",
            [xq, w, self.g.const(f"{name}/bias", shift)],
            f"{name}/y",
            strides=[strides, strides],
            pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
            kernel_shape=[kernel, kernel],
        )
        h = (shape[2] + pads[0][0] + pads[0][1] - kernel) // strides + 1
        w_out = (shape[3] + pads[1][0] + pads[1][1] - kernel) // strides + 1
        return y, (shape[0], features, h, w_out)

    def dense(self, x: str, name: str) -> str:
        layer = self.params[name]
        spec = self.specs.get(name, specs_lib.FLOAT)
        features = (layer["kernel_int"] if spec.w_bits is not None else layer["kernel"]).shape[-1]
        w = _weight(self.g, layer, spec, np.ones(features, np.float32), name, False, self.int4, self.quantized)
        y = self.g.op("MatMul", [self._input(x, name, (name,)), w], f"{name}/matmul")
        return self.g.op("Add", [y, self.g.const(f"{name}/bias", np.asarray(layer["bias"], np.float32))], f"{name}/y")


def _lookup(tree, path):
    for p in path:
        if p not in tree:
            raise OnnxError(f"the run's variables have no {'/'.join(path)}; is this a qresnet ResNet run?")
        tree = tree[p]
    return tree


def build(
    header: Mapping[str, Any],
    variables: Mapping[str, Any],
    *,
    int4_weights: bool = True,
    quantized: bool = True,
    integer_kernels: bool = False,
):
    """The QDQ ONNX model of an exported network (module doc).

    Args:
      header: model, width, num_classes, input_shape, dataset, setting, specs (JSON), fold_bn as
        `qresnet.export` writes them.
      variables: `export.integer_variables` of the trained run.
      int4_weights: store kernels of <= 4 bits as INT4 (else int8 holding their codes).
      quantized: False gives the same network in float32 (kernels dequantized, inputs not
        quantized), the baseline of the CPU benchmark.
      integer_kernels: write the pattern runtimes run on integer kernels where the network allows
        it (module doc): faster, and the runtime's int32 bias rounding moves some codes.

    Returns:
      An `onnx.ModelProto` (opset 21) whose input "image" is uint8 (N, H, W, C) and output
      "logits" float32 (N, num_classes); qresnet's header is in its metadata ("qresnet").
    """
    folded = bool(header.get("fold_bn"))
    specs = specs_lib.specs_from_json(header["specs"])
    arch = resnet.get_arch(header["model"])
    b = _Builder(variables, specs, int4_weights, quantized, integer_kernels)
    g, onnx = b.g, b.g.onnx
    info = data.dataset_info(header["dataset"])
    h, w, c = header["input_shape"]
    mean = np.asarray(info.mean, np.float32).reshape(1, 1, 1, -1) * np.float32(255)
    std = np.asarray(info.std, np.float32).reshape(1, 1, 1, -1) * np.float32(255)
    x = g.op("Cast", ["image"], "image_f32", to=onnx.TensorProto.FLOAT)
    x = g.op("Div", [g.op("Sub", [x, g.const("mean", mean)], "centred"), g.const("std", std)], "normalized")
    x = g.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    shape = (1, c, h, w)
    stem_bn = None if folded else "stem_bn"
    if arch.cifar:
        x, shape = b.conv(x, shape, "stem", ("stem",), stem_bn, 3, 1, ((1, 1), (1, 1)))
        x = g.op("Relu", [x], "stem/relu")
    else:
        x, shape = b.conv(x, shape, "stem", ("stem",), stem_bn, 7, 2, ((3, 3), (3, 3)))
        x = g.op("Relu", [x], "stem/relu")
        x = g.op("MaxPool", [x], "stem/pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        shape = (1, shape[1], (shape[2] - 1) // 2 + 1, (shape[3] - 1) // 2 + 1)
    for s, (n_blocks, filters) in enumerate(zip(arch.stage_sizes, resnet.stage_filters(arch, header["width"]))):
        for i in range(n_blocks):
            x, shape = (_block_folded if folded else _block)(b, x, shape, s, i, filters, arch.bottleneck)
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "pooled")
    g.op("Identity", [b.dense(x, "head")], "logits")
    graph = onnx.helper.make_graph(
        g.nodes,
        f"qresnet_{header['model']}_{header['setting']}",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, ["N", h, w, c])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", header["num_classes"]])],
        g.inits,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="qresnet", ir_version=IR_VERSION
    )
    meta = {k: v for k, v in header.items() if k != "arrays"}
    onnx.helper.set_model_props(model, {"qresnet": json.dumps({"format": FORMAT, **meta})})
    onnx.checker.check_model(model, full_check=True)
    return model


def _block(b: _Builder, x: str, shape, s: int, i: int, filters: int, bottleneck: bool):
    """One residual block (resnet.Block, unfolded), NCHW."""
    name, path = f"stage{s}/block{i}", f"stage{s}_block{i}"
    strides = 2 if s > 0 and i == 0 else 1
    out_features = filters * 4 if bottleneck else filters
    sp = ((1, 1), (1, 1))
    conv = lambda i: (f"{name}/conv{i}", (path, f"conv{i}"))  # noqa: E731
    if bottleneck:
        y, sh = b.conv(x, shape, *conv(1), "bn1", 1, 1, "SAME", then=conv(2))
        y = b.g.op("Relu", [y], f"{name}/relu1")
        y, sh = b.conv(y, sh, *conv(2), "bn2", 3, strides, sp, shifted=True, then=conv(3))
        y = b.g.op("Relu", [y], f"{name}/relu2")
        y, sh = b.conv(y, sh, *conv(3), "bn3", 1, 1, "SAME", shifted=True)
    else:
        y, sh = b.conv(x, shape, *conv(1), "bn1", 3, strides, sp, then=conv(2))
        y = b.g.op("Relu", [y], f"{name}/relu1")
        y, sh = b.conv(y, sh, *conv(2), "bn2", 3, 1, sp, shifted=True)
    shortcut = x
    if strides != 1 or shape[1] != out_features:
        shortcut, _ = b.conv(x, shape, f"{name}/proj", (path, "proj"), "proj_bn", 1, strides, "SAME")
    return b.g.op("Relu", [b.g.op("Add", [y, shortcut], f"{name}/add")], f"{name}/out"), sh


def _block_folded(b: _Builder, x: str, shape, s: int, i: int, filters: int, bottleneck: bool):
    """One block of a BN-folded network (resnet.Block._folded), NCHW: its input quantized once, by
    conv1's quantizer, for conv1, the projection and (its dequantized value) the identity shortcut;
    a projection's output on int8 codes of its own bound."""
    name, path = f"stage{s}/block{i}", f"stage{s}_block{i}"
    strides = 2 if s > 0 and i == 0 else 1
    out_features = filters * 4 if bottleneck else filters
    sp = ((1, 1), (1, 1))
    conv = lambda i: (f"{name}/conv{i}", (path, f"conv{i}"))  # noqa: E731
    step = b.input_step(*conv(1)) if b.quantized else None
    xq = b._input(x, *conv(1))
    first = (1, 1, "SAME") if bottleneck else (3, strides, sp)
    y, sh = b.conv(xq, shape, *conv(1), None, *first, given_step=step, then=conv(2))
    y = b.g.op("Relu", [y], f"{name}/relu1")
    if bottleneck:
        y, sh = b.conv(y, sh, *conv(2), None, 3, strides, sp, shifted=True, then=conv(3))
        y = b.g.op("Relu", [y], f"{name}/relu2")
        y, sh = b.conv(y, sh, *conv(3), None, 1, 1, "SAME", shifted=True)
    else:
        y, sh = b.conv(y, sh, *conv(2), None, 3, 1, sp, shifted=True)
    shortcut = xq
    if strides != 1 or shape[1] != out_features:
        proj = (f"{name}/proj", (path, "proj"))
        shortcut, _ = b.conv(xq, shape, *proj, None, 1, strides, "SAME", given_step=step)
        out_bound = _lookup(b.qstats, proj[1]).get("out_bound")
        if b.quantized and out_bound is not None:
            shortcut = _out_qdq(b.g, shortcut, out_bound, b.specs[proj[0]].pow2_scale, proj[0])
    return b.g.op("Relu", [b.g.op("Add", [y, shortcut], f"{name}/add")], f"{name}/out"), sh


def _out_qdq(g: _Graph, x: str, bound, pow2: bool, name: str) -> str:
    """A BN-folded projection's output on int8 codes (layers.output_codes: s = 127 / bound, the whole
    int8 range, which QuantizeLinear's saturation gives)."""
    bound = np.float32(bound)
    s = np.float32(127) / bound if bound > 0 else np.float32(1)
    if pow2 and bound > 0:
        s = np.float32(np.asarray(ops.pow2_floor(s)))
    scale, zero = g.const(f"{name}/out_scale", np.float32(1) / s), g.const(f"{name}/out_zero", np.int8(0))
    if not bound > 0:
        x = g.op("Mul", [x, g.const(f"{name}/zero", np.float32(0))], f"{name}/zeroed")
    q = g.op("QuantizeLinear", [x, scale, zero], f"{name}/out_q")
    return g.op("DequantizeLinear", [q, scale, zero], f"{name}/out_dq")


def export_run(
    workdir: str | Path, out: str | Path, *, int4_weights: bool = True, integer_kernels: bool = False
) -> Path:
    """Writes the ONNX model of a finished run (`build`), checked by `onnx.checker`; never overwrites."""
    from qresnet import export

    out = Path(out)
    if out.exists():
        raise OnnxError(f"--out {out} exists; qresnet never overwrites a file: choose another path or remove it")
    header, variables = export.run_variables(workdir)
    model = build(header, variables, int4_weights=int4_weights, integer_kernels=integer_kernels)
    try:
        results.atomic_write_bytes(out, model.SerializeToString(), overwrite=False)
    except FileExistsError:
        raise OnnxError(f"{out} exists; qresnet never overwrites a file: choose another path or remove it") from None
    return out
