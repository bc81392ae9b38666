"""Compute and memory cost of a (quantized) model, from shapes alone.

Per image, per conv/dense layer (paper.md section 2):
  MACs     = H_out * W_out * kh * kw * C_in * C_out  (conv),  C_in * C_out (dense)
  linear   = MACs * roundup_{4,8,16}(max(a_bits, w_bits))
  quadratic= MACs * a_bits * w_bits
  memory   = kernel weights * w_bits
A float operand counts as 16 bits. Ratios divide by a reference model's cost
(bf16 ResNet-50 at width 1 for ImageNet models, the paper's normalisation;
bf16 ResNet-20 at width 1 for CIFAR models; same input shape and classes).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from qresnet import resnet
from qresnet.quant.layers import QConv, QDense
from qresnet.quant.specs import QuantSpec

FLOAT_BITS = 16
COST_KEYS = ("linear", "quadratic", "memory")


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One layer's shape-derived counts and costs (per image)."""

    name: str
    macs: int
    weights: int
    w_bits: int | None
    a_bits: int | None
    linear: int
    quadratic: int
    memory: int


def linear_bits(a_bits: int | None, w_bits: int | None) -> int:
    """roundup to 4, 8 or 16 of max(a_bits, w_bits); float counts as 16."""
    b = max(a_bits or FLOAT_BITS, w_bits or FLOAT_BITS)
    return 4 if b <= 4 else 8 if b <= 8 else 16


def layer_cost(name: str, macs: int, weights: int, spec: QuantSpec | None) -> LayerCost:
    """Costs of one layer with `macs` MACs and `weights` kernel weights.

    Args:
      name: layer name.
      macs: multiply-accumulates per image.
      weights: kernel weights.
      spec: its QuantSpec, or None for float.

    Returns:
      The LayerCost.
    """
    w_bits = spec.w_bits if spec else None
    a_bits = spec.a_bits if spec else None
    bw, ba = w_bits or FLOAT_BITS, a_bits or FLOAT_BITS
    return LayerCost(
        name,
        macs,
        weights,
        w_bits,
        a_bits,
        linear=macs * linear_bits(a_bits, w_bits),
        quadratic=macs * ba * bw,
        memory=weights * bw,
    )


@functools.lru_cache(maxsize=256)
def layer_shapes(
    name: str, width: float, num_classes: int, input_shape: tuple[int, ...]
) -> tuple[tuple[str, int, int], ...]:
    """(layer, MACs, kernel weights) per conv/dense layer, traced with batch 1."""
    model = resnet.create_model(name, num_classes=num_classes, width=width)

    def init():
        return model.init(
            jax.random.key(0),
            jnp.zeros((1, *input_shape)),
            train=False,
            capture_intermediates=lambda m, _: isinstance(m, (QConv, QDense)),
        )

    variables = jax.eval_shape(init)
    paths = resnet.kernel_paths(variables["params"])
    out = []
    for lname, path in paths.items():
        kernel = _get(variables["params"], path)["kernel"].shape
        y = _get(variables["intermediates"], path)["__call__"][0].shape
        spatial = math.prod(y[1:-1])
        out.append((lname, spatial * math.prod(kernel), math.prod(kernel)))
    return tuple(out)


def _get(tree: Mapping[str, Any], path: Sequence[str]):
    for p in path:
        tree = tree[p]
    return tree


def layer_costs(
    name: str,
    *,
    width: float,
    num_classes: int,
    input_shape: Sequence[int],
    specs: Mapping[str, QuantSpec] | None = None,
) -> list[LayerCost]:
    """Per-layer costs of a model.

    Args:
      name: model name (`resnet.ARCHS`).
      width: filter multiplier.
      num_classes: classifier outputs.
      input_shape: (H, W, C) of one image.
      specs: {layer: QuantSpec}; missing layers are float.

    Returns:
      One LayerCost per conv/dense layer, in forward order.
    """
    specs = specs or {}
    shapes = layer_shapes(name, float(width), int(num_classes), tuple(int(d) for d in input_shape))
    return [layer_cost(n, macs, w, specs.get(n)) for n, macs, w in shapes]


def totals(costs: Sequence[LayerCost]) -> dict[str, int]:
    """Sums of macs, weights, linear, quadratic and memory."""
    keys = ("macs", "weights", *COST_KEYS)
    return {k: sum(getattr(c, k) for c in costs) for k in keys}


def default_reference(name: str, num_classes: int, input_shape: Sequence[int]) -> tuple[str, float, int, tuple]:
    """(model, width, classes, input shape) of the bf16 reference for a model.

    ResNet-50 at width 1 for ImageNet-family models (with 1000 classes at 224x224
    this is the paper's normalisation), ResNet-20 at width 1 for CIFAR-family
    models; both on the same input shape and classes as the model measured.
    """
    ref = "resnet20" if resnet.get_arch(name).cifar else "resnet50"
    return ref, 1.0, int(num_classes), tuple(int(d) for d in input_shape)


def mac_weighted_bits(layers: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """{"w", "a"}: each side's bits averaged over the layers weighted by their MACs (float counts as
    FLOAT_BITS): how many bits a model computes with, whatever its per-layer mix."""
    macs = sum(layer["macs"] for layer in layers)
    return {
        side: sum(layer["macs"] * (layer[f"{side}_bits"] or FLOAT_BITS) for layer in layers) / macs
        for side in ("w", "a")
    }


def ratios(total: Mapping[str, int], reference: Mapping[str, int]) -> dict[str, float]:
    """total / reference for linear, quadratic and memory."""
    return {k: total[k] / reference[k] for k in COST_KEYS}


def model_cost(
    name: str,
    *,
    width: float,
    num_classes: int,
    input_shape: Sequence[int],
    specs: Mapping[str, QuantSpec] | None = None,
    reference: tuple[str, float, int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The `qresnet cost --format json` object: layers, total and ratio.

    Args:
      name, width, num_classes, input_shape, specs: as `layer_costs`.
      reference: (model, width, classes, input shape) of the float model the
        ratios divide by; None uses `default_reference`.

    Returns:
      {"layers": [...], "total": {...}, "ratio": {...}, "reference": {...}}.
    """
    costs = layer_costs(name, width=width, num_classes=num_classes, input_shape=input_shape, specs=specs)
    ref = reference or default_reference(name, num_classes, input_shape)
    ref_total = totals(layer_costs(ref[0], width=ref[1], num_classes=ref[2], input_shape=ref[3]))
    total = totals(costs)
    return {
        "layers": [dataclasses.asdict(c) for c in costs],
        "total": total,
        "ratio": ratios(total, ref_total),
        "avg_bits": mac_weighted_bits([dataclasses.asdict(c) for c in costs]),
        "reference": {
            "model": ref[0],
            "width": ref[1],
            "num_classes": ref[2],
            "input_shape": list(ref[3]),
            "dtype": "bfloat16",
        },
    }
