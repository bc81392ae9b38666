"""Below 4 bits at width 1, and learned step sizes (LSQ) against the paper's bounds at 4 bits:
fine-tuned 30 epochs from a 60-epoch float ResNet-20 (`sweep_mixed_float`) with distillation from
it (peak lr 0.04, bounds calibrated for 1 epoch, then every quantizer on), 2 seeds, each from the
float run of its own seed in the float root:

    qresnet sweep --config configs/cifar10/sweep_lowbit.py --root R/lowbit --config.init_from=R/float

bf16 is the control (the same extra epochs, distilled from itself); w4a4_ends8 uses the paper's
max-abs weights and EMA-max input bounds, w4a4_ends8_lsq learned step sizes for both.
"""

from configs import settings
from configs.cifar10 import base

SETTINGS = ("bf16", "w4a4_ends8", "w4a4_ends8_lsq", "w3a3_ends8", "w2a2_ends8")
SEEDS = (0, 1)


def finetune(c, epochs: int):
    """The fine-tuning recipe: `epochs` from init_from, distilled from it."""
    c.optim.num_epochs = epochs
    c.optim.base_lr = 0.04
    c.optim.warmup_epochs = 1.0
    c.quant.act_start_epoch = 1.0
    c.distill.weight = 1.0
    return c


def get_config():
    return finetune(base.get_config(), 30)


def get_sweep():
    return [{"setting": s, "quant.rules": settings.SETTINGS[s], "seed": seed} for s in SETTINGS for seed in SEEDS]
