r"""Uniform 3 and 2 bits fine-tuned 240 epochs from the paper's 200-epoch float runs (not the 40-epoch
ones of the other low-bit sweeps), against the bf16 control fine-tuned the same 240 epochs:
`sweep_lowbit_120`'s recipe (distilled from the float run of each seed, peak lr 0.04), kernels on the
full grid, the best 3-bit and 2-bit settings, and 2 bits again at APoT's 2-bit weight decay (3e-5
instead of 5e-4, against decay pulling low-bit kernels into the zero bin), with APoT's kernel gradient
beyond the bound (`w2a2_ends8_full_pass`), and with that and APoT's standardized kernels as well
(`w2a2_ends8_full_pass_std`); ResNet-20 width 1, seeds 0, 1 and 2:

    qresnet sweep --config configs/cifar10/sweep_seeds.py --root R/float --only '^bf16_'
    qresnet sweep --config configs/cifar10/sweep_lowbit_240.py --root R/l240 --config.init_from=R/float \
        --only '^(bf16|w2a2-ends8-full)_width1_seed'

A second stage at 2 bits from the 3-bit runs (a root that holds only them, so that each 2-bit run
starts from the 3-bit run of its seed; distilled still from the float run the chain starts at):

    qresnet sweep --config configs/cifar10/sweep_lowbit_240.py --root R/w3 --config.init_from=R/float --only '^w3a3'
    qresnet sweep --config configs/cifar10/sweep_lowbit_240.py --root R/p2 --config.init_from=R/w3 \
        --only '^w2a2-ends8-full_width1_seed'

(`--only weight_decay` or `--only pass` instead, for the second stage of the other 2-bit variants; `pass`
matches both APoT variants.)
"""

from configs.cifar10 import sweep_lowbit_120, sweep_lowbit_long, sweep_seeds

EPOCHS = 240
ENTRIES = (
    "bf16",
    "w2a2_ends8_full",
    "w3a3_ends8_full_max",
    ("w2a2_ends8_full", {"optim.weight_decay": 3e-5}),
    "w2a2_ends8_full_pass",
    "w2a2_ends8_full_pass_std",
)


def get_config():
    c = sweep_lowbit_120.get_config()
    c.optim.num_epochs = EPOCHS
    return c


def get_sweep():
    return sweep_lowbit_long.width1_runs(ENTRIES, sweep_seeds.SEEDS)
