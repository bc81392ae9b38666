"""Fashion-MNIST ResNet-20, setting bf16."""

from configs.fashion_mnist import base


def get_config():
    return base.get_config("bf16")
