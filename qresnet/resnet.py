"""ResNets for ImageNet (18-200, v1.5) and CIFAR (8-110, 6n+2 layers), built from QConv/QDense.

Stable layer names (the API the bit rules match): `stem`,
`stage{s}/block{b}/conv{1,2[,3]}`, `stage{s}/block{b}/proj`, `head`; stages
and blocks count from 0. A width multiplier scales the residual stages
(stage s has int(base * width * 2^s) filters, base 64 ImageNet / 16 CIFAR),
never the stem. CIFAR nets use shortcut option B (a 1x1 projection + BN
where shape changes, identity otherwise). The last BN of every block starts
at scale 0.

`fold_bn=True` gives the network an integer deployment runs with int8 codes from
conv to conv (`qresnet.fused`): no BN (each conv has a bias: BN folded into it,
`fold_batch_norm`), and every activation tensor quantized once for all its
readers: a block's input by conv1's quantizer, whose codes the projection reads
too and whose fake-quantized value is the identity shortcut; a projection's
output to int8 codes, -128..127 (the residual a fused conv adds). Quantized layers
need one weight and one activation scale per tensor (`check_fold_specs`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qresnet.quant import specs as specs_lib
from qresnet.quant.layers import OUT_BITS, ConvBackend, QConv, QDense
from qresnet.quant.specs import FLOAT, QuantSpec


@dataclasses.dataclass(frozen=True)
class Arch:
    stage_sizes: tuple[int, ...]
    bottleneck: bool
    cifar: bool

    @property
    def base_filters(self) -> int:
        return 16 if self.cifar else 64


ARCHS: dict[str, Arch] = {
    "resnet18": Arch((2, 2, 2, 2), False, False),
    "resnet34": Arch((3, 4, 6, 3), False, False),
    "resnet50": Arch((3, 4, 6, 3), True, False),
    "resnet101": Arch((3, 4, 23, 3), True, False),
    "resnet152": Arch((3, 8, 36, 3), True, False),
    "resnet200": Arch((3, 24, 36, 3), True, False),
    "resnet8": Arch((1, 1, 1), False, True),
    "resnet14": Arch((2, 2, 2), False, True),
    "resnet20": Arch((3, 3, 3), False, True),
    "resnet32": Arch((5, 5, 5), False, True),
    "resnet44": Arch((7, 7, 7), False, True),
    "resnet56": Arch((9, 9, 9), False, True),
    "resnet110": Arch((18, 18, 18), False, True),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # running averages: momentum * old + (1 - momentum) * batch


class GroupBatchNorm(nn.Module):
    """BatchNorm whose training statistics are per replica of `group` examples, as on the paper's
    data-parallel TPU slice: each replica (consecutive rows of the batch) is normalised by its own
    mean and variance, and the running averages move by the mean over replicas of their
    statistics. The same variables as `nn.BatchNorm` (params scale, bias; batch_stats mean, var),
    and the same function in inference mode.

    Attributes:
      group: examples per replica (> 0; the batch must divide by it).
      use_running_average, momentum, epsilon, dtype, scale_init, bias_init: as nn.BatchNorm.
    """

    group: int
    use_running_average: bool = False
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = None
    scale_init: Any = nn.initializers.ones_init()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
            y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        else:
            if x.shape[0] % self.group:
                raise ValueError(f"a batch of {x.shape[0]} does not split into replicas of {self.group}")
            xg = xf.reshape(x.shape[0] // self.group, self.group, *x.shape[1:])
            axes = tuple(range(1, xg.ndim - 1))
            mean = jnp.mean(xg, axis=axes, keepdims=True)
            var = jnp.maximum(jnp.mean(jnp.square(xg), axis=axes, keepdims=True) - jnp.square(mean), 0.0)
            y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean.reshape(-1, c), axis=0)
                ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var.reshape(-1, c), axis=0)
        return (y * scale + bias).astype(self.dtype or x.dtype)


def _no_norm(name=None, **_):
    """The stand-in for BatchNorm in a BN-folded network: the identity."""
    del name
    return lambda y: y


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[name]


def stage_filters(arch: Arch, width: float) -> list[int]:
    """Filters per stage: int(base * width * 2^s); errors if any is < 1."""
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"model width must be a number > 0, got {width!r}; e.g. --config.model.width=1.0")
    filters = [int(arch.base_filters * width * 2**s) for s in range(len(arch.stage_sizes))]
    if filters[0] < 1:
        raise ValueError(f"width {width} leaves stage 0 with no filters; use a width >= {1 / arch.base_filters}")
    return filters


class Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3 strided, 1x1 x4) residual block."""

    filters: int
    strides: int
    bottleneck: bool
    conv: Any
    norm: Any
    prefix: str
    specs: Mapping[str, QuantSpec] | None
    fold_bn: bool = False

    def _spec(self, name):
        return (self.specs or {}).get(f"{self.prefix}/{name}")

    def _conv(self, name, features, kernel, strides=1, **kw):
        pad = "SAME" if kernel == 1 else ((kernel // 2,) * 2,) * 2
        return self.conv(features, (kernel, kernel), (strides, strides), pad, name=name, spec=self._spec(name), **kw)

    @nn.compact
    def __call__(self, x, train: bool, act_quant):
        if self.fold_bn:
            return self._folded(x, train, act_quant)
        kw = dict(train=train, act_quant=act_quant)
        out_features = self.filters * 4 if self.bottleneck else self.filters
        shortcut = x
        if self.bottleneck:
            y = nn.relu(self.norm(name="bn1")(self._conv("conv1", self.filters, 1)(x, **kw)))
            y = nn.relu(self.norm(name="bn2")(self._conv("conv2", self.filters, 3, self.strides)(y, **kw)))
            y = self.norm(name="bn3", scale_init=nn.initializers.zeros_init())(
                self._conv("conv3", out_features, 1)(y, **kw)
            )
        else:
            y = nn.relu(self.norm(name="bn1")(self._conv("conv1", self.filters, 3, self.strides)(x, **kw)))
            y = self.norm(name="bn2", scale_init=nn.initializers.zeros_init())(
                self._conv("conv2", self.filters, 3)(y, **kw)
            )
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = self.norm(name="proj_bn")(self._conv("proj", out_features, 1, self.strides)(x, **kw))
        return nn.relu(y + shortcut)

    def _folded(self, x, train: bool, act_quant):
        """The block without BN, its input quantized once (module doc)."""
        kw = dict(train=train, act_quant=act_quant)
        out_features = self.filters * 4 if self.bottleneck else self.filters
        first = (1, 1) if self.bottleneck else (3, self.strides)
        y, (q, s) = self._conv("conv1", self.filters, *first, return_codes=True)(x, **kw)
        y = nn.relu(y)
        if self.bottleneck:
            y = nn.relu(self._conv("conv2", self.filters, 3, self.strides)(y, **kw))
            y = self._conv("conv3", out_features, 1)(y, **kw)
        else:
            y = self._conv("conv2", self.filters, 3)(y, **kw)
        if self.strides != 1 or x.shape[-1] != out_features:
            if s is None:
                shortcut = self._conv("proj", out_features, 1, self.strides)(x, **kw)
            else:
                proj = self._conv("proj", out_features, 1, self.strides, out_bits=OUT_BITS)
                shortcut = proj(q.astype(y.dtype), x_scale=s, **kw)
        else:
            shortcut = x if s is None else (q / s).astype(y.dtype)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet over NHWC images; returns float32 logits.

    Attributes:
      arch: stage sizes, block type and stem type (see `ARCHS`).
      num_classes: outputs of the `head` dense layer.
      width: filter multiplier of the residual stages (not the stem).
      specs: {layer name: QuantSpec}; missing layers are float.
      dtype: compute dtype; parameters stay float32.
      backend: how QConv runs its convolutions (`ConvBackend`: cuDNN or Triton, channel padding).
      replica_size: 0: BN and activation-bound statistics over the whole batch; R > 0: per
        replica of R examples, averaged over replicas (`GroupBatchNorm`, `ops.batch_max_abs`).
    """

    arch: Arch
    num_classes: int = 1000
    width: float = 1.0
    specs: Mapping[str, QuantSpec] | None = None
    dtype: Any = jnp.float32
    conv_cls: Any = QConv  # IntConv/IntDense give the integer inference model.
    dense_cls: Any = QDense
    backend: ConvBackend = ConvBackend()
    fold_bn: bool = False
    replica_size: int = 0

    @nn.compact
    def __call__(self, x, train: bool = False, act_quant=True):
        """Args: x (N, H, W, C) float; train: batch statistics and bound updates;
        act_quant: quantize layer inputs (bool or traced bool). Returns logits."""
        specs = self.specs or {}
        conv = functools.partial(
            self.conv_cls, dtype=self.dtype, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        )
        if self.backend != ConvBackend():
            conv = functools.partial(conv, backend=self.backend)
        dense = self.dense_cls
        bn = nn.BatchNorm
        if self.replica_size:  # statistics per replica, as the paper's data-parallel training computes them
            conv = functools.partial(conv, stat_group=self.replica_size)
            dense = functools.partial(dense, stat_group=self.replica_size)
            bn = functools.partial(GroupBatchNorm, self.replica_size)
        norm = functools.partial(
            bn, use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype
        )
        if self.fold_bn:
            conv = functools.partial(conv, use_bias=True)
            norm = _no_norm
        kw = dict(train=train, act_quant=act_quant)
        x = x.astype(self.dtype)
        if self.arch.cifar:
            x = conv(16, (3, 3), padding=((1, 1), (1, 1)), name="stem", spec=specs.get("stem"))(x, **kw)
            x = nn.relu(norm(name="stem_bn")(x))
        else:
            x = conv(64, (7, 7), (2, 2), ((3, 3), (3, 3)), name="stem", spec=specs.get("stem"))(x, **kw)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for s, (n_blocks, filters) in enumerate(zip(self.arch.stage_sizes, stage_filters(self.arch, self.width))):
            for b in range(n_blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = Block(
                    filters,
                    strides,
                    self.arch.bottleneck,
                    conv,
                    norm,
                    f"stage{s}/block{b}",
                    self.specs,
                    self.fold_bn,
                    name=f"stage{s}_block{b}",
                )(x, **kw)
        x = jnp.mean(x, axis=(1, 2))
        x = dense(self.num_classes, dtype=self.dtype, name="head", spec=specs.get("head"))(x, **kw)
        return x.astype(jnp.float32)


def create_model(
    name: str,
    *,
    num_classes: int,
    width: float = 1.0,
    specs: Mapping[str, QuantSpec] | None = None,
    dtype: str = "float32",
    backend: ConvBackend | None = None,
    fold_bn: bool = False,
    replica_size: int = 0,
) -> ResNet:
    """Builds a ResNet by name ("resnet20", "resnet50", ...).

    Args:
      name: a key of `ARCHS`.
      num_classes: classifier outputs.
      width: residual-stage filter multiplier (> 0).
      specs: {layer: QuantSpec}, from `resolve_specs`.
      dtype: "float32", "bfloat16" or "float16".
      backend: how the convs run (`ConvBackend`: cuDNN or Triton kernels, channel padding); the
        same model and result whichever (None: cuDNN, no padding).
      fold_bn: the BN-folded network for fused integer deployment (module doc); its specs must
        pass `check_fold_specs`.
      replica_size: statistics per replica of this many examples (0 = the whole batch; `ResNet`).

    Returns:
      The Flax module.
    """
    if fold_bn:
        check_fold_specs(specs or {})
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    arch = get_arch(name)
    stage_filters(arch, width)
    if not isinstance(replica_size, int) or replica_size < 0:
        raise ValueError(f"replica_size must be an int >= 0 (0 = the whole batch), got {replica_size!r}")
    if backend is not None and not isinstance(backend, ConvBackend):
        raise ValueError(f"backend must be a quant.ConvBackend, got {backend!r}")
    return ResNet(
        arch=arch,
        num_classes=num_classes,
        width=width,
        specs=specs,
        dtype=DTYPES[dtype],
        backend=backend or ConvBackend(),
        fold_bn=fold_bn,
        replica_size=replica_size,
    )


def check_fold_specs(specs: Mapping[str, QuantSpec]) -> None:
    """Raises ValueError unless a BN-folded network's specs can run as fused integer convs: every
    layer float or quantized on both sides with one scale per tensor (weights and activations),
    and each projection reading its block's input at conv1's activation width."""
    for name, spec in specs.items():
        if spec.is_float:
            continue
        if spec.w_bits is None or spec.a_bits is None:
            raise ValueError(
                f"model.fold_bn: layer {name!r} quantizes only one side (w_bits={spec.w_bits}, a_bits={spec.a_bits}); "
                "quantize both or neither (e.g. setting w8a8_fused)"
            )
        if spec.w_granularity != "per_tensor" or spec.a_granularity != "per_tensor":
            raise ValueError(
                f"model.fold_bn: layer {name!r} has w_granularity={spec.w_granularity!r}, "
                f"a_granularity={spec.a_granularity!r}; a fused integer conv applies one scale per tensor: "
                "use per_tensor for both (settings w8a8_fused, w4a4_ends8_fused)"
            )
        if spec.w_bound == "lsq":
            raise ValueError(
                f"model.fold_bn: layer {name!r} learns its weight bound (w_bound='lsq'), which the fused network "
                "does not carry; use w_bound='max_abs' (settings w8a8_fused, w4a4_ends8_fused)"
            )
        if name != "stem" and max(spec.a_bits, spec.w_bits) > 8:
            raise ValueError(
                f"model.fold_bn: layer {name!r} has w_bits={spec.w_bits}, a_bits={spec.a_bits}; "
                "int8 codes hold at most 8 bits"
            )
    for name, spec in specs.items():
        if name.endswith("/proj"):
            conv1 = specs.get(name[: -len("proj")] + "conv1", FLOAT)
            if (spec.a_bits, spec.is_float) != (conv1.a_bits, conv1.is_float):
                raise ValueError(
                    f"model.fold_bn: {name!r} reads the codes of its block's conv1 (a_bits={conv1.a_bits}) but has "
                    f"a_bits={spec.a_bits}; give both the same rule"
                )


FOLD_PAIRS = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "proj": "proj_bn", "stem": "stem_bn"}


def fold_batch_norm(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict[str, Any]:
    """A trained network's parameters with each BN folded into the conv before it (inference
    statistics): kernel * gamma / sqrt(var + eps) and bias beta - gamma * mean / sqrt(var + eps),
    the parameters of the same network built with fold_bn=True (which then computes the same
    function as the original in inference mode).

    Args:
      params, batch_stats: the BN network's variables.

    Returns:
      {module: {...}} params for fold_bn=True (the head and other layers copied).
    """

    def fold(p, stats):
        out = {}
        for key, value in p.items():
            if key in FOLD_PAIRS.values():
                continue
            if key in FOLD_PAIRS and FOLD_PAIRS[key] in p:
                bn, st = p[FOLD_PAIRS[key]], stats[FOLD_PAIRS[key]]
                g = jnp.asarray(bn["scale"]) / jnp.sqrt(jnp.asarray(st["var"]) + BN_EPSILON)
                out[key] = {
                    "kernel": jnp.asarray(value["kernel"]) * g,
                    "bias": jnp.asarray(bn["bias"]) - g * jnp.asarray(st["mean"]),
                    **{k: v for k, v in value.items() if k != "kernel"},
                }
            elif isinstance(value, Mapping) and "kernel" not in value:
                out[key] = fold(value, stats.get(key, {}))
            else:
                out[key] = value
        return out

    return fold(params, batch_stats)


def _path_to_name(path: Sequence[str]) -> str:
    parts = []
    for p in path:
        m = re.fullmatch(r"stage(\d+)_block(\d+)", p)
        parts.append(f"stage{m[1]}/block{m[2]}" if m else p)
    return "/".join(parts)


_LAYER_ORDER = {"conv1": 0, "conv2": 1, "conv3": 2, "proj": 3}


def _forward_key(name: str):
    if name == "stem":
        return (0,)
    if name == "head":
        return (2,)
    m = re.fullmatch(r"stage(\d+)/block(\d+)/(\w+)", name)
    return (1, int(m[1]), int(m[2]), _LAYER_ORDER.get(m[3], 9)) if m else (3, name)


def kernel_paths(params: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """{stable layer name: param path} for every conv/dense kernel, in forward order."""
    out = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(k.key for k in path)
        if keys[-1] == "kernel":
            out[_path_to_name(keys[:-1])] = keys[:-1]
    return {n: out[n] for n in sorted(out, key=_forward_key)}


@functools.lru_cache(maxsize=64)
def layer_names(
    name: str, width: float = 1.0, num_classes: int = 10, input_shape: tuple[int, ...] = (32, 32, 3)
) -> tuple[str, ...]:
    """Every quantizable layer of a model, in forward order."""
    model = create_model(name, num_classes=num_classes, width=width)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
    return tuple(kernel_paths(shapes["params"]))


def signed_layers(names: Sequence[str]) -> tuple[str, ...]:
    """Layers whose input is signed by default: the stem (the normalised image)
    and conv1 of each stage's first block (the paper's choice)."""
    return tuple(n for n in names if n == "stem" or re.fullmatch(r"stage\d+/block0/conv1", n))


def resolve_specs(
    rules,
    name: str,
    *,
    width: float = 1.0,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (32, 32, 3),
) -> Mapping[str, QuantSpec]:
    """The one place per-layer rules become a model's specs.

    Args:
      rules: ordered (regex, w_bits, a_bits[, options]) rules or `quant.QuantRule`s, matched
        (fullmatch, first match wins) against the model's layer names.
      name: the model (a key of `ARCHS`).
      width, num_classes, input_shape: the model's, as for `create_model`.

    Returns:
      A read-only {layer: QuantSpec} in layer order, each input's signedness filled in (the stem
      and each stage's first conv1 read signed values, the paper's choice).

    Raises:
      quant.SpecError: a rule that matches no layer, a layer no rule matches, bits out of range, a
        standardized head kernel.
    """
    names = layer_names(name, width, num_classes, input_shape)
    specs = specs_lib.resolve_specs(rules, names, signed_layers(names))
    if specs["head"].w_standardize:
        raise specs_lib.SpecError(
            "layer 'head' has w_standardize=True, which scales a layer's output by 1/std(W) for the BatchNorm "
            "after it to absorb; the head has none: leave it out of the rule that sets w_standardize"
        )
    return specs
