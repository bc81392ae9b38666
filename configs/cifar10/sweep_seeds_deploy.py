"""The deployment settings (per-tensor activation scales, what `qresnet export` needs) x 3 seeds,
ResNet-20 width 1, 200 epochs: the same accuracy question as `sweep_seeds`, for the models users
deploy. Compare with sweep_seeds' bf16 runs (same recipe and seeds).
"""

from configs import settings
from configs.cifar10 import base

SEEDS = (0, 1, 2)
DEPLOY_SETTINGS = ("w8a8_deploy", "w4a4_ends8_deploy")


def get_config():
    return base.get_config()


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "seed": seed} for s in DEPLOY_SETTINGS for seed in SEEDS
    ]
