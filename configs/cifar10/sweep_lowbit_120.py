"""Uniform 2 bits under a twice-longer fine-tune: `sweep_lowbit_full`'s recipe (distilled from the float
run of each seed) for 120 epochs instead of 60, kernels on the full grid, at the fine-tunes' peak lr 0.04
and at 0.1 (half the from-scratch recipe's), against the bf16 control fine-tuned the same 120 epochs;
ResNet-20 width 1, seeds 0 and 1:

    qresnet sweep --config configs/cifar10/sweep_mixed_float.py --root R/float --only width1_
    qresnet sweep --config configs/cifar10/sweep_lowbit_120.py --root R/long120 --config.init_from=R/float
"""

from configs.cifar10 import sweep_lowbit_long

EPOCHS = 120
ENTRIES = ("bf16", "w2a2_ends8_full", ("w2a2_ends8_full", {"optim.base_lr": 0.1}))


def get_config():
    c = sweep_lowbit_long.get_config()
    c.optim.num_epochs = EPOCHS
    return c


def get_sweep():
    return sweep_lowbit_long.width1_runs(ENTRIES)
