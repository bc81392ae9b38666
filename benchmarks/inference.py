"""The inference benchmark: bf16 against integer inference, in one process on one device.

`python -m benchmarks.inference [--case resnet50:224:256 --case resnet20:32:1024] [--out F.jsonl]`

For each (model, image size, batch) it builds two w8a8 integer models and their
float counterparts on random weights and the same input, times the jitted
forward passes and reports the median images/s of each, in two rows:

- setting `w8a8_deploy` (per-tensor activation scales): the integer model of
  `quant.int_layers` (float32 between the integer products) against the bf16
  model with BN;
- setting `w8a8_fused_pow2` (BN folded, one power-of-two scale per tensor,
  `model.fold_bn`, `QuantSpec.pow2_scale`): the fused integer model of
  `qresnet.fused` (int8 codes from conv to conv; its default stem, an int8
  space-to-depth conv for ImageNet stems, and the float32 stem beside it) against
  the same bf16 model with BN, and against the bf16 network with BN folded
  (`bf16_folded`, bias and ReLU in the conv's epilogue: the fastest bf16 form).

Weights and activation bounds are random, not trained: speed does not depend on them.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from configs import settings
from qresnet import export, fused, resnet, results

DEFAULT_CASES = ("resnet50:224:256", "resnet20:32:1024")
W8A8_DEPLOY = settings.SETTINGS["w8a8_deploy"]
FUSED_SETTING = "w8a8_fused_pow2"  # exact on cuDNN's fused convs
W8A8_FUSED = settings.SETTINGS[FUSED_SETTING]


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


def forward_functions(
    name: str, image_size: int, batch: int, report: dict | None = None
) -> dict[str, tuple[Any, tuple]]:
    """The jitted bf16 and integer (w8a8, per-tensor activations) forward passes of a model and their
    arguments, on the same random weights and input, all already on the device:
    {"bf16": (fn, args), "int8": (fn, args), "int8_conv": ..., "int8_narrow_int": ...}.
    "int8" is the default integer model; "int8_conv" runs its 1x1 convs as integer convs instead
    of int8 dots, "int8_narrow_int" its RGB stem as an int8 conv instead of exact float32 products,
    "int8_bf16" keeps everything between the integer products in bf16 instead of float32;
    "bf16_folded" and "int8_fused" are the BN-folded network and its fused integer model (w8a8_fused_pow2,
    its default stem), and "int8_fused_float_stem" (ImageNet stems) the same with the stem's products in
    float32 instead of an int8 space-to-depth conv; their rounding and `fused.compile_forward` checks go
    into `report` if given."""
    arch = resnet.get_arch(name)
    classes = 10 if arch.cifar else 1000
    shape = (image_size, image_size, 3)
    specs = resnet.resolve_specs(W8A8_DEPLOY, name, num_classes=classes, input_shape=shape)
    fake = resnet.create_model(name, num_classes=classes, specs=specs, dtype="float32")
    key_init, key_x = jax.random.split(jax.random.key(0))
    variables = fake.init(key_init, jnp.zeros((1, *shape)))
    variables = {**variables, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 4.0), variables["quant_stats"])}
    x = jax.random.normal(key_x, (batch, *shape), jnp.float32)

    bf16 = resnet.create_model(name, num_classes=classes, dtype="bfloat16")
    bf16_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    # On the device once: numpy arguments would be copied from the host at every call, and
    # the copy timed with the model.
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
    return fns | _fused_functions(name, classes, shape, x, {} if report is None else report)


def _fused_functions(name, classes, shape, x, report: dict) -> dict[str, tuple[Any, tuple]]:
    """The BN-folded bf16 network and the fused integer model (w8a8_fused_pow2) of a model."""
    specs = resnet.resolve_specs(W8A8_FUSED, name, num_classes=classes, input_shape=shape)
    fake = resnet.create_model(name, num_classes=classes, specs=specs, fold_bn=True)
    variables = fake.init(jax.random.key(1), jnp.zeros((1, *shape)))
    variables = {**variables, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 4.0), variables["quant_stats"])}
    header = {"model": name, "num_classes": classes, "width": 1.0, "fold_bn": True}
    header["specs"] = {n: s.to_dict() for n, s in specs.items()}
    int_vars = export.integer_variables(variables, specs)
    model = export.int_model(header, int_vars)
    int_vars = jax.device_put(int_vars)
    forward, _ = fused.compile_forward(model, int_vars, x)  # explicit rounding, with a warning, where unfused
    report.update({"int8_fused_rounding": model.rounding, **{f"int8_fused_{k}": v for k, v in model.check.items()}})
    folded = resnet.create_model(name, num_classes=classes, dtype="bfloat16", fold_bn=True)
    folded_vars = {"params": variables["params"]}
    fns = {
        "bf16_folded": (jax.jit(lambda v, x: folded.apply(v, x)), (folded_vars, x)),
        "int8_fused": (forward, (int_vars, x)),
    }
    report["int8_fused_stem"] = model.stem
    if model.stem == "s2d":  # the 7x7 stem's products in float32 too
        plain = fused.FusedResNet(header, int_vars, stem="float")
        forward_plain, _ = fused.compile_forward(plain, int_vars, x)
        report.update(
            {
                "int8_fused_float_stem_rounding": plain.rounding,
                "int8_fused_float_stem_fused_convs": plain.check.get("fused_convs"),
            }
        )
        fns["int8_fused_float_stem"] = (forward_plain, (int_vars, x))
    return fns


def bench_case(name: str, image_size: int, batch: int, *, iters: int = 20, warmup: int = 3) -> list[dict[str, Any]]:
    """Times bf16 and integer inference of one model; returns the two result rows (module doc)."""
    report: dict[str, Any] = {}
    fns = forward_functions(name, image_size, batch, report)
    t = {key: median_seconds(fn, *args, iters=iters, warmup=warmup) for key, (fn, args) in fns.items()}
    t_bf16 = t["bf16"]
    devs = jax.local_devices()
    common = {"model": name, "image_size": image_size, "batch": batch, "bf16_images_per_s": batch / t_bf16}
    env = {"iters": iters, "device": f"{devs[0].device_kind} ({devs[0].platform})", "date": time.strftime("%Y-%m-%d")}
    deploy = {
        **common,
        "setting": "w8a8_deploy",
        "int8_images_per_s": batch / t["int8"],
        "speedup": t_bf16 / t["int8"],
        # every variant of `forward_functions` but the fused row's
        **{f"{key}_ms": 1e3 * sec for key, sec in t.items() if not key.startswith(("bf16_folded", "int8_fused"))},
        "int8_bf16_speedup": t_bf16 / t["int8_bf16"],
        **env,
    }
    fused_row = {
        **common,
        "setting": FUSED_SETTING,
        "int8_images_per_s": batch / t["int8_fused"],
        "speedup": t_bf16 / t["int8_fused"],
        "bf16_folded_images_per_s": batch / t["bf16_folded"],
        "speedup_vs_bf16_folded": t["bf16_folded"] / t["int8_fused"],
        **{
            f"{key}_ms": 1e3 * t[key]
            for key in ("bf16", "bf16_folded", "int8_fused", "int8_fused_float_stem")
            if key in t
        },
        **({"float_stem_speedup": t_bf16 / t["int8_fused_float_stem"]} if "int8_fused_float_stem" in t else {}),
        **report,
        **env,
    }
    return [deploy, fused_row]


def parse_case(text: str) -> tuple[str, int, int]:
    """ "resnet50:224:256" -> ("resnet50", 224, 256)."""
    try:
        name, size, batch = text.split(":")
        size, batch = int(size), int(batch)
    except ValueError:
        raise ValueError(
            f"benchmark case {text!r} must look like MODEL:IMAGE_SIZE:BATCH, e.g. resnet50:224:256"
        ) from None
    if size < 1 or batch < 1:
        raise ValueError(f"benchmark case {text!r}: IMAGE_SIZE and BATCH must be >= 1")
    return name, size, batch


def run(cases=DEFAULT_CASES, *, iters: int = 20, warmup: int = 3, out: str | None = None) -> list[dict[str, Any]]:
    """Runs every case, prints a JSON line each, and appends them to `out` if given."""
    rows = []
    for case in cases:
        name, size, batch = parse_case(case)
        for row in bench_case(name, size, batch, iters=iters, warmup=warmup):
            row["commit"] = results.git_commit()
            print(json.dumps(row), flush=True)
            rows.append(row)
    if out:
        results.atomic_write_jsonl(out, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", help="MODEL:IMAGE_SIZE:BATCH (repeatable)")
    p.add_argument("--iters", type=int, default=20, help="timed calls (>= 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (>= 0)")
    p.add_argument("--out", help="write the rows as JSON lines here")
    args = p.parse_args(argv)
    try:
        for case in args.case or DEFAULT_CASES:
            parse_case(case)
    except ValueError as e:
        p.error(str(e))
    if args.iters < 1 or args.warmup < 0:
        p.error(f"--iters {args.iters} must be >= 1 and --warmup {args.warmup} >= 0")
    run(args.case or DEFAULT_CASES, iters=args.iters, warmup=args.warmup, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
