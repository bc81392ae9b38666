"""Is the frontier still mostly 4-bit when 3-bit, 2-bit and per-layer mixes are candidates?

ResNet-20 at widths 0.5, 0.75 and 1, each run fine-tuned 10 epochs from the float run of its width
and seed (`sweep_mixed_float`, the float root on the command line) with distillation from it: peak
lr 0.04, 1 epoch of warm-up, bounds calibrated for 1 epoch, then every quantizer on; learned step
sizes (LSQ) in every quantized layer except the paper's `w4a4_ends8` at width 1 (its max-abs and
EMA-max bounds, against `w4a4_ends8_lsq`):
- uniform: bf16 (the control: the same extra epochs, distilled from itself), w8a8_lsq,
  w4a4_ends8_lsq, w3a3_ends8, w2a2_ends8;
- per-layer allocations `qresnet search` wrote into configs/cifar10/mixed/ (searched on the
  quadratic and memory axes at 4 budgets for each width, 3 random draws a quadratic budget at
  width 1), each from the seed-0 float run of its width (`benchmarks/mixed_precision.py` makes them).

    qresnet sweep --config configs/cifar10/sweep_mixed.py --root R/mixed_seed0 --config.seed=0 \\
        --config.init_from=R/float
"""

import importlib.util
from pathlib import Path

from configs import settings
from configs.cifar10 import base, sweep_mixed_float

UNIFORM = ("bf16", "w8a8_lsq", "w4a4_ends8_lsq", "w3a3_ends8", "w2a2_ends8")
SEARCHED = Path(__file__).parent / "mixed"
EPOCHS = 10


def get_config():
    c = base.get_config()
    c.optim.num_epochs = EPOCHS
    c.optim.base_lr = 0.04
    c.optim.warmup_epochs = 1.0
    c.quant.act_start_epoch = 1.0
    c.distill.weight = 1.0
    return c


def searched_entries():
    """The entries of every search file in mixed/, each with its width."""
    out = []
    for path in sorted(SEARCHED.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"mixed_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        width = module.CONFIG["model"]["width"]
        out += [{**e, "model.width": width} for e in module.get_sweep()]
    return out


def get_sweep():
    uniform = [
        {"setting": s, "quant.rules": settings.SETTINGS[s], "model.width": w}
        for w in sweep_mixed_float.WIDTHS
        for s in UNIFORM
    ]
    paper = [{"setting": "w4a4_ends8", "quant.rules": settings.SETTINGS["w4a4_ends8"], "model.width": 1.0}]
    return uniform + paper + searched_entries()
