"""CIFAR ResNet-20, setting w8a8."""

from configs.cifar10 import base


def get_config():
    return base.get_config("w8a8")
