"""The README's main job: a small real sweep that finishes on 2 CPU cores.

Fashion-MNIST, a narrow ResNet-20 on a 4,000-image subset for 3 epochs, at 3
widths x 3 settings. Small, but real data and real training; on a GPU it takes
seconds. For the paper-sized sweep see configs/cifar10/sweep_paper.py.
"""

from configs import settings
from configs.fashion_mnist import base

WIDTHS = (0.25, 0.5, 1.0)


def get_config():
  c = base.get_config()
  c.model.dtype = "float32"  # bfloat16 is slow on CPUs.
  c.dataset.train_subset = 4000
  c.dataset.test_subset = 2000
  c.optim.num_epochs = 3
  c.optim.batch_size = 128
  c.optim.warmup_epochs = 0.5
  c.quant.act_start_frac = 0.34
  c.checkpoint_every_epochs = 1
  c.smoothing_window = 1
  return c


def get_sweep():
  return [
      {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": w}
      for s in ("bf16", "w8a8", "w4a4_ends8")
      for w in WIDTHS
  ]
