"""Quantization-aware fine-tuning from a trained float model, for the 4-bit gap (the
paper trains quantized models from scratch). Each run starts from the weights and BN statistics
of a finished 200-epoch float ResNet-20 (width 1) and trains 60 more epochs: peak learning rate
0.04 (a fifth of training from scratch), 1 epoch of warm-up, cosine to 0, activation bounds
calibrated on the trained weights for 3 epochs before activation quantization starts. Settings:
w4a4_ends8, its deployable per-tensor form and the paper's w8a8 x 3 seeds, and bf16 fine-tuned
the same way (is a gain the extra epochs?). Name the float run to start from on the command line:

    qresnet train --config configs/cifar10/resnet20_bf16.py --workdir R/float
    qresnet sweep --config configs/cifar10/sweep_finetune.py --root R/finetune --config.init_from=R/float
"""

from configs import settings
from configs.cifar10 import base

SEEDS = (0, 1, 2)


def get_config():
    c = base.get_config()
    c.optim.num_epochs = 60
    c.optim.base_lr = 0.04
    c.optim.warmup_epochs = 1.0
    c.quant.act_start_frac = 0.05  # epoch 3 of 60
    return c


def get_sweep():
    runs = [{"setting": "bf16", "quant.rules": settings.SETTINGS["bf16"], "seed": 0}]
    for s in ("w4a4_ends8", "w4a4_ends8_deploy", "w8a8"):
        runs += [{"setting": s, "quant.rules": settings.SETTINGS[s], "seed": seed} for seed in SEEDS]
    return runs
