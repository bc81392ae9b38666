"""The same ResNet quantized by Google AQT (`aqtp`) and Google Qwix (`qwix`).

Both are optional (`pip install -e ".[bench]"`); they are imported only when a
baseline is built. Each builder returns a Flax linen module that the trainer's
`train_step` can call (`train=`, `act_quant=` keywords), over the parameter
layout of `plain_resnet.PlainResNet`.

Paths (see ../shared/docs/anchors.md for why there are several):
- AQT "conv": AQT's own `AqtConvGeneralDilated` for convs and `AqtDotGeneral`
  for the head. Its conv has no straight-through estimator in aqtp 0.9.0, so no
  gradient reaches the conv kernels: not a working QAT step.
- AQT "im2col": each conv computed as image patches times the kernel through
  `AqtDotGeneral`, which has a straight-through gradient: AQT's nearest working
  conv-QAT path.
- Qwix "qat": `qwix.quantize_model` with weight and activation rules (real
  integer convs; these fail to compile on NVIDIA GPUs).
- Qwix "weight_only": weights quantized, activations float.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.plain_resnet import PlainResNet

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# setting -> (bits of the stem and head, bits of every other layer); None = float.
SETTING_BITS = {"w8a8": (8, 8), "w4a4": (4, 4), "w4a4_ends8": (8, 4), "w8": (8, 8), "w4": (4, 4)}
WEIGHT_ONLY = ("w8", "w4")


def _require(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"{package} is not installed: pip install -e '.[bench]' (or pip install {package})") from e


class PatchConv(nn.Module):
    """A conv as (image patches) x (kernel) through an injected dot_general class."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    dtype: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    dot_general_cls: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        x = x.astype(self.dtype)
        padding = self.padding if isinstance(self.padding, str) else [tuple(p) for p in self.padding]
        patches = jax.lax.conv_general_dilated_patches(
            x, tuple(self.kernel_size), tuple(self.strides), padding, dimension_numbers=DIMENSIONS
        )
        # The patches' feature axis is (C_in, kh, kw) flattened with C_in slowest.
        k = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, self.features).astype(self.dtype)
        return self.dot_general_cls()(patches, k, (((3,), (0,)), ((), ())), None)


def _aqt_layers(bits: int, conv_path: str):
    """(conv_cls, dense_cls) with AQT at `bits` for weights and activations."""
    config = _require("aqt.jax.v2.config", "aqtp")
    conv_general = _require("aqt.jax.v2.aqt_conv_general", "aqtp")
    aqt_flax = _require("aqt.jax.v2.flax.aqt_flax", "aqtp")
    dot_cfg = config.config_v4(fwd_bits=bits, dlhs_bits=None, drhs_bits=None)
    # prng_name=None: no stochastic rounding, so apply() needs no rng.
    dot_cls = functools.partial(aqt_flax.AqtDotGeneral, dot_cfg, prng_name=None)
    dense_cls = functools.partial(nn.Dense, dot_general_cls=dot_cls)
    if conv_path == "im2col":
        return functools.partial(PatchConv, dot_general_cls=dot_cls), dense_cls
    conv_cfg = config.config_v4(fwd_bits=bits, dlhs_bits=None, drhs_bits=None)
    # The conv wrapper reads only the forward config, with conv calibration axes.
    conv_cfg.fwd = conv_general.conv_general_dilated_make(spatial_dimensions=2, lhs_bits=bits, rhs_bits=bits)
    conv_cls = functools.partial(
        nn.Conv, conv_general_dilated_cls=functools.partial(aqt_flax.AqtConvGeneralDilated, conv_cfg, prng_name=None)
    )
    return conv_cls, dense_cls


def aqt_model(model: str, num_classes: int, dtype, setting: str, conv_path: str) -> nn.Module:
    """The ResNet with AQT in every conv and the head.

    Args:
      model: e.g. "resnet20", "resnet50".
      num_classes: classifier outputs.
      dtype: compute dtype.
      setting: "w8a8", "w4a4" or "w4a4_ends8" (stem and head at 8 bits).
      conv_path: "conv" (AQT's conv wrapper) or "im2col" (patches through AqtDotGeneral).

    Returns:
      A PlainResNet with AQT layers.
    """
    if setting not in ("w8a8", "w4a4", "w4a4_ends8"):
        raise ValueError(f"AQT setting must be w8a8, w4a4 or w4a4_ends8, got {setting!r}")
    if conv_path not in ("conv", "im2col"):
        raise ValueError(f"AQT conv path must be 'conv' or 'im2col', got {conv_path!r}")
    end_bits, body_bits = SETTING_BITS[setting]
    conv_cls, _ = _aqt_layers(body_bits, conv_path)
    stem_cls, dense_cls = _aqt_layers(end_bits, conv_path)
    return PlainResNet(model, num_classes, dtype=dtype, conv_cls=conv_cls, dense_cls=dense_cls, stem_cls=stem_cls)


def qwix_model(model: str, num_classes: int, dtype, setting: str) -> nn.Module:
    """The ResNet quantized by Qwix rules (regex on module paths, first match wins).

    Args:
      model, num_classes, dtype: as `aqt_model`.
      setting: "w8a8", "w4a4", "w4a4_ends8" (QAT of weights and activations) or
        "w8", "w4" (weights only).

    Returns:
      The Qwix-quantized PlainResNet.
    """
    qwix = _require("qwix", "qwix")
    if setting not in SETTING_BITS:
        raise ValueError(f"Qwix setting must be one of {sorted(SETTING_BITS)}, got {setting!r}")
    end_bits, body_bits = SETTING_BITS[setting]
    weight_only = setting in WEIGHT_ONLY

    def rule(path, bits):
        qtype = f"int{bits}"
        return qwix.QtRule(module_path=path, weight_qtype=qtype, act_qtype=None if weight_only else qtype)

    rules = [rule("stem|head", end_bits), rule(".*", body_bits)]
    return qwix.quantize_model(PlainResNet(model, num_classes, dtype=dtype), qwix.QtProvider(rules))
