"""Is the frontier still mostly 4-bit when 3-bit, 2-bit and per-layer mixes are candidates?

ResNet-20 at widths 0.5, 0.75 and 1, each fine-tuned 15 epochs from its float run (`sweep_mixed_float`,
the float root on the command line) with distillation from it, learned step sizes (LSQ) in every
quantized layer:
- uniform: bf16 (the control), w8a8_lsq, w4a4_ends8_lsq, w3a3_ends8, w2a2_ends8;
- per-layer allocations `qresnet search` wrote into configs/cifar10/mixed/ (searched on the
  quadratic and memory axes at 4 budgets, and 3 random draws a quadratic budget), each file from
  the seed-0 float run of one width (`benchmarks/mixed_precision.py` makes them).

    qresnet sweep --config configs/cifar10/sweep_mixed.py --root R/mixed_seed0 --config.seed=0 \\
        --config.init_from=R/float
"""

import importlib.util
from pathlib import Path

from configs import settings
from configs.cifar10 import base, sweep_lowbit, sweep_mixed_float

UNIFORM = ("bf16", "w8a8_lsq", "w4a4_ends8_lsq", "w3a3_ends8", "w2a2_ends8")
SEARCHED = Path(__file__).parent / "mixed"


def get_config():
    return sweep_lowbit.finetune(base.get_config(), 15)


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
    return uniform + searched_entries()
