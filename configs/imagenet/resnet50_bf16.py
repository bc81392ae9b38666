"""ImageNet ResNet-50, setting bf16."""

from configs.imagenet import base


def get_config():
    return base.get_config("bf16")
