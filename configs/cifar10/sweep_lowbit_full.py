"""Kernels on the full two's-complement grid (LSQ's: four levels at 2 bits where the symmetric grid is
ternary), against the symmetric grid and the bf16 control, under `sweep_lowbit_long`'s recipe at 60
epochs (distilled from each seed's float run); the 2-bit full grid also at LSQ's lower weight decay for
2 bits (a quarter of the 4-bit one):

    qresnet sweep --config configs/cifar10/sweep_mixed_float.py --root R/float --only width1_
    qresnet sweep --config configs/cifar10/sweep_lowbit_full.py --root R/full --config.init_from=R/float
"""

from configs.cifar10 import sweep_lowbit_long

EPOCHS = 60
SETTINGS = ("bf16", "w2a2_ends8", "w2a2_ends8_full", "w3a3_ends8_full", "w3a3_ends8_full_max", "w2a2_ends8_full_amax")
LOW_DECAY = {"w2a2_ends8_full": 1.25e-4}


def get_config():
    c = sweep_lowbit_long.get_config()
    c.optim.num_epochs = EPOCHS
    return c


def get_sweep():
    return sweep_lowbit_long.width1_runs([*SETTINGS, *((s, {"optim.weight_decay": wd}) for s, wd in LOW_DECAY.items())])
