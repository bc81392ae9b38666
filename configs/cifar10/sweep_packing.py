"""A slice of the paper's sweep (2 settings x 3 widths, 20 epochs) for measuring run packing on one GPU."""

from configs.cifar10 import sweep_paper


def get_config():
    c = sweep_paper.get_config()
    c.optim.num_epochs = 20
    return c


def get_sweep():
    return [
        e
        for e in sweep_paper.get_sweep()
        if e["setting"] in ("bf16", "w4a4_ends8") and e["model.width"] in (0.5, 1.0, 2.0)
    ]
