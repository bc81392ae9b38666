"""Learned (LSQ) activation bounds against the paper's frozen EMA maxima, for the 4-bit gap:
ResNet-20 width 1, 200 epochs, w4a4_ends8 with LSQ bounds per input channel and per tensor (the
deployable one) x 3 seeds. Compare with sweep_seeds (bf16 and w4a4_ends8, same recipe and seeds)
and sweep_seeds_deploy (w4a4_ends8_deploy).
"""

from configs import settings
from configs.cifar10 import base

SEEDS = (0, 1, 2)
BOUND_SETTINGS = ("w4a4_ends8_lsq", "w4a4_ends8_lsq_deploy")


def get_config():
    return base.get_config()


def get_sweep():
    return [{"setting": s, "quant.rules": settings.SETTINGS[s], "seed": seed} for s in BOUND_SETTINGS for seed in SEEDS]
