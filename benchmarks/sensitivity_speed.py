"""How long `qresnet sensitivity` plus `qresnet search` take for ResNet-20 (CIFAR shapes) and
ResNet-50 (ImageNet shapes), with randomly initialised weights and random images:

    python -m benchmarks.sensitivity_speed [--models resnet20,resnet50] [--out F.jsonl]

Each row: the sensitivities (Hutchinson traces and activation damages at bits 2,3,4,8, compilation
included: what a user waits for) and the searches (one milp solve a budget at 4 budgets on the
quadratic axis) in seconds, and the slowest single solve.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from benchmarks import record
from qresnet import data, resnet, results, search, sensitivity

# model: (config module, images per batch, image shape, classes)
SHAPES = {
    "resnet20": ("configs/cifar10/base.py", 256, (32, 32, 3), 10),
    "resnet50": ("configs/imagenet/base.py", 64, (224, 224, 3), 1000),
}
BITS = (2, 3, 4, 8)


def bench(model_name: str, *, batches: int = 4, probes: int = 4, batch: int = 0, bits=BITS) -> dict:
    """One row: `model_name`'s sensitivities (`batches` of `batch` images, default the model's,
    `probes` probes, candidate `bits`) and the 4 searches, timed."""
    from qresnet import config_lib

    path, default_batch, shape, classes = SHAPES[model_name]
    batch = batch or default_batch
    config = config_lib.load_config(path, [f"--config.model.name={model_name}"])
    model = resnet.create_model(model_name, num_classes=classes, width=1.0, dtype="float32")
    rng = np.random.default_rng(0)
    chosen = [
        (rng.integers(0, 256, (batch, *shape), np.uint8), rng.integers(0, classes, batch).astype(np.int32))
        for _ in range(batches)
    ]
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
        jax.random.key(0), np.zeros((1, *shape), np.float32)
    )
    info = data.dataset_info(config.dataset.name)
    t0 = time.perf_counter()
    sens = sensitivity.sensitivities(
        model, variables, chosen, lambda x: data.normalize(x, info), bits, probes=probes, quantizer="lsq"
    )
    t1 = time.perf_counter()
    costs = search.candidate_costs(config, bits, "quadratic")
    dmg = search.damages({"layers": {n: {"w": v["w"], "a": v["a"]} for n, v in sens["layers"].items()}}, bits)
    cheapest = sum(min(c.values()) for c in costs.values())
    solves = []
    for factor in (1.2, 1.5, 2.0, 3.0):
        s0 = time.perf_counter()
        search.allocate(costs, dmg, factor * cheapest)
        solves.append(time.perf_counter() - s0)
    t2 = time.perf_counter()
    return {
        "benchmark": "sensitivity_speed",
        "model": model_name,
        "image_shape": list(shape),
        "layers": len(costs),
        "bit_pairs": len(bits) ** 2,
        "batches": batches,
        "batch_size": batch,
        "probes": probes,
        "sensitivity_s": round(t1 - t0, 2),
        "search_s": round(t2 - t1, 3),
        "max_solve_s": round(max(solves), 3),
        "total_s": round(t2 - t0, 2),
        "device": results.device_description(),
        "command": " ".join(["python -m benchmarks.sensitivity_speed", *sys.argv[1:]]),
        **results.provenance(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet50")
    p.add_argument("--out", help="append each row to this JSONL file")
    ns = p.parse_args(argv)
    rows = []
    for name in ns.models.split(","):
        record(rows, bench(name), ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
