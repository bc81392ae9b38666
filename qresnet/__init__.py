"""qresnet: quantization-aware training of ResNets in JAX/Flax.

Library modules: `qresnet.quant` (quantizers, QConv/QDense, per-layer rules),
`qresnet.resnet` (models and stable layer names), `qresnet.cost` (compute and
memory cost), `qresnet.pareto` (frontier and report). The experiment runner:
`qresnet.train`, `qresnet.sweep`, `qresnet.cli`.
"""

__version__ = "0.1.0"
