"""BN and activation-bound statistics over the global batch against per replica of 64, as the
paper's data-parallel training computed them: ResNet-20 width 1, bf16 and w4a4_ends8, 3 seeds, the
sweep recipe (60 epochs). docs/results.md reports the difference.

    qresnet sweep --config configs/cifar10/sweep_replicas.py --root R --jobs 6 --mps --command-buffers
"""

from configs import settings
from configs.cifar10 import sweep_paper


def get_config():
    return sweep_paper.get_config()


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.replica_size": r, "seed": seed}
        for s in ("bf16", "w4a4_ends8")
        for r in (0, 64)
        for seed in (0, 1, 2)
    ]
