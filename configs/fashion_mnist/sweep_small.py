"""The README's main job: a small real sweep that finishes on 2 CPU cores.

Fashion-MNIST (real data), a narrow ResNet-8 trained for 200 steps of 64 images
on a 6,400-image subset, at 3 widths x 3 settings: small enough for a CPU, big
enough to reach 69-78% top-1 and to show the cost-accuracy trade-off. On a GPU it takes
about a minute, mostly process start-up and XLA compilation (docs/performance.md). For the
paper-sized sweep see configs/cifar10/sweep_paper.py.
"""

from configs import settings
from configs.fashion_mnist import base

WIDTHS = (0.125, 0.25, 0.5)


def get_config():
    c = base.get_config()
    c.model.name = "resnet8"
    c.model.dtype = "float32"  # bfloat16 is slow on CPUs.
    c.dataset.train_subset = 6400
    c.dataset.test_subset = 1000
    c.dataset.crop_pad = 0  # No augmentation: 200 steps are too few to need it.
    c.dataset.flip = False
    c.optim.num_epochs = 2
    c.optim.batch_size = 64
    c.optim.base_lr = 1.6  # Peak lr 0.4 at batch 64.
    c.optim.warmup_epochs = 0.25
    c.quant.act_start_frac = 0.5
    c.checkpoint_every_epochs = 1
    c.smoothing_window = 1
    return c


def get_sweep():
    return [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": w}
        for s in ("bf16", "w8a8", "w4a4_ends8")
        for w in WIDTHS
    ]
