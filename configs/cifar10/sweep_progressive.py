"""Progressive fine-tuning, float -> 4 -> 3 -> 2 bits (APoT's recipe for 2 bits): each stage starts from
the last stage's run of its seed and learns from the float run the chain started from (`distill`), 20
epochs a stage (60 in all, as `sweep_lowbit_full`'s direct fine-tunes), kernels on the full grid and
learned step sizes; ResNet-20 width 1, seeds 0 and 1:

    qresnet sweep --config configs/cifar10/sweep_mixed_float.py --root R/float --only width1_
    qresnet sweep --config configs/cifar10/sweep_progressive.py --root R/p4 --only w4a4 --config.init_from=R/float
    qresnet sweep --config configs/cifar10/sweep_progressive.py --root R/p3 --only w3a3 --config.init_from=R/p4
    qresnet sweep --config configs/cifar10/sweep_progressive.py --root R/p2 --only w2a2 --config.init_from=R/p3
"""

from configs.cifar10 import sweep_lowbit_long

EPOCHS = 20
STAGES = ("w4a4_ends8_full", "w3a3_ends8_full", "w2a2_ends8_full")


def get_config():
    c = sweep_lowbit_long.get_config()
    c.optim.num_epochs = EPOCHS
    return c


def get_sweep():
    return sweep_lowbit_long.width1_runs(STAGES)
