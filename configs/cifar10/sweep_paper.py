"""The paper's sweep on cifar10_jpeg: 4 settings x 9 widths, 60 epochs each."""

from configs import settings
from configs.cifar10 import base

WIDTHS = (0.5, 0.62, 0.75, 0.87, 1.0, 1.25, 1.5, 1.75, 2.0)


def get_config():
    c = base.get_config()
    c.optim.num_epochs = 60
    return c


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": w}
        for s in settings.PAPER_SETTINGS
        for w in WIDTHS
    ]
