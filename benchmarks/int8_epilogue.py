"""Prototype for issue #5: an int8 GEMM with re-quantization fused into its epilogue (Pallas).

    python -m benchmarks.int8_epilogue [--kernel triton,wgmma] [--shapes M:K:N[:count],...] [--iters 50] --out F.jsonl

The integer ResNet-50 loses to bf16 in the memory traffic around its integer products
(docs/BENCHMARKS.md): each 1x1 conv writes float32 sums, then separate passes apply
the scales and BN, ReLU and the next layer's quantizer, and write int8 codes. This
kernel does it in one pass: int8 x int8 tiles accumulate in int32 (exact), and the
epilogue computes codes = clip(floor((acc * mul + add) [ReLU] * out_mul + 0.5)),
written as int8. `mul`/`add` are per output channel (weight scale over activation
scale, BN folded). For each 1x1-conv shape of ResNet-50 at batch 256, and in total
over its 36 1x1 convs (conv3's residual add is not modelled), it times in one
process: XLA's int8 dot plus the same epilogue (what `qresnet` runs today), this
kernel, and bf16's conv + BN + ReLU as a GEMM with a bf16 output (what the bf16
model runs). Not wired into the integer model: that would need BN and the next
layer's quantizer folded into each conv, i.e. a restructured integer ResNet; this
measures first whether it would pay. Two kernels: `triton` (Pallas on Triton: a plain
int8 dot per tile, 0.48x bf16 on an H200, docs/BENCHMARKS.md) and `wgmma` (Pallas on
Mosaic GPU: Hopper's warpgroup int8 MMA fed by TMA, int32 accumulators in registers).
On CPU they run only in Pallas's interpret modes (tests).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from benchmarks import record

# ResNet-50 v1.5's 36 1x1 convs at batch 256 as GEMMs: (M = 256 * H * W, K in, N out channels, count).
RESNET50_SHAPES = (
    (256 * 56 * 56, 64, 64, 1),  # stage 1: block 0's conv1
    (256 * 56 * 56, 256, 64, 2),  # conv1 of blocks 1-2
    (256 * 56 * 56, 64, 256, 4),  # conv3 x 3, projection
    (256 * 56 * 56, 256, 128, 1),  # stage 2: block 0's conv1 (its 3x3 strides)
    (256 * 28 * 28, 512, 128, 3),
    (256 * 28 * 28, 128, 512, 4),
    (256 * 28 * 28, 256, 512, 1),  # strided projection
    (256 * 28 * 28, 512, 256, 1),  # stage 3
    (256 * 14 * 14, 1024, 256, 5),
    (256 * 14 * 14, 256, 1024, 6),
    (256 * 14 * 14, 512, 1024, 1),
    (256 * 14 * 14, 1024, 512, 1),  # stage 4
    (256 * 7 * 7, 2048, 512, 2),
    (256 * 7 * 7, 512, 2048, 3),
    (256 * 7 * 7, 1024, 2048, 1),
)


def epilogue(acc, mul, add, *, out_mul: float, relu: bool, qmin: int, qmax: int, by_truncation: bool = False):
    """int32 sums -> int8 codes of the next layer's input (the fused and the XLA path share it).

    `by_truncation` (the wgmma kernel: Mosaic GPU's warpgroup lowering has no `floor`, jax
    0.10-0.11): the same codes as floor(clip(v)), equal to clip(floor(v)) for integer bounds, with
    the floor as a truncation and a correction. XLA keeps `floor`: the other form slowed its fused
    epilogue 1.7x on an H200 (docs/BENCHMARKS.md)."""
    y = acc.astype(jnp.float32) * mul + add
    if relu:
        y = jnp.maximum(y, 0.0)
    if not by_truncation:
        return jnp.clip(jnp.floor(y * out_mul + 0.5), qmin, qmax).astype(jnp.int8)
    v = jnp.clip(y * out_mul + 0.5, float(qmin), float(qmax))
    t = v.astype(jnp.int32)  # toward zero: floor for v >= 0, one too high for negative non-integers
    return jnp.where(t.astype(jnp.float32) > v, t - 1, t).astype(jnp.int8)


def xla_int8(x, w, mul, add, **kw):
    """XLA's int8 dot (int32 sums) followed by the epilogue as XLA fuses it."""
    return epilogue(lax.dot(x, w, preferred_element_type=jnp.int32), mul[None, :], add[None, :], **kw)


def bf16_layer(x, w, mul, add, *, relu: bool):
    """The bf16 model's 1x1 conv + BN (+ ReLU) as a GEMM: bf16 in, float32 sums, bf16 out."""
    y = lax.dot(x, w, preferred_element_type=jnp.float32) * mul[None, :] + add[None, :]
    return (jnp.maximum(y, 0.0) if relu else y).astype(jnp.bfloat16)


def _kernel(x_ref, w_ref, mul_ref, add_ref, o_ref, *, bk: int, ksteps: int, kw):
    bm, bn = o_ref.shape

    def body(k, acc):
        x = x_ref[:, pl.ds(k * bk, bk)]
        w = w_ref[pl.ds(k * bk, bk), :]
        return acc + lax.dot(x, w, preferred_element_type=jnp.int32)

    acc = lax.fori_loop(0, ksteps, body, jnp.zeros((bm, bn), jnp.int32))
    o_ref[...] = epilogue(acc, mul_ref[...][None, :], add_ref[...][None, :], **kw)


@functools.partial(
    jax.jit, static_argnames=("out_mul", "relu", "qmin", "qmax", "bm", "bn", "bk", "warps", "stages", "interpret")
)
def fused_int8(
    x,
    w,
    mul,
    add,
    *,
    out_mul: float,
    relu: bool,
    qmin: int,
    qmax: int,
    bm: int = 128,
    bn: int = 128,
    bk: int = 64,
    warps: int = 4,
    stages: int = 3,
    interpret: bool = False,
):
    """codes = epilogue(x @ w) in one Pallas kernel; x (M, K) int8, w (K, N) int8, mul/add (N,) float32.

    M, N and K must be multiples of bm, bn and bk (ResNet-50's shapes at batch 256 are).
    """
    (m, k), n = x.shape, w.shape[1]
    bn, bk = min(bn, n), min(bk, k)
    if m % bm or n % bn or k % bk:
        raise ValueError(f"shape M={m} K={k} N={n} is not a multiple of the blocks bm={bm} bk={bk} bn={bn}")
    kw = {"out_mul": out_mul, "relu": relu, "qmin": qmin, "qmax": qmax}
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        params["compiler_params"] = pltriton.CompilerParams(num_warps=warps, num_stages=stages)
    return pl.pallas_call(
        functools.partial(_kernel, bk=bk, ksteps=k // bk, kw=kw),
        out_shape=jax.ShapeDtypeStruct((m, n), jnp.int8),
        grid=(m // bm, n // bn),
        in_specs=[
            pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
            pl.BlockSpec((k, bn), lambda i, j: (0, j)),
            pl.BlockSpec((bn,), lambda i, j: (j,)),
            pl.BlockSpec((bn,), lambda i, j: (j,)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        interpret=interpret,
        **params,
    )(x, w, mul, add)


def _wgmma_kernel(x_gmem, w_gmem, mul_gmem, add_gmem, o_gmem, *, tm, tn, tk, steps, interpret, kw):
    """One (tm, tn) output tile per block: TMA brings x and w tiles into swizzled SMEM `steps`
    ahead, wgmma sums them in int32 registers, the epilogue writes int8 codes through SMEM."""
    mi, ni = lax.axis_index("m"), lax.axis_index("n")
    k_steps = x_gmem.shape[1] // tk

    def swizzled(cols: int):
        sw = plgpu.find_swizzle(cols * 8)  # int8: one byte a column
        return (plgpu.TilingTransform((8, sw)), plgpu.SwizzleTransform(sw))

    if interpret:  # w arrives (K, N): the interpreter has no transposed SMEM views
        w_spec = plgpu.BlockSpec((tk, tn), lambda k: (k, ni))
        k_by_n = lambda ref: ref  # noqa: E731
    else:  # int8 wgmma takes both operands K-major: w arrives (N, K), read through a transposed view
        w_spec = plgpu.BlockSpec((tn, tk), lambda k: (ni, k), transforms=swizzled(tk))
        k_by_n = lambda ref: plgpu.transpose_ref(ref, (1, 0))  # noqa: E731

    def with_acc(acc, mul_smem, add_smem, out_smem, bars):
        plgpu.copy_gmem_to_smem(mul_gmem.at[pl.ds(ni * tn, tn)], mul_smem, bars.at[0])
        plgpu.copy_gmem_to_smem(add_gmem.at[pl.ds(ni * tn, tn)], add_smem, bars.at[1])

        def step(_, x_smem, w_smem):
            plgpu.wgmma(acc, x_smem, k_by_n(w_smem))
            plgpu.wgmma_wait(0)

        x_spec = plgpu.BlockSpec((tm, tk), lambda k: (mi, k), transforms=swizzled(tk))
        plgpu.emit_pipeline(step, grid=(k_steps,), in_specs=[x_spec, w_spec], max_concurrent_steps=steps)(
            x_gmem, w_gmem
        )
        plgpu.barrier_wait(bars.at[0])
        plgpu.barrier_wait(bars.at[1])

        # Per-channel vectors in the accumulator's column layout, broadcast over its rows
        # (Mosaic GPU's layout inference finds no layout for a plain `v[None, :]`; the
        # interpreter has no layout casts).
        def row(ref):
            v = ref[...] if interpret else plgpu.layout_cast(ref[...], plgpu.Layout.WGMMA.reduce(0))
            return lax.broadcast_in_dim(v, (tm, tn), (1,))

        out_smem[...] = epilogue(acc[...], row(mul_smem), row(add_smem), **kw, by_truncation=True)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(out_smem, o_gmem.at[pl.ds(mi * tm, tm), pl.ds(ni * tn, tn)])
        plgpu.wait_smem_to_gmem(0)

    def scope(*smem):  # register (accumulator) allocations are scoped apart from SMEM ones
        pl.run_scoped(lambda acc: with_acc(acc, *smem), plgpu.ACC((tm, tn), jnp.int32))

    pl.run_scoped(
        scope,
        plgpu.SMEM((tn,), jnp.float32),
        plgpu.SMEM((tn,), jnp.float32),
        plgpu.SMEM((tm, tn), jnp.int8, transforms=swizzled(tn)),
        plgpu.Barrier(num_barriers=2),
    )


def _gpu_interpret_params():
    """Mosaic GPU's interpret mode (CPU) parameters; in jax 0.10 only under jax._src."""
    params = getattr(plgpu, "InterpretParams", None)
    if params is None:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as params
    return params()


@functools.partial(jax.jit, static_argnames=("out_mul", "relu", "qmin", "qmax", "tm", "tn", "tk", "steps", "interpret"))
def fused_int8_wgmma(
    x,
    w,
    mul,
    add,
    *,
    out_mul: float,
    relu: bool,
    qmin: int,
    qmax: int,
    tm: int = 128,
    tn: int = 128,
    tk: int = 128,
    steps: int = 4,
    interpret: bool = False,
):
    """`fused_int8` on Hopper's tensor cores (Pallas on Mosaic GPU, `wgmma`): the same codes.

    M, N and K must be multiples of tm, tn and tk (each capped at its dimension); `steps` tiles
    of x and w are in flight. `interpret`: run on the CPU in Mosaic GPU's interpret mode.
    """
    (m, k), n = x.shape, w.shape[1]
    tn, tk = min(tn, n), min(tk, k)
    if m % tm or n % tn or k % tk:
        raise ValueError(f"shape M={m} K={k} N={n} is not a multiple of the tiles tm={tm} tk={tk} tn={tn}")
    kw = {"out_mul": out_mul, "relu": relu, "qmin": qmin, "qmax": qmax}
    body = functools.partial(_wgmma_kernel, tm=tm, tn=tn, tk=tk, steps=steps, interpret=interpret, kw=kw)
    call = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((m, n), jnp.int8),
        grid=(m // tm, n // tn),
        grid_names=("m", "n"),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        interpret=_gpu_interpret_params() if interpret else None,
    )
    return call(x, w if interpret else w.T, mul, add)


def operands(m: int, k: int, n: int, seed: int = 0):
    """Random 4-bit-range codes and weights with scales that keep the outputs inside the grid."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.integers(0, 16, (m, k)), jnp.int8)
    w = jnp.asarray(rng.integers(-7, 8, (k, n)), jnp.int8)
    mul = jnp.asarray(rng.uniform(0.5, 1.5, n) / (16 * k**0.5), jnp.float32)
    add = jnp.asarray(rng.normal(0, 0.5, n), jnp.float32)
    return x, w, mul, add


def _time(fn, args, iters: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters * 1000


KERNELS = {"triton": fused_int8, "wgmma": fused_int8_wgmma}


def time_shape(m: int, k: int, n: int, iters: int, count: int = 1, kernel: str = "triton", **blocks) -> dict:
    """ms of the three paths for one GEMM shape, and how often the fused codes equal XLA's;
    `kernel` names the fused kernel (`KERNELS`), `blocks` its tile settings."""
    x, w, mul, add = operands(m, k, n)
    kw = {"out_mul": 15.0 / 4.0, "relu": True, "qmin": 0, "qmax": 15}
    ref = jax.jit(functools.partial(xla_int8, **kw))
    fused = functools.partial(KERNELS[kernel], **kw, **blocks)
    bf16 = jax.jit(functools.partial(bf16_layer, relu=True))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    same = float(jnp.mean(fused(x, w, mul, add) == ref(x, w, mul, add)))
    ms = {
        "xla_int8_ms": _time(ref, (x, w, mul, add), iters),
        "fused_int8_ms": _time(fused, (x, w, mul, add), iters),
        "bf16_ms": _time(bf16, (xb, wb, mul, add), iters),
    }
    return {
        "m": m,
        "k": k,
        "n": n,
        "count": count,
        **ms,
        "fused_vs_xla_int8": ms["xla_int8_ms"] / ms["fused_int8_ms"],
        "fused_vs_bf16": ms["bf16_ms"] / ms["fused_int8_ms"],
        "codes_equal_share": same,
        "kernel": kernel,
        "blocks": blocks,
        "device": jax.devices()[0].device_kind,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="", help="comma-separated M:K:N[:count] (default: ResNet-50's 1x1 convs)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--kernel", default="triton", help="fused kernels to time: triton, wgmma or triton,wgmma")
    p.add_argument("--blocks", default="128:128:64:4:3", help="bm:bn:bk:warps:stages of the triton kernel")
    p.add_argument("--tiles", default="128:128:128:4", help="tm:tn:tk:steps of the wgmma kernel")
    p.add_argument("--out", help="also write the rows as JSON lines here")
    args = p.parse_args(argv)
    try:
        shapes = (
            [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")] if args.shapes else RESNET50_SHAPES
        )
        shapes = [(*s, 1) if len(s) == 3 else s for s in shapes]
        bm, bn, bk, warps, stages = (int(v) for v in args.blocks.split(":"))
        tm, tn, tk, steps = (int(v) for v in args.tiles.split(":"))
        if any(len(s) != 4 or min(s) < 1 for s in shapes) or min(bm, bn, bk, warps, stages, tm, tn, tk, steps) < 1:
            raise ValueError
    except ValueError:
        print(
            f"error: --shapes {args.shapes!r} / --blocks {args.blocks!r} / --tiles {args.tiles!r}: "
            "use M:K:N,..., bm:bn:bk:warps:stages and tm:tn:tk:steps (positive integers)",
            file=sys.stderr,
        )
        return 2
    kernels = args.kernel.split(",")
    if not kernels or set(kernels) - set(KERNELS):
        print(f"error: --kernel {args.kernel!r}: choose from {', '.join(KERNELS)} (comma-separated)", file=sys.stderr)
        return 2
    settings = {
        "triton": {"bm": bm, "bn": bn, "bk": bk, "warps": warps, "stages": stages},
        "wgmma": {"tm": tm, "tn": tn, "tk": tk, "steps": steps},
    }
    if jax.default_backend() != "gpu":
        print("error: the kernel is timed on an NVIDIA GPU only (tests run it in interpret mode)", file=sys.stderr)
        return 2
    rows, any_failed = [], False
    for kernel in kernels:
        failed, timed = [], []
        for m, k, n, count in shapes:
            try:
                row = time_shape(m, k, n, args.iters, count, kernel, **settings[kernel])
                timed.append(row)
            except Exception as e:  # noqa: BLE001 - a shape the kernel cannot compile is a result, not a crash
                error = f"{type(e).__name__}: {str(e)[:400]}"
                row = {"m": m, "k": k, "n": n, "count": count, "kernel": kernel, "error": error}
                failed.append(f"{m}:{k}:{n}")
            record(rows, row, args.out)
        any_failed |= bool(failed)
        if not timed:
            print(f"error: the {kernel} kernel failed on every shape (see the rows' errors)", file=sys.stderr)
            continue
        keys = ("xla_int8_ms", "fused_int8_ms", "bf16_ms")
        total = {key: sum(r[key] * r["count"] for r in timed) for key in keys}
        total["fused_vs_xla_int8"] = total["xla_int8_ms"] / total["fused_int8_ms"]
        total["fused_vs_bf16"] = total["bf16_ms"] / total["fused_int8_ms"]
        total["shapes_failed"] = failed  # a total over fewer shapes than asked says so
        total |= {"kernel": kernel, "blocks": timed[0]["blocks"], "device": timed[0]["device"]}
        record(rows, {"total_over_shapes_times_count": True, **total}, args.out)
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main())
