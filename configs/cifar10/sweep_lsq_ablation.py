"""Which learned bound costs accuracy at 4 bits? `w4a4_ends8` (max-abs weights, EMA-max inputs) against
learned step sizes for the weights only, the inputs only, and both (`w4a4_ends8_lsq`), each started at
LSQ's init; and both started at the paper's bounds (`w4a4_ends8_lsq_max`). ResNet-20 width 1, seeds 0
and 1, each fine-tuned with `sweep_mixed`'s recipe from the float run of its seed:

    qresnet sweep --config configs/cifar10/sweep_mixed_float.py --root R/float --only width1_
    qresnet sweep --config configs/cifar10/sweep_lsq_ablation.py --root R/ablation --config.init_from=R/float
"""

from configs import settings
from configs.cifar10 import sweep_mixed, sweep_mixed_float

LSQ_W = {"w_bound": "lsq"}
LSQ_A = {"a_bound": "lsq", "a_signed": False}
RULES = {
    "w4a4_ends8": settings.SETTINGS["w4a4_ends8"],
    "w4a4_ends8_lsq_weights": [("stem|head", 8, 8, LSQ_W), (".*", 4, 4, LSQ_W)],
    "w4a4_ends8_lsq_inputs": [("stem|head", 8, 8, {"a_bound": "lsq"}), (".*", 4, 4, LSQ_A)],
    "w4a4_ends8_lsq": settings.SETTINGS["w4a4_ends8_lsq"],
    "w4a4_ends8_lsq_max": settings.SETTINGS["w4a4_ends8_lsq_max"],
}


def get_config():
    return sweep_mixed.get_config()


def get_sweep():
    return [
        {"setting": s, "quant.rules": r, "model.width": 1.0, "seed": seed}
        for seed in sweep_mixed_float.SEEDS
        for s, r in RULES.items()
    ]
