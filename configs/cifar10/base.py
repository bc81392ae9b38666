"""CIFAR ResNet-20 on cifar10_jpeg: 200 epochs, batch 256, SGD Nesterov, cosine."""

from configs import common


def get_config(setting: str = "bf16"):
    c = common.get_config(setting)
    c.model.name = "resnet20"
    c.dataset.name = "cifar10_jpeg"
    return c
