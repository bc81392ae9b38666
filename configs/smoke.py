"""A tiny model on generated data, a few steps: for tests, CI and first runs (CPU seconds)."""

from configs import common


def get_config():
    c = common.get_config("w4a4_ends8")
    # The smallest CIFAR ResNet (6n+2, n=1): every kind of layer (stem, blocks with identity and projection
    # shortcuts, head) with under half of ResNet-20's layers, so that tracing and compiling, most of a run
    # here, cost less.
    c.model.name = "resnet8"
    c.model.width = 0.25
    c.model.dtype = "float32"
    c.dataset.name = "synthetic"
    c.dataset.synthetic_train = 64
    c.dataset.synthetic_test = 32
    c.optim.batch_size = 16
    c.optim.num_epochs = 2
    c.optim.warmup_epochs = 0.5
    c.eval_batch_size = 16
    c.checkpoint_every_epochs = 1
    c.quant.act_start_frac = 0.5
    return c
