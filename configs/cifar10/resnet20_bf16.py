"""CIFAR ResNet-20, setting bf16."""

from configs.cifar10 import base


def get_config():
    return base.get_config("bf16")
