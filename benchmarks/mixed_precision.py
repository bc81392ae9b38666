"""The sub-4-bit and mixed-precision experiment on cifar10_jpeg, end to end (docs/results.md,
"Below 4 bits and per-layer mixes"):

    python -m benchmarks.mixed_precision --root R [--seeds 0,1] [--jobs 12 --mps --command-buffers]

1. Float ResNet-20s at each width and seed (`configs/cifar10/sweep_mixed_float.py`, R/float).
2. Unless configs/cifar10/mixed/ holds the search files: for each width, `qresnet sensitivity` of the
   seed-0 float run (learned-step-size quantizers, with each layer's measured 2-bit drop and its
   Spearman correlation, R/sensitivity_w<W>.json), then `qresnet search` on the quadratic and the
   memory axis at 4 budgets (the costs of uniform w2a2_ends8, w3a3_ends8 and w4a4_ends8 at that
   width, and the midpoint of the last two) and, at width 1, 3 random draws a quadratic budget, into
   configs/cifar10/mixed/.
3. `configs/cifar10/sweep_mixed.py` for each seed (R/mixed_seed<S>), every run fine-tuned from its
   float run; first the width-1 runs of the uniform settings and the quadratic searches of every
   seed (`--first`), which answer the accuracy and search questions, then the rest.
4. `qresnet pareto` over the mixed roots (quadratic axis first, all three drawn) into R/pareto.

Every step is a qresnet command on a workdir, so running the same command again resumes.
Arguments other than these go to every `qresnet sweep` (e.g. --jobs 12 --mps --command-buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT / "configs/cifar10"
MIXED = CIFAR / "mixed"
UNIFORM_BUDGETS = ("w2a2_ends8", "w3a3_ends8", "w4a4_ends8")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qresnet.cli", *args]


def qresnet(*args: str) -> None:
    cmd = _command(*args)
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def budgets(sens_path: Path, cost_key: str) -> str:
    """The uniform settings' costs at the sensitivity run's width, and the w3/w4 midpoint."""
    import ml_collections

    from configs import settings
    from qresnet import search

    config = ml_collections.ConfigDict(json.loads(sens_path.read_text())["config"])
    found = dict(search.parse_budgets(",".join(UNIFORM_BUDGETS), config, cost_key, settings.SETTINGS))
    mid = (found["w3a3_ends8"] + found["w4a4_ends8"]) / 2
    return ",".join([*UNIFORM_BUDGETS[:2], f"{mid:.5g}", UNIFORM_BUDGETS[2]])


def write_searches(root: Path, float_root: Path) -> list[dict]:
    """Sensitivity and search files for every width (step 2); [{width, seconds, spearman}]."""
    from configs.cifar10 import sweep_mixed_float
    from qresnet import run_spec

    MIXED.mkdir(exist_ok=True)
    sens_of = {w: root / f"sensitivity_w{w:g}.json" for w in sweep_mixed_float.WIDTHS}
    t0 = time.perf_counter()
    # One process a width, side by side: each is mostly compiles and small batches.
    procs = [
        subprocess.Popen(
            _command(
                "sensitivity",
                "--workdir",
                run_spec.resolve_init_from(str(float_root), "resnet20", float(w), "cifar10_jpeg", 0),
                *("--bits", "2,3,4,8", "--measure-bits", "2", "--out", str(sens)),
            ),
            env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},  # three share the device
        )
        for w, sens in sens_of.items()
        if not sens.exists()
    ]
    if any([p.wait() for p in procs]):
        raise SystemExit("a sensitivity run failed (its output is above)")
    rows = []
    for width, sens in sens_of.items():
        t1 = time.perf_counter()
        kinds = [("searched_quadratic", "quadratic", []), ("searched_memory", "memory", [])]
        if width == max(sweep_mixed_float.WIDTHS):
            kinds.append(("random_quadratic", "quadratic", ["--random", "3"]))
        for kind, cost_key, extra in kinds:
            out = MIXED / f"{kind}_w{width:g}.py"
            if not out.exists():
                b = budgets(sens, cost_key)
                qresnet(
                    "search", "--sensitivity", str(sens), "--cost", cost_key, "--budgets", b, *extra, "--out", str(out)
                )
        obj = json.loads(sens.read_text())
        rows.append(
            {
                "width": width,
                "sensitivity_s": obj["seconds"],
                "searches_s": round(time.perf_counter() - t1, 2),
                "wall_s": round(time.perf_counter() - t0, 2),
                "spearman": obj.get("spearman"),
                "float_top1": obj.get("measured", {}).get("top1"),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--seeds", default="0,1")
    p.add_argument(
        "--first",
        default="^(?!searched-memory|random).*width1$",
        help="train the mixed runs this regex matches for every seed before the others ('' = in one pass)",
    )
    ns, sweep_args = p.parse_known_args(argv)
    root, seeds = ns.root.resolve(), [int(s) for s in ns.seeds.split(",")]
    root.mkdir(parents=True, exist_ok=True)
    float_root = root / "float"
    qresnet("sweep", "--config", str(CIFAR / "sweep_mixed_float.py"), "--root", str(float_root), *sweep_args)
    if not any(MIXED.glob("*.py")):
        rows = write_searches(root, float_root)
        print(json.dumps({"searches": rows}), flush=True)
    init = f"--config.init_from={float_root}"
    mixed = [root / f"mixed_seed{s}" for s in seeds]
    passes = [["--only", ns.first], []] if ns.first else [[]]
    for only in passes:  # a finished run is skipped, so the second pass trains the rest
        for seed, r in zip(seeds, mixed):
            qresnet(
                "sweep",
                "--config",
                str(CIFAR / "sweep_mixed.py"),
                "--root",
                str(r),
                init,
                f"--config.seed={seed}",
                *only,
                *sweep_args,
            )
    qresnet(
        "pareto", *[a for r in mixed for a in ("--root", str(r))], "--cost", "quadratic", "--out", str(root / "pareto")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
