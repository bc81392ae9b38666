"""CIFAR ResNet-20, setting w8a8_fused, BN folded (model.fold_bn): for fused integer deployment
(`qresnet export` then int8 codes from conv to conv, qresnet/fused.py). Fine-tuned from a float
run with BN, whose BN is folded in: 30 epochs, peak learning rate 0.001 (0.02 diverges within the
first epoch: without BN the folded weights need far smaller steps), activation bounds calibrated
for 2 epochs first. Name the float run on the command line:

    qresnet train --config configs/cifar10/resnet20_w8a8_fused.py --workdir R/w8a8_fused \
        --config.init_from=R/float
"""

from configs.cifar10 import base


def get_config(setting: str = "w8a8_fused"):
    c = base.get_config(setting)
    c.model.fold_bn = True
    c.optim.num_epochs = 30
    c.optim.base_lr = 0.001
    c.optim.warmup_epochs = 1.0
    c.quant.act_start_frac = 2 / 30
    return c
