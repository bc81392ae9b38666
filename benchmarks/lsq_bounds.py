"""How far a run's learned (LSQ) activation bounds moved from their start.

    python -m benchmarks.lsq_bounds --workdir RUN [--out FILE.jsonl]

Reads the run's newest checkpoint and prints, per layer with an LSQ bound, the mean and largest
|learned offset| / start (0 means the bound never left the start that LSQ's init rule set
before activation quantization began), the median learned bound / start (its direction) and the
number of bounds at or below 0, then the mean over layers. A diagnostic for issue #3's
learned bounds, which learned 256x too slowly until 2026-12-01.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import record
from qresnet import resnet, train


def movement(workdir: str | Path) -> list[dict]:
    """Per LSQ layer of the run: {"layer", "mean_rel", "max_rel"} of |offset| / |start|, the median
    learned bound / start ("median_ratio": above 1 the bounds grew, below shrank) and how many of
    its bounds are <= 0 ("nonpositive": such a channel quantizes to 0)."""
    state, specs = train.restore_final(train.run_config(workdir), workdir)
    rows = []
    for name, path in resnet.kernel_paths(state.params).items():
        spec = specs[name]
        if spec.a_bound != "lsq" or spec.a_bits is None:
            continue
        offset, start = state.params, state.quant_stats
        for p in path:
            offset, start = offset[p], start[p]
        offset, start = np.asarray(offset["act_bound_offset"]), np.asarray(start["act_bound"])
        rel = np.abs(offset) / np.maximum(np.abs(start), 1e-8)
        ratio = (start + offset) / np.where(start == 0, 1e-8, start)
        rows.append(
            {
                "layer": name,
                "mean_rel": float(rel.mean()),
                "max_rel": float(rel.max()),
                "median_ratio": float(np.median(ratio)),
                "nonpositive": int(np.sum(start + offset <= 0)),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a finished run with LSQ bounds")
    p.add_argument("--out", help="also write the rows as JSON lines here")
    args = p.parse_args(argv)
    try:
        rows = movement(args.workdir)
    except (OSError, train.TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {args.workdir} has no layer with a learned (LSQ) bound", file=sys.stderr)
        return 2
    out: list = []
    for row in rows:
        record(out, row, args.out)
    record(out, {"layer": "mean over layers", "mean_rel": float(np.mean([r["mean_rel"] for r in rows]))}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
