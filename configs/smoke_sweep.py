"""A two-run sweep of the smoke config, for tests and CI (CPU seconds)."""

from configs import settings, smoke


def get_config():
    c = smoke.get_config()
    c.optim.num_epochs = 1
    return c


def get_sweep():
    return [{"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": 0.25} for s in ("bf16", "w4a4_ends8")]
