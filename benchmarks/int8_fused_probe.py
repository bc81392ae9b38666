"""How fast can integer ResNet-50 inference get through XLA and cuDNN alone? A bound for issue #5.

    python -m benchmarks.int8_fused_probe [--image-size 224 --batch 256 --iters 20] [--out F.jsonl]

`qresnet bench-int`'s integer model writes float32 activations between its integer
products and re-quantizes them in separate passes (docs/BENCHMARKS.md: 0.71x bf16,
the elementwise passes its largest cost). This probe writes ResNet-50 v1.5 as a plain
function in the one form XLA's cuDNN fused-conv rewriter turns into a single cuDNN
call per conv with int8 output:

    convert<s8>(clamp(-128, relu(alpha * conv(x8, w8) + bias + beta * side8), 127))

with alpha and beta compile-time scalars (so one weight scale per conv: BN folded into
the weights before per-tensor quantization, the deployment setting issue #5 names) and
the residual add as the conv's side input, so int8 codes flow from conv to conv with no
float activation written. It times, in one process: qresnet's bf16 model (what
bench-int compares against), qresnet's integer model, the same plain network in bf16
with BN folded (a stronger bf16 baseline), and the fused integer network; and it counts
how many convs XLA compiled as int8 -> int8 cuDNN calls. Weights are random and codes
saturate freely: this measures speed and the compiled form, not a model.

It also checks how cuDNN rounds the fused conv's int8 output (XLA's `convert` truncates
toward zero; cuDNN's epilogue may round to nearest), which decides whether such a model
can equal the fake-quant model.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import record
from benchmarks.int8_probe import hlo_summary
from qresnet import inference_bench

DN = ("NHWC", "HWIO", "NHWC")
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # ResNet-50: (width, blocks, first stride)
STRIDES = tuple(s if i == 0 else 1 for _, n, s in STAGES for i in range(n))  # per block, static


def _conv(x, w, stride, out=None):
    k = w.shape[0]
    pad = [(k // 2, k // 2)] * 2
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DN, preferred_element_type=out)


def init_params(key, classes: int = 1000) -> dict:
    """Random float ResNet-50 v1.5 weights with BN already folded: {"stem", "blocks": [...], "fc"}."""
    keys = iter(jax.random.split(key, 256))

    def conv(k, cin, cout):
        w = jax.random.normal(next(keys), (k, k, cin, cout), jnp.float32) * (2.0 / (k * k * cin)) ** 0.5
        return {"w": w, "b": 0.01 * jax.random.normal(next(keys), (cout,), jnp.float32)}

    blocks, cin = [], 64
    for width, n, _ in STAGES:
        for i in range(n):
            p = {"c1": conv(1, cin, width), "c2": conv(3, width, width), "c3": conv(1, width, 4 * width)}
            if i == 0:
                p["proj"] = conv(1, cin, 4 * width)
            blocks.append(p)
            cin = 4 * width
    fc = {"w": jax.random.normal(next(keys), (cin, classes), jnp.float32) * cin**-0.5, "b": jnp.zeros((classes,))}
    return {"stem": conv(7, 3, 64), "blocks": blocks, "fc": fc}


def _stem(params, x, dtype):
    s = params["stem"]
    y = jax.nn.relu(_conv(x.astype(dtype), s["w"].astype(dtype), 2) + s["b"].astype(dtype))
    return y


def _maxpool(y, init):
    return lax.reduce_window(y, init, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def bf16_forward(params, x):
    """The plain network in bf16 with BN folded into the weights (a conv, a bias, ReLU)."""
    dt = jnp.bfloat16
    y = _maxpool(_stem(params, x, dt), jnp.array(-jnp.inf, dt))
    for p, stride in zip(params["blocks"], STRIDES):
        h = jax.nn.relu(_conv(y, p["c1"]["w"].astype(dt), 1) + p["c1"]["b"].astype(dt))
        h = jax.nn.relu(_conv(h, p["c2"]["w"].astype(dt), stride) + p["c2"]["b"].astype(dt))
        h = _conv(h, p["c3"]["w"].astype(dt), 1) + p["c3"]["b"].astype(dt)
        sc = _conv(y, p["proj"]["w"].astype(dt), stride) + p["proj"]["b"].astype(dt) if "proj" in p else y
        y = jax.nn.relu(h + sc)
    feat = y.astype(jnp.float32).mean((1, 2))
    return feat @ params["fc"]["w"] + params["fc"]["b"]


def fused_conv(x8, w8, alpha: float, bias, stride: int, *, relu: bool = True, side=None, beta: float = 1.0):
    """alpha * conv(x8, w8) + bias (+ beta * side), ReLU, clamped and converted to int8: the HLO idiom
    XLA's cuDNN rewriter fuses into one int8 -> int8 conv (alpha and beta must be Python floats)."""
    y = _conv(x8, w8, stride, jnp.float32) * alpha + bias
    if side is not None:
        y = y + side.astype(jnp.float32) * beta
    if relu:
        y = jnp.maximum(y, 0.0)
    lo = jnp.broadcast_to(np.float32(-128), y.shape)
    hi = jnp.broadcast_to(np.float32(127), y.shape)
    return lax.clamp(lo, y, hi).astype(jnp.int8)


def quantize_params(params) -> tuple[dict, dict]:
    """Per-tensor int8 codes of every block conv (arrays) and their scales (Python floats, compile-time)."""
    arrays, scales = {"blocks": []}, {"blocks": []}
    for p in params["blocks"]:
        a, s = {}, {}
        for name in ("c1", "c2", "c3", "proj"):
            if name in p:
                w = np.asarray(p[name]["w"])
                scale = float(np.abs(w).max() / 127)
                a[name] = {"w": jnp.asarray(np.round(w / scale).astype(np.int8)), "b": p[name]["b"]}
                s[name] = scale
        arrays["blocks"].append(a)
        scales["blocks"].append(s)
    arrays["stem"], arrays["fc"] = params["stem"], params["fc"]
    return arrays, scales


def int8_forward_fn(params, act_scale: float = 0.05):
    """The fused integer network: a float stem quantized to codes once, int8 codes between all 52
    block convs (each one fused call: scale, bias, residual side input, ReLU, int8 out), a float head.
    Returns (jitted forward(arrays, x), arrays)."""
    arrays, scales = quantize_params(params)

    def forward(arrays, x):
        y = _stem(arrays, x, jnp.float32)
        codes = jnp.clip(jnp.round(y / act_scale), 0, 127).astype(jnp.int8)
        y = _maxpool(codes, jnp.array(-128, jnp.int8))
        for a, s, stride in zip(arrays["blocks"], scales["blocks"], STRIDES):
            # alpha = s_in * s_w / s_out with one activation scale throughout (random weights: speed only)
            h = fused_conv(y, a["c1"]["w"], s["c1"], a["c1"]["b"], 1)
            h = fused_conv(h, a["c2"]["w"], s["c2"], a["c2"]["b"], stride)
            sc = fused_conv(y, a["proj"]["w"], s["proj"], a["proj"]["b"], stride, relu=False) if "proj" in a else y
            y = fused_conv(h, a["c3"]["w"], s["c3"], a["c3"]["b"], 1, side=sc, beta=1.0)
        feat = y.astype(jnp.float32).mean((1, 2)) * act_scale
        return feat @ arrays["fc"]["w"] + arrays["fc"]["b"]

    return jax.jit(forward), arrays


def conv_kinds(hlo: str) -> dict:
    """Counts of cuDNN conv calls in optimized HLO by (output element type, target)."""
    kinds = collections.Counter()
    for line in hlo.splitlines():
        m = re.search(r'custom_call_target="__cudnn\$(conv\w*)"', line)
        if m:
            out = re.search(r"= \((\w+)\[", line)
            kinds[f"{out.group(1) if out else '?'} {m.group(1)}"] += 1
    return dict(kinds)


def rounding_check(batch: int = 32) -> dict:
    """How the fused int8 -> int8 conv rounds: its codes against truncation, round-half-even and
    floor(v + 0.5) of the same sums computed apart (an optimization barrier stops the fusion)."""
    kx, kw, kb = jax.random.split(jax.random.key(1), 3)
    x = jax.random.randint(kx, (batch, 28, 28, 128), 0, 128, jnp.int32).astype(jnp.int8)
    w = jax.random.randint(kw, (3, 3, 128, 128), -127, 128, jnp.int32).astype(jnp.int8)
    bias = jax.random.uniform(kb, (128,), jnp.float32, -20, 20)
    alpha = 1.0 / 4096
    fused = jax.jit(lambda x, w, b: fused_conv(x, w, alpha, b, 1))(x, w, bias)

    def apart(x, w, b):
        acc = lax.optimization_barrier(_conv(x, w, 1, jnp.float32))
        return jnp.maximum(acc * alpha + b, 0.0)

    v = np.asarray(jax.jit(apart)(x, w, bias))
    got = np.asarray(fused).astype(np.int32)
    refs = {"trunc": np.trunc(v), "round_half_even": np.rint(v), "floor_plus_half": np.floor(v + 0.5)}
    row = {"check": "fused_int8_rounding", "elements": int(got.size)}
    for name, r in refs.items():
        row[f"equal_{name}"] = float((np.clip(r, -128, 127).astype(np.int32) == got).mean())
    row["hlo_convs"] = conv_kinds(
        jax.jit(lambda x, w, b: fused_conv(x, w, alpha, b, 1)).lower(x, w, bias).compile().as_text()
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_fused_probe", description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", help="also append the JSON lines here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.image_size < 32:
        print(
            f"error: --batch {args.batch} / --image-size {args.image_size}: need a batch >= 1 and images >= 32",
            file=sys.stderr,
        )
        return 2
    dev = jax.local_devices()[0]
    env = {"device": f"{dev.device_kind} ({dev.platform})", "date": time.strftime("%Y-%m-%d")}
    rows = []
    record(rows, {**rounding_check(), **env}, args.out)

    params = init_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(2), (args.batch, args.image_size, args.image_size, 3), jnp.float32)
    ours = inference_bench.forward_functions("resnet50", args.image_size, args.batch)
    int8_fused, arrays = int8_forward_fn(params)
    programs = {
        "qresnet_bf16": ours["bf16"],
        "qresnet_int8": ours["int8"],
        "plain_bf16_folded": (jax.jit(bf16_forward), (params, x)),
        "int8_fused": (int8_fused, (arrays, x)),
    }
    ms = {}
    for name, (fn, fargs) in programs.items():
        hlo = fn.lower(*fargs).compile().as_text()
        ms[name] = 1e3 * inference_bench.median_seconds(fn, *fargs, iters=args.iters, warmup=3)
        record(
            rows,
            {
                "program": name,
                "ms": round(ms[name], 3),
                "images_per_s": round(args.batch / ms[name] * 1e3),
                "convs": conv_kinds(hlo),
                **hlo_summary(hlo),
                **env,
            },
            args.out,
        )
    record(
        rows,
        {
            "model": "resnet50",
            "batch": args.batch,
            "image_size": args.image_size,
            "iters": args.iters,
            "int8_fused_vs_qresnet_bf16": round(ms["qresnet_bf16"] / ms["int8_fused"], 3),
            "int8_fused_vs_plain_bf16_folded": round(ms["plain_bf16_folded"] / ms["int8_fused"], 3),
            "qresnet_int8_vs_qresnet_bf16": round(ms["qresnet_bf16"] / ms["qresnet_int8"], 3),
            **env,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
