"""Fashion-MNIST ResNet-20, setting w4a4_ends8."""

from configs.fashion_mnist import base


def get_config():
    return base.get_config("w4a4_ends8")
