"""The paper's ImageNet sweep: 4 settings x 9 widths of ResNet-50."""

from configs import settings
from configs.imagenet import base

WIDTHS = (0.5, 0.62, 0.75, 0.87, 1.0, 1.25, 1.5, 1.75, 2.0)


def get_config():
    return base.get_config()


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": w}
        for s in settings.PAPER_SETTINGS
        for w in WIDTHS
    ]
