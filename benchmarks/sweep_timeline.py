"""When did a packed sweep's GPU train? A timeline rebuilt from the sweep's records.

    python -m benchmarks.sweep_timeline --root R --config configs/cifar10/sweep_paper.py [--out F.json]

Replays the launch order of `qresnet sweep` (longest first onto its slots, each run holding its
slot for its launch-to-exit time from `sweep_log.jsonl`), places each run's phases in it
(process start-up: the time before its `wall_s`; set-up: `setup_s`; then its epochs'
`epoch_s` from `metrics.jsonl`, the first of which includes compiling) and counts, second by
second, how many runs were in an epoch after their first and their summed training images/s
(epoch images over `epoch_s`, evaluation included). For one invocation on one GPU; the replay
matches the logged wall time to within the sweep's polling, which the summary reports.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import sys
from pathlib import Path

from qresnet import sweep

KINDS = ("start", "setup", "first", "train", "exit")


def replay(root: Path, config: str) -> tuple[list[tuple[float, float, str, str, float]], float]:
    """The runs' phases as (start s, stop s, run, kind, training images/s), and the logged wall time."""
    entries = [json.loads(line) for line in (root / sweep.SWEEP_LOG).read_text().splitlines()]
    if len(entries) != 1 or len(entries[0].get("gpus", [])) > 1:
        raise ValueError(f"{root / sweep.SWEEP_LOG}: replays one invocation on one GPU, found {len(entries)}")
    log = entries[0]
    took = {r["name"]: r["s"] for r in log["runs"]}
    runs = sweep.expand(config, [], None)
    order = [name for name, _, cfg in sorted(runs, key=lambda r: -sweep.work(r[2])) if name in took]
    free = [(0.0, i) for i in range(log["jobs_per_gpu"])]
    segments = []
    for name in order:
        launched, slot = heapq.heappop(free)
        heapq.heappush(free, (launched + took[name], slot))
        result = json.loads((root / name / "result.json").read_text())
        metrics = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        t = launched + took[name] - result["wall_s"]
        segments.append((launched, t, name, "start", 0.0))
        segments.append((t, t + result["setup_s"], name, "setup", 0.0))
        t += result["setup_s"]
        for m in metrics:
            images = m["step"] // m["epoch"] * result["batch_size"]  # steps per epoch x batch
            kind = "first" if m["epoch"] == 1 else "train"
            segments.append((t, t + m["epoch_s"], name, kind, images / m["epoch_s"] if kind == "train" else 0.0))
            t += m["epoch_s"]
        segments.append((t, max(t, launched + took[name]), name, "exit", 0.0))
    return segments, log["wall_s"]


def summarize(segments, wall_s: float) -> dict:
    """Second-by-second counts: seconds with k runs training (past their first epoch) and the
    mean summed images/s then; when training first started; the replay's end against `wall_s`."""
    end = max(s[1] for s in segments)
    by_k = collections.defaultdict(lambda: [0, 0.0])
    first_training = None
    for sec in range(int(end) + 1):
        x = sec + 0.5
        training = [s for s in segments if s[0] <= x < s[1] and s[3] == "train"]
        if training and first_training is None:
            first_training = sec
        by_k[len(training)][0] += 1
        by_k[len(training)][1] += sum(s[4] for s in training)
    return {
        "replayed_end_s": round(end, 1),
        "logged_wall_s": wall_s,
        "first_training_s": first_training,
        "seconds_by_runs_training": {k: n for k, (n, _) in sorted(by_k.items())},
        "images_per_s_by_runs_training": {k: round(a / n) for k, (n, a) in sorted(by_k.items()) if n},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a sweep root (sweep_log.jsonl and one folder per run)")
    p.add_argument("--config", required=True, help="the sweep's config (for its launch order)")
    p.add_argument("--out", help="also write the summary as JSON here")
    args = p.parse_args(argv)
    try:
        segments, wall = replay(Path(args.root), args.config)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot replay {args.root}: {e}", file=sys.stderr)
        return 2
    summary = {"root": args.root, "config": args.config, **summarize(segments, wall)}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
