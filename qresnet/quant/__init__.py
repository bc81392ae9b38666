"""qresnet.quant: quantizers, quantized layers and per-layer rules."""

from qresnet.quant.int_layers import IntConv, IntDense
from qresnet.quant.layers import ConvBackend, QConv, QDense
from qresnet.quant.ops import (
    batch_max_abs,
    ema_max_update,
    fake_quant,
    fake_quant_signed,
    fake_quant_unsigned,
    fake_quant_weight,
    int_codes,
    int_range,
    lsq_fake_quant,
    lsq_init_bound,
    weight_bound,
)
from qresnet.quant.specs import (
    FLOAT,
    QuantRule,
    QuantSpec,
    SpecError,
    make_rule,
    resolve_specs,
    specs_from_json,
    specs_to_json,
)

__all__ = [
    "FLOAT",
    "ConvBackend",
    "IntConv",
    "IntDense",
    "QConv",
    "QDense",
    "QuantRule",
    "QuantSpec",
    "SpecError",
    "batch_max_abs",
    "ema_max_update",
    "fake_quant",
    "fake_quant_signed",
    "fake_quant_unsigned",
    "fake_quant_weight",
    "int_codes",
    "int_range",
    "lsq_fake_quant",
    "lsq_init_bound",
    "make_rule",
    "resolve_specs",
    "specs_from_json",
    "specs_to_json",
    "weight_bound",
]
