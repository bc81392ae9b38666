"""When should 4-bit activation quantization start? For the 4-bit gap: w4a4_ends8
(ResNet-20 width 1, 200 epochs) with activation quantization from 10% and from 50% of training
x 3 seeds; the recipe's default, 20%, is `sweep_seeds`' w4a4_ends8 (same seeds).
"""

from configs import settings
from configs.cifar10 import base

SEEDS = (0, 1, 2)
STARTS = (0.1, 0.5)


def get_config():
    return base.get_config()


def get_sweep():
    rules = settings.SETTINGS["w4a4_ends8"]
    return [
        {"setting": "w4a4_ends8", "quant.rules": rules, "quant.act_start_frac": f, "seed": seed}
        for f in STARTS
        for seed in SEEDS
    ]
