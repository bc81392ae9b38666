"""Fine-tuning with knowledge distillation, for the 4-bit gap: `sweep_finetune`'s recipe
(60 epochs from a trained 200-epoch float ResNet-20), the float run also the teacher. w4a4_ends8
with distillation weights 0.5 and 1 (temperature 1) x 2 seeds. Name the float run on the command line:

    qresnet train --config configs/cifar10/resnet20_bf16.py --workdir R/float
    qresnet sweep --config configs/cifar10/sweep_distill.py --root R/distill --config.init_from=R/float
"""

from configs import settings
from configs.cifar10 import sweep_finetune

WEIGHTS = (0.5, 1.0)
SEEDS = (0, 1)


def get_config():
    return sweep_finetune.get_config()


def get_sweep():
    rules = settings.SETTINGS["w4a4_ends8"]
    return [
        {"setting": "w4a4_ends8", "quant.rules": rules, "distill.weight": w, "seed": seed}
        for w in WEIGHTS
        for seed in SEEDS
    ]
