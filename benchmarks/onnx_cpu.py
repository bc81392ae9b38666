"""ONNX Runtime on the CPU: the QDQ model against the same network exported in float32.

    python -m benchmarks.onnx_cpu [--case resnet20:32:256 ...] [--setting w8a8_deploy ...]
        [--workdir RUN] [--threads N] [--rounds 10] [--out F.jsonl]

For each case (model, image size, batch) and setting it builds the QDQ ONNX model
(`qresnet.onnx_export.build`), the same with `integer_kernels=True`, and the float32 model of the
same network (`quantized=False`: the same kernels dequantized, BN folded the same way, no
activation quantization), opens them in ONNX Runtime's CPU provider (all graph optimizations, so
QDQ groups become integer kernels where the runtime can), and times them in one process on the
same input: after warm-up, each round runs one batch through each model in turn, and the row
reports each model's median images/s and the QDQ models' ratios to float32. With `--workdir`,
the trained run's weights and bounds are used instead of random ones (speed does not depend on
them; the row says which).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import settings
from qresnet import export, onnx_eval, onnx_export, resnet, results

DEFAULT_CASES = ("resnet20:32:256",)
DEFAULT_SETTINGS = ("w8a8_deploy", "w4a4_ends8_deploy")


def random_network(name: str, image_size: int, setting: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, integer variables) of a randomly initialised network, every activation bound 4."""
    arch = resnet.get_arch(name)
    classes, dataset = (10, "cifar10_jpeg") if arch.cifar else (1000, "imagenet2012")
    shape = (image_size, image_size, 3)
    specs = resnet.resolve_specs(settings.SETTINGS[setting], name, num_classes=classes, input_shape=shape)
    model = resnet.create_model(name, num_classes=classes, specs=specs)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    variables = {**variables, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 4.0), variables["quant_stats"])}
    header = {"model": name, "width": 1.0, "num_classes": classes, "input_shape": list(shape)}
    header |= {"dataset": dataset, "setting": setting, "specs": {n: s.to_dict() for n, s in specs.items()}}
    return header, export.integer_variables(variables, specs)


def bench(header, variables, batch: int, *, threads: int, rounds: int, warmup: int = 3) -> dict[str, Any]:
    """Median images/s of the QDQ and the float32 model of one network, timed in turn (module doc)."""
    import onnxruntime as ort

    graphs = {"qdq": {}, "qdq_integer_kernels": {"integer_kernels": True}, "float32": {"quantized": False}}
    sessions = {
        key: onnx_eval.session(onnx_export.build(header, variables, **kw).SerializeToString(), threads)
        for key, kw in graphs.items()
    }
    h, w, c = header["input_shape"]
    images = np.random.default_rng(0).integers(0, 256, (batch, h, w, c), dtype=np.uint8)
    times = {k: [] for k in sessions}
    for i in range(warmup + rounds):
        for key, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(["logits"], {"image": images})
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {
        **{f"{k}_images_per_s": v for k, v in ips.items()},
        "qdq_vs_float32": ips["qdq"] / ips["float32"],
        "qdq_integer_kernels_vs_float32": ips["qdq_integer_kernels"] / ips["float32"],
        "threads": threads,
        "rounds": rounds,
        "onnx_runtime": ort.__version__,
    }


def run(cases, setting_names, *, workdir: str | None, threads: int, rounds: int, out: str | None) -> list[dict]:
    rows = []
    for case in cases:
        name, size, batch = case.split(":")
        for setting in [None] if workdir else setting_names:
            if workdir:
                header, variables = export.run_variables(workdir)
                weights = f"trained ({workdir})"
            else:
                header, variables = random_network(name, int(size), setting)
                weights = "random"
            row = {"model": header["model"], "setting": header["setting"], "image_size": header["input_shape"][0]}
            row |= {"batch": int(batch), "weights": weights}
            row |= bench(header, variables, int(batch), threads=threads, rounds=rounds)
            row |= {"cpu": _cpu_name(), "cpus": os.cpu_count(), **results.provenance()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if out:
        with open(out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.onnx_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", help="MODEL:IMAGE_SIZE:BATCH (default resnet20:32:256)")
    p.add_argument("--setting", action="append", choices=sorted(settings.SETTINGS), help="random-weight settings")
    p.add_argument("--workdir", help="time this finished run's network (its model and setting) instead")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime intra-op threads")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", help="append the rows to this JSONL file")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        p.error("--rounds and --threads must be at least 1")
    run(
        args.case or DEFAULT_CASES,
        args.setting or DEFAULT_SETTINGS,
        workdir=args.workdir,
        threads=args.threads,
        rounds=args.rounds,
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
