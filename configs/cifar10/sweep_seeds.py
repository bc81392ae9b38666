"""The accuracy of each setting with seeds: ResNet-20 width 1, 200 epochs, the four paper settings x 3 seeds.

One run of each setting differs from the next by about 0.002 top-1 on the GPU (docs/results.md),
as much as the targets' tolerances, so the targets are judged on the mean of several seeds:
`qresnet pareto --root ROOT --out ROOT/pareto` writes the per-setting mean, std and difference
to float in report.md.
"""

from configs import settings
from configs.cifar10 import base

SEEDS = (0, 1, 2)


def get_config():
    return base.get_config()


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "seed": seed}
        for s in settings.PAPER_SETTINGS
        for seed in SEEDS
    ]
