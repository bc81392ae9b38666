"""Why is integer inference slow? Per-conv timings and the compiled program's make-up.

    python -m benchmarks.int8_probe [--model resnet50 --image-size 224 --batch 256] [--out F.jsonl]

1. For every distinct convolution of the model (kernel, stride, input shape,
   output channels), the median time of the same conv as bf16 x bf16 -> bf16,
   int8 x int8 -> float32 (what `IntConv` runs) and int8 x int8 -> int8 (what
   cuDNN's int8 tensor-core kernels produce), each alone in a jitted function.
2. For the whole bf16 and integer forward passes (as `qresnet bench-int`
   builds them), the compiled HLO's operation counts: fusions, custom calls by
   target (cuDNN convolutions, cuBLAS), transposes and copies, so a layout change
   around every integer conv shows up.

One JSON line per conv shape and per model; nothing here is trained.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import record
from qresnet import inference_bench, resnet
from qresnet.quant import QConv

DN = ("NHWC", "HWIO", "NHWC")


def conv_shapes(model: str, image_size: int) -> list[dict]:
    """Distinct (input HWC, kernel, stride, features) of a model's convs, with how often each occurs."""
    arch = resnet.get_arch(model)
    net = resnet.create_model(model, num_classes=10 if arch.cifar else 1000)
    shapes = collections.Counter()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, QConv) and context.method_name == "__call__":
            x = args[0]
            shapes[(tuple(x.shape[1:]), tuple(module.kernel_size), tuple(module.strides), module.features)] += 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    return [
        {"input": list(k[0]), "kernel": list(k[1]), "stride": k[2][0], "features": k[3], "count": n}
        for k, n in shapes.items()
    ]


def time_conv(shape: dict, batch: int, iters: int) -> dict:
    """Times one conv shape as bf16, int8->f32 and int8->int8; a path that fails records its error."""
    h, w, c = shape["input"]
    kh, kw = shape["kernel"]
    s = shape["stride"]
    pad = [(kh // 2, kh // 2), (kw // 2, kw // 2)]
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.randint(kx, (batch, h, w, c), -8, 8, jnp.int32).astype(jnp.int8)
    k = jax.random.randint(kk, (kh, kw, c, shape["features"]), -8, 8, jnp.int32).astype(jnp.int8)
    paths = {
        "bf16_ms": (jnp.bfloat16, jnp.bfloat16),
        "int8_f32_ms": (jnp.int8, jnp.float32),
        "int8_int8_ms": (jnp.int8, jnp.int8),
    }
    row = dict(shape, batch=batch)
    for name, (in_dtype, out_dtype) in paths.items():
        fn = jax.jit(
            lambda a, b, out=out_dtype: jax.lax.conv_general_dilated(
                a, b, (s, s), pad, dimension_numbers=DN, preferred_element_type=out
            )
        )
        try:
            seconds = inference_bench.median_seconds(fn, x.astype(in_dtype), k.astype(in_dtype), iters=iters, warmup=3)
            row[name] = round(1e3 * seconds, 4)
        except Exception as e:  # noqa: BLE001 - a conv that does not compile is a finding
            row[name] = None
            row[name.replace("_ms", "_error")] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return row


def hlo_summary(text: str) -> dict:
    """Counts of fusions, custom-call targets, transposes and copies in optimized HLO text."""
    targets = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    return {
        "fusions": len(re.findall(r"^\s*\S+ = \S+ fusion\(", text, re.M)),
        "custom_calls": dict(targets),
        "transposes": len(re.findall(r"= \S+ transpose\(", text)),
        "copies": len(re.findall(r"= \S+ copy\(", text)),
    }


def model_programs(model: str, image_size: int, batch: int) -> list[dict]:
    """The HLO make-up of the bf16 and integer forward passes that bench-int times."""
    fns = inference_bench.forward_functions(model, image_size, batch)
    return [
        {"model": model, "batch": batch, "program": name, **hlo_summary(fn.lower(*args).compile().as_text())}
        for name, (fn, args) in fns.items()
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_probe", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", help="also write the JSON lines here")
    args = p.parse_args(argv)
    try:
        resnet.get_arch(args.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dev = jax.local_devices()[0]
    env = {"device": f"{dev.device_kind} ({dev.platform})", "date": time.strftime("%Y-%m-%d")}
    rows = []
    for r in model_programs(args.model, args.image_size, args.batch):
        record(rows, {**r, **env}, args.out)
    for s in conv_shapes(args.model, args.image_size):
        record(rows, {**time_conv(s, args.batch, args.iters), **env}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
