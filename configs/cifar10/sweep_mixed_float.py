"""The float runs the sub-4-bit and mixed-precision experiment starts from: ResNet-20 at the widths
of `sweep_mixed`, 40 epochs from scratch (the paper sweep's recipe, shortened), 2 seeds; fine-tuning sweeps name
this root (--config.init_from=R/float) and each run starts from the float run of its width and seed:

    qresnet sweep --config configs/cifar10/sweep_mixed_float.py --root R/float
"""

from configs.cifar10 import base

WIDTHS = (0.5, 0.75, 1.0)
SEEDS = (0, 1)


def get_config():
    c = base.get_config()
    c.optim.num_epochs = 40
    return c


def get_sweep():
    return [{"setting": "bf16", "model.width": w, "seed": s} for w in WIDTHS for s in SEEDS]
