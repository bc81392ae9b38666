"""Where a run's learned (LSQ) bounds ended: for weights and inputs, how many bounds there are, how
many a large step pushed to the floor that keeps them positive (`quant.ops.positive_bound`: without
it those channels would quantize to 0 for good), and the learned bound over its start (median and
range); and for kernels, the share of weights beyond their grid's range, which a clipped
straight-through gradient (`QuantSpec.w_ste="clipped"`, LSQ's) leaves to weight decay alone:

    python -m benchmarks.lsq_bounds --workdir RUN [--workdir RUN2 ...] [--out F.jsonl]
"""

from __future__ import annotations

import argparse

import flax
import jax
import numpy as np

from benchmarks import record
from qresnet import checkpoints, resnet, results, run_spec
from qresnet.quant import ops


def beyond_share(kernel, bound, bits: int, full: bool) -> tuple[int, int]:
    """(weights of `kernel` outside the signed grid's range at `bound`, weights): where the clipped
    straight-through gradient is zero (`quant.ops`; `bound` per output channel, the last axis, or one)."""
    s = ops.scale_numerator(bits, True) / np.asarray(bound, np.float32)
    qmin, qmax = ops.int_range(bits, True, full)
    v = np.asarray(kernel, np.float32) * s
    return int(np.sum((v < qmin) | (v > qmax))), int(v.size)


def bound_stats(workdir) -> dict:
    config = checkpoints.run_config(workdir)
    run = run_spec.finished_run_spec(config)
    state = checkpoints.restore_final(run, workdir)
    params = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(state.params)))
    stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(state.variables()["quant_stats"])))
    out = {"workdir": str(workdir), "setting": config.setting, "seed": int(config.seed)}
    names = {path: name for name, path in resnet.kernel_paths(jax.device_get(state.params)).items()}
    beyond = np.zeros(2, np.int64)
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
            if side == "w":
                spec, kernel = run.specs[names[path[:-1]]], params[(*path[:-1], "kernel")]
                kernel = ops.standardize(kernel) if spec.w_standardize else kernel  # as the layer quantizes it
                beyond += beyond_share(kernel, bound, spec.w_bits, spec.w_full_grid)
        if ratios:
            r = np.concatenate(ratios)
            out[side] = {
                "bounds": int(r.size),
                "at_floor": floored,
                "median_ratio": float(np.median(r)),
                "min_ratio": float(r.min()),
                "max_ratio": float(r.max()),
            }
            if side == "w":
                out[side]["beyond_share"] = float(beyond[0] / beyond[1])
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
