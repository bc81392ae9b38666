"""ImageNet ResNet-50, setting w4a4_ends8."""

from configs.imagenet import base


def get_config():
    return base.get_config("w4a4_ends8")
