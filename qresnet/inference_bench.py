"""`qresnet bench-int`: bf16 against integer inference, in one process on one device.

For each (model, image size, batch) it builds the w8a8 deployment model
(per-tensor activation scales), times the jitted forward pass of the bf16
float model and of the integer model (IntConv/IntDense) on the same random
weights and input, and reports the median images/s of each. Weights and
activation bounds are random, not trained: speed does not depend on them.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from qresnet import export, resnet
from qresnet.quant import resolve_specs

DEFAULT_CASES = ("resnet50:224:256", "resnet20:32:1024")
W8A8_DEPLOY = [(".*", 8, 8, {"a_granularity": "per_tensor"})]


def median_seconds(fn, *args, iters: int, warmup: int) -> float:
    """Median wall time of fn(*args) over `iters` calls after `warmup`, each run to completion."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_functions(name: str, image_size: int, batch: int) -> dict[str, tuple[Any, tuple]]:
    """The jitted bf16 and integer (w8a8, per-tensor activations) forward passes of a model and their
    arguments, on the same random weights and input, all already on the device:
    {"bf16": (fn, args), "int8": (fn, args), "int8_conv": ..., "int8_narrow_int": ...}.
    "int8" is the default integer model; "int8_conv" runs its 1x1 convs as integer convs instead
    of int8 dots, "int8_narrow_int" its RGB stem as an int8 conv instead of exact float32 products,
    "int8_bf16" keeps everything between the integer products in bf16 instead of float32."""
    arch = resnet.get_arch(name)
    classes = 10 if arch.cifar else 1000
    shape = (image_size, image_size, 3)
    names = resnet.layer_names(name, 1.0, classes, shape)
    specs = resolve_specs(W8A8_DEPLOY, names, resnet.signed_layers(names))
    fake = resnet.create_model(name, num_classes=classes, specs=specs, dtype="float32")
    key_init, key_x = jax.random.split(jax.random.key(0))
    variables = fake.init(key_init, jnp.zeros((1, *shape)))
    variables = {**variables, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 4.0), variables["quant_stats"])}
    x = jax.random.normal(key_x, (batch, *shape), jnp.float32)

    bf16 = resnet.create_model(name, num_classes=classes, dtype="bfloat16")
    bf16_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    # On the device once: numpy arguments would be copied from the host at every call, and
    # the copy timed with the model (it was, for the integer model, up to commit fbcc8a9).
    int_vars = jax.device_put(export.integer_variables(variables, specs))
    header = {"model": name, "num_classes": classes, "width": 1.0, "specs": {n: s.to_dict() for n, s in specs.items()}}
    models = {
        "int8": export.int_model(header),
        "int8_conv": export.int_model(header, pointwise_as_dot=False),
        "int8_narrow_int": export.int_model(header, narrow_as_float=False),
        "int8_bf16": export.int_model(header, dtype="bfloat16"),
    }
    fns = {"bf16": (jax.jit(lambda v, x: bf16.apply(v, x)), (bf16_vars, x))}
    for key, model in models.items():
        fns[key] = (jax.jit(lambda v, x, model=model: model.apply(v, x)), (int_vars, x))
    return fns


def bench_case(name: str, image_size: int, batch: int, *, iters: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Times bf16 and integer inference of one model; returns the result row."""
    fns = forward_functions(name, image_size, batch)
    t = {key: median_seconds(fn, *args, iters=iters, warmup=warmup) for key, (fn, args) in fns.items()}
    t_bf16, t_int = t["bf16"], t["int8"]
    devs = jax.local_devices()
    return {
        "model": name,
        "image_size": image_size,
        "batch": batch,
        "setting": "w8a8_deploy",
        "bf16_images_per_s": batch / t_bf16,
        "int8_images_per_s": batch / t_int,
        "speedup": t_bf16 / t_int,
        **{f"{key}_ms": 1e3 * seconds for key, seconds in t.items()},  # every variant of `forward_functions`
        "int8_bf16_speedup": t_bf16 / t["int8_bf16"],
        "iters": iters,
        "device": f"{devs[0].device_kind} ({devs[0].platform})",
        "date": time.strftime("%Y-%m-%d"),
    }


def parse_case(text: str) -> tuple[str, int, int]:
    """ "resnet50:224:256" -> ("resnet50", 224, 256)."""
    try:
        name, size, batch = text.split(":")
        return name, int(size), int(batch)
    except ValueError:
        raise ValueError(
            f"benchmark case {text!r} must look like MODEL:IMAGE_SIZE:BATCH, e.g. resnet50:224:256"
        ) from None


def run(cases=DEFAULT_CASES, *, iters: int = 20, warmup: int = 3, out: str | None = None) -> list[dict[str, Any]]:
    """Runs every case, prints a JSON line each, and appends them to `out` if given."""
    from qresnet import results, train

    rows = []
    for case in cases:
        name, size, batch = parse_case(case)
        row = {**bench_case(name, size, batch, iters=iters, warmup=warmup), "commit": train.git_commit()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if out:
        results.atomic_write_jsonl(out, rows)
    return rows
