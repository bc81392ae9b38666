"""ResNet-20 with a 1-channel stem on Fashion-MNIST (Debian's files offline)."""

from configs import common


def get_config(setting: str = "bf16"):
    c = common.get_config(setting)
    c.dataset.name = "fashion_mnist"
    c.dataset.flip = True
    c.optim.num_epochs = 60
    return c
