"""ImageNet ResNet-50, setting w8a8."""

from configs.imagenet import base


def get_config():
    return base.get_config("w8a8")
