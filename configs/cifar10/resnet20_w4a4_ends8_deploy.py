"""CIFAR ResNet-20, setting w4a4_ends8_deploy: per-tensor activation scales, for integer export."""

from configs.cifar10 import base


def get_config():
    return base.get_config("w4a4_ends8_deploy")
