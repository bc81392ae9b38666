"""CIFAR ResNet-20, setting w8a8_fused_pow2: as resnet20_w8a8_fused.py, with power-of-two scales and biases on
their products' grids, so that cuDNN's fused int8 convs give the fake-quant model's codes to the bit. Name the
float run on the command line:

    qresnet train --config configs/cifar10/resnet20_w8a8_fused_pow2.py --workdir R/w8a8_fused_pow2 \
        --config.init_from=R/float
"""

from configs.cifar10 import resnet20_w8a8_fused


def get_config():
    return resnet20_w8a8_fused.get_config("w8a8_fused_pow2")
