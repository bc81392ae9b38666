"""A plain Flax linen ResNet with no quantization code: the benchmarks' baseline.

The same architecture, initialisers and parameter names as `qresnet.resnet.ResNet`
(CIFAR option-B shortcuts, ResNet v1.5 bottlenecks), built from `nn.Conv` and
`nn.Dense`. Given the same variables it computes the same logits as a float
qresnet ResNet (tests check this). The layer classes can be swapped, which is
how the AQT baselines inject quantization; the stem and head classes can differ
from the rest (8-bit ends).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qresnet import resnet


class PlainBlock(nn.Module):
    """Basic or bottleneck residual block, as `qresnet.resnet.Block`."""

    filters: int
    strides: int
    bottleneck: bool
    conv: Any
    norm: Any

    def _conv(self, name, features, kernel, strides=1):
        pad = "SAME" if kernel == 1 else ((kernel // 2,) * 2,) * 2
        return self.conv(features, (kernel, kernel), (strides, strides), pad, name=name)

    @nn.compact
    def __call__(self, x):
        out_features = self.filters * 4 if self.bottleneck else self.filters
        shortcut = x
        if self.bottleneck:
            y = nn.relu(self.norm(name="bn1")(self._conv("conv1", self.filters, 1)(x)))
            y = nn.relu(self.norm(name="bn2")(self._conv("conv2", self.filters, 3, self.strides)(y)))
            y = self.norm(name="bn3", scale_init=nn.initializers.zeros_init())(self._conv("conv3", out_features, 1)(y))
        else:
            y = nn.relu(self.norm(name="bn1")(self._conv("conv1", self.filters, 3, self.strides)(x)))
            y = self.norm(name="bn2", scale_init=nn.initializers.zeros_init())(self._conv("conv2", self.filters, 3)(y))
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = self.norm(name="proj_bn")(self._conv("proj", out_features, 1, self.strides)(x))
        return nn.relu(y + shortcut)


class PlainResNet(nn.Module):
    """ResNet over NHWC images from plain Flax layers; float32 logits.

    Attributes:
      model: a key of `qresnet.resnet.ARCHS` ("resnet20", "resnet50", ...).
      num_classes: classifier outputs.
      width: residual-stage filter multiplier.
      dtype: compute dtype.
      conv_cls, dense_cls: layer classes (nn.Conv / nn.Dense, or injected ones).
      stem_cls: the stem's conv class (None: conv_cls).
    """

    model: str
    num_classes: int
    width: float = 1.0
    dtype: Any = jnp.float32
    conv_cls: Any = nn.Conv
    dense_cls: Any = nn.Dense
    stem_cls: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False, act_quant=None):
        """`act_quant` is accepted and ignored, so the trainer's step can call this model."""
        del act_quant
        arch = resnet.get_arch(self.model)
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        conv = functools.partial(self.conv_cls, use_bias=False, dtype=self.dtype, kernel_init=init)
        stem = functools.partial(self.stem_cls or self.conv_cls, use_bias=False, dtype=self.dtype, kernel_init=init)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        x = x.astype(self.dtype)
        if arch.cifar:
            x = nn.relu(norm(name="stem_bn")(stem(16, (3, 3), padding=((1, 1), (1, 1)), name="stem")(x)))
        else:
            x = nn.relu(norm(name="stem_bn")(stem(64, (7, 7), (2, 2), ((3, 3), (3, 3)), name="stem")(x)))
            x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for s, (n_blocks, filters) in enumerate(zip(arch.stage_sizes, resnet.stage_filters(arch, self.width))):
            for b in range(n_blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = PlainBlock(filters, strides, arch.bottleneck, conv, norm, name=f"stage{s}_block{b}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.dense_cls(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
