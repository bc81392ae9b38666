"""CIFAR ResNet-20, setting w4a4_ends8_fused: as resnet20_w8a8_fused.py (BN folded, fine-tuned from a
float run), 4-bit inside, 8-bit stem and head. Name the float run on the command line:

    qresnet train --config configs/cifar10/resnet20_w4a4_ends8_fused.py --workdir R/w4a4_ends8_fused \
        --config.init_from=R/float
"""

from configs.cifar10 import resnet20_w8a8_fused


def get_config():
    return resnet20_w8a8_fused.get_config("w4a4_ends8_fused")
