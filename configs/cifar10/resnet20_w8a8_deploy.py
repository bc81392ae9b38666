"""CIFAR ResNet-20, setting w8a8_deploy: per-tensor activation scales, for integer export."""

from configs.cifar10 import base


def get_config():
    return base.get_config("w8a8_deploy")
