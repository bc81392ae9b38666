"""CIFAR ResNet-20, setting w4a4_ends8_fused_pow2: as resnet20_w4a4_ends8_fused.py, with power-of-two scales and
biases on their products' grids (the convs that cuDNN fuses, the projections, then give the fake-quant codes to the
bit). Name the float run on the command line:

    qresnet train --config configs/cifar10/resnet20_w4a4_ends8_fused_pow2.py --workdir R/w4a4_ends8_fused_pow2 \
        --config.init_from=R/float
"""

from configs.cifar10 import resnet20_w8a8_fused


def get_config():
    return resnet20_w8a8_fused.get_config("w4a4_ends8_fused_pow2")
