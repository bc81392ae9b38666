"""A slice of the paper's sweep (2 settings x 3 widths, 20 epochs) for measuring run packing on one GPU."""

from configs import settings
from configs.cifar10 import base


def get_config():
    c = base.get_config()
    c.optim.num_epochs = 20
    return c


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": w}
        for s in ("bf16", "w4a4_ends8")
        for w in (0.5, 1.0, 2.0)
    ]
