"""The Ray backend's overhead against the local scheduler: one sweep, both backends, side by side.

    python -m benchmarks.sweep_backends [--config configs/smoke_sweep.py] [--repeats 2] [--out F.jsonl]

Runs the same sweep into fresh roots with `--backend local` and `--backend ray`, alternately,
`repeats` times each, one run at a time on both (the local scheduler on a host without GPUs runs
one; the Ray cluster is started here with one CPU), so that only the scheduling differs. The
cluster is started before the clock starts, as a cluster users join is already up; the time it
took is reported apart. Prints and appends one row: each backend's median wall time and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qresnet import results, sweep

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_backends", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/smoke_sweep.py"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="append the row to this JSONL file")
    args = p.parse_args(argv)
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    cluster_s = time.perf_counter() - t0
    walls = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for backend in walls:
                t0 = time.perf_counter()
                code = sweep.run_sweep(args.config, f"{tmp}/{backend}{i}", backend=backend)
                walls[backend].append(time.perf_counter() - t0)
                if code:
                    raise SystemExit(f"the {backend} sweep failed ({code})")
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in walls.items()}
    row = {
        "config": args.config,
        "runs": len(sweep.expand(args.config)),
        "local_s": [round(w, 2) for w in walls["local"]],
        "ray_s": [round(w, 2) for w in walls["ray"]],
        "ray_vs_local": med["ray"] / med["local"],
        "ray_cluster_start_s": round(cluster_s, 2),
        "ray": ray.__version__,
        **results.provenance(),
        "command": "python -m benchmarks.sweep_backends " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
