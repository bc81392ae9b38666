"""XLA's (cuDNN's) 3x3 convs against `qresnet.conv_kernels.conv3x3` (Triton), per shape.

    python -m benchmarks.conv3x3 [--shapes N:H:W:C:COUT,...] [--iters 50] --out F.jsonl

For each shape, in one process: the forward conv, and the forward conv with both gradients
(`value_and_grad` of a sum against a fixed cotangent, what training runs), each as XLA's conv
(bf16 NHWC/HWIO, channel counts padded to multiples of 8 as the sweep configs do) and as the
Pallas kernels; median of `iters` jitted calls, each ended by `block_until_ready`, the two
implementations alternating call by call. Also the largest difference between their outputs
and gradients relative to XLA's largest magnitude (bf16 rounding is ~4e-3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import record
from qresnet import conv_kernels, train
from qresnet.quant.layers import pad_channels

# ResNet-20's stride-1 3x3 convs at batch 256 across the sweep's widths (stage-1 channels 8-32).
DEFAULT_SHAPES = (
    (256, 32, 32, 16, 16),
    (256, 16, 16, 32, 32),
    (256, 8, 8, 64, 64),
    (256, 32, 32, 8, 8),
    (256, 32, 32, 24, 24),
    (256, 32, 32, 32, 32),
    (256, 16, 16, 64, 64),
    (256, 8, 8, 128, 128),
    (256, 32, 32, 3, 16),
)


def _xla(x, k):
    x, k = pad_channels(x, k, 8)
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _fns(impl, cout):
    conv = _xla if impl == "xla" else conv_kernels.conv3x3

    def fwd(x, k):
        return conv(x, k)[..., :cout]

    def loss(x, k, g):
        return jnp.sum(fwd(x, k).astype(jnp.float32) * g)

    return jax.jit(fwd), jax.jit(jax.value_and_grad(loss, (0, 1)))


def _median_ms(calls, iters):
    times = {name: [] for name in calls}
    for _ in range(iters):
        for name, call in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def measure(shape, iters: int) -> dict:
    n, h, w, c, co = shape
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (n, h, w, c), jnp.float32).astype(jnp.bfloat16)
    k = (jax.random.normal(kk, (3, 3, c, co)) * (2.0 / (9 * c)) ** 0.5).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (n, h, w, co), jnp.float32)
    fx, gx = _fns("xla", co)
    fp, gp = _fns("pallas", co)
    outs = {
        name: jax.block_until_ready(f())
        for name, f in {
            "xla_fwd": lambda: fx(x, k),
            "pallas_fwd": lambda: fp(x, k),
            "xla_grad": lambda: gx(x, k, g),
            "pallas_grad": lambda: gp(x, k, g),
        }.items()
    }
    err = {}
    for part, a, b in (
        ("y", outs["xla_fwd"], outs["pallas_fwd"]),
        ("dx", outs["xla_grad"][1][0], outs["pallas_grad"][1][0]),
        ("dw", outs["xla_grad"][1][1], outs["pallas_grad"][1][1]),
    ):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        err[f"rel_err_{part}"] = float(jnp.abs(a - b).max() / jnp.abs(a).max())
    ms = _median_ms(
        {
            "xla_fwd_ms": lambda: fx(x, k),
            "pallas_fwd_ms": lambda: fp(x, k),
            "xla_grad_ms": lambda: gx(x, k, g),
            "pallas_grad_ms": lambda: gp(x, k, g),
        },
        iters,
    )
    return {
        "shape": "x".join(map(str, shape)),
        **ms,
        "fwd_speedup": ms["xla_fwd_ms"] / ms["pallas_fwd_ms"],
        "grad_speedup": ms["xla_grad_ms"] / ms["pallas_grad_ms"],
        **err,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv3x3", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", help="comma-separated N:H:W:C:COUT (default: ResNet-20's at batch 256)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", help="JSON-lines file (appended)")
    args = p.parse_args(argv)
    try:
        shapes = DEFAULT_SHAPES
        if args.shapes:
            shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
            bad = [s for s in shapes if len(s) != 5 or min(s) < 1]
            if bad:
                raise ValueError(f"--shapes entries must be N:H:W:C:COUT of positive ints, got {bad}")
        if args.iters < 1:
            raise ValueError(f"--iters must be >= 1, got {args.iters}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = {"device": jax.devices()[0].device_kind, "commit": train.git_commit(), "date": time.strftime("%Y-%m-%d")}
    rows: list = []
    for shape in shapes:
        record(rows, {**measure(shape, args.iters), "iters": args.iters, **env}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
