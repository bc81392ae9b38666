"""Uniform 4, 3 and 2 bits under a longer fine-tune: `sweep_mixed`'s recipe (distilled from the float
run of each seed, 1 epoch of calibration) for 30 epochs instead of 10, ResNet-20 width 1, seeds 0 and 1,
with the bf16 control fine-tuned the same; learned bounds started at LSQ's init, at the paper's
bounds (the `_max` settings), and inputs at the paper's bound with weights at LSQ's init (`_amax`):

    qresnet sweep --config configs/cifar10/sweep_mixed_float.py --root R/float --only width1_
    qresnet sweep --config configs/cifar10/sweep_lowbit_long.py --root R/long --config.init_from=R/float
"""

from configs import settings
from configs.cifar10 import sweep_mixed, sweep_mixed_float

EPOCHS = 30
SETTINGS = (
    "bf16",
    "w4a4_ends8",
    "w4a4_ends8_lsq",
    "w4a4_ends8_lsq_max",
    "w3a3_ends8",
    "w3a3_ends8_max",
    "w2a2_ends8",
    "w2a2_ends8_max",
    "w3a3_ends8_amax",
    "w2a2_ends8_amax",
)


def get_config():
    c = sweep_mixed.get_config()
    c.optim.num_epochs = EPOCHS
    return c


def width1_runs(entries, seeds=sweep_mixed_float.SEEDS):
    """Sweep entries of ResNet-20 width 1 for every seed: each entry a setting name, or (setting,
    {override: value}) for a variant of it (the low-bit sweeps that build on this recipe use it too)."""
    pairs = [(e, {}) if isinstance(e, str) else e for e in entries]
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": 1.0, "seed": seed, **extra}
        for seed in seeds
        for s, extra in pairs
    ]


def get_sweep():
    return width1_runs(SETTINGS)
