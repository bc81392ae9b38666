"""ResNet-50 on ImageNet with the paper's recipe (paper.md section 4)."""

import os

from configs import common


def get_config(setting: str = "bf16"):
    c = common.get_config(setting)
    c.model.name = "resnet50"
    c.dataset.name = "imagenet2012"
    c.dataset.crop_pad = 0  # ImageNet uses Inception crops instead.
    # The input that keeps a GPU's ResNet-50 fed from the CPU alone (docs/performance.md): OpenCV in all cores but
    # two, each decoding only its crop's window (nvImageCodec's libjpeg-turbo on the CPU, the [nvimgcodec] extra;
    # --config.dataset.jpeg_window=False without it).
    c.dataset.workers = max(1, (os.cpu_count() or 1) - 2)
    c.dataset.jpeg_window = True
    c.optim.batch_size = 8192  # The paper's; lr scales with it.
    c.optim.num_epochs = 250
    c.optim.base_lr = 0.1
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 5.0
    c.optim.cosine_alpha = 0.001
    c.optim.cooldown_epochs = 50.0
    # The paper quantizes activations from step 7,500 at batch 8192 (156 steps an epoch): epoch 48,
    # whatever the batch here.
    c.quant.act_start_epoch = 48.0
    c.model.replica_size = 64  # the paper's 64 images per TPU core
    c.eval_batch_size = 1024
    return c
