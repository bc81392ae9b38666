"""Where a run's learned (LSQ) bounds ended: for weights and inputs, how many bounds there are, how
many a large step pushed to the floor that keeps them positive (`quant.ops.positive_bound`: without
it those channels would quantize to 0 for good), and the learned bound over its start (median and
range):

    python -m benchmarks.lsq_bounds --workdir RUN [--workdir RUN2 ...] [--out F.jsonl]
"""

from __future__ import annotations

import argparse

import flax
import jax
import numpy as np

from benchmarks import record
from qresnet import checkpoints, results, run_spec
from qresnet.quant import ops


def bound_stats(workdir) -> dict:
    config = checkpoints.run_config(workdir)
    state = checkpoints.restore_final(run_spec.finished_run_spec(config), workdir)
    params = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(state.params)))
    stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(state.variables()["quant_stats"])))
    out = {"workdir": str(workdir), "setting": config.setting, "seed": int(config.seed)}
    for side, name in (("w", "kernel_bound"), ("a", "act_bound")):
        ratios, floored = [], 0
        for path, start in stats.items():
            offset = params.get((*path[:-1], f"{name}_offset"))
            if path[-1] != name or offset is None:
                continue
            start = np.asarray(start, np.float32)
            floored += int(np.sum(start + offset <= ops.LSQ_MIN_FRACTION * start))
            bound = np.asarray(ops.learned_bound(start, offset))
            ratios.append((bound / np.maximum(start, ops.LSQ_MIN_BOUND)).ravel())
        if ratios:
            r = np.concatenate(ratios)
            out[side] = {
                "bounds": int(r.size),
                "at_floor": floored,
                "median_ratio": float(np.median(r)),
                "min_ratio": float(r.min()),
                "max_ratio": float(r.max()),
            }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", action="append", required=True)
    p.add_argument("--out", help="append each row to this JSONL file")
    ns = p.parse_args(argv)
    rows = []
    for w in ns.workdir:
        record(rows, {"benchmark": "lsq_bounds", **bound_stats(w), **results.provenance()}, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
