"""3x3 stride-1 convolutions as Pallas (Triton) kernels, for narrow layers on the GPU.

cuDNN's kernels for ResNet-20's 3x3 convs over 16 channels run far below a Hopper GPU's memory
bandwidth (a 32x32, 16-to-16 conv reads and writes 34 MB at batch 512 at well under 1 TB/s), and
these convs are most of a small ResNet's step time.
`conv3x3` computes the same convolution (NHWC input, HWIO kernel, zero padding 1) as an
implicit GEMM over rows of the flattened (N*H*W, C) input: each program takes `block` output
pixels, loads the 9 shifted row blocks (contiguous in memory, masked at the image borders) and
multiplies each by its tap's (C, Cout) matrix, accumulating in float32. Its gradient uses the
same kernel for the input (the flipped, transposed kernel over the output gradient) and a second
kernel for the weights (per tap, x rows transposed times output-gradient rows, summed in float32
over chunks of pixels, the chunks' partial sums added after). Channel counts are padded inside to
powers of two >= 16 (Triton's block shapes and `dot`). Off the GPU the kernels run in Pallas's
interpreter (slow; for tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

_MIN_DOT = 16  # Triton's dot needs every dimension >= 16


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The kernels' launch settings (what `TUNING` holds; the defaults were the fastest measured).

    Attributes:
      fwd_block: output pixels per program of the forward (and input-gradient) kernel.
      wgrad_block: pixels per step of the kernel-gradient kernel.
      wgrad_steps: its steps per program (the pixels a partial sum covers: block x steps).
      warps: Triton warps per program.
      stages: Triton's software-pipelining stages.
    """

    fwd_block: int = 128
    wgrad_block: int = 128
    wgrad_steps: int = 16
    warps: int = 4
    stages: int = 1


TUNING = Tuning()  # read when a conv is traced; `benchmarks.train_step --conv-tuning` sets others


def _pow2(n: int) -> int:
    return max(_MIN_DOT, 1 << (int(n) - 1).bit_length())


def supported(x_shape, kernel_shape, strides, padding, dtype, max_channels: int = 1 << 30) -> bool:
    """Whether `conv3x3` computes this conv: a 3x3 kernel, stride 1, padding 1 on each side
    (or "SAME"), NHWC bf16 input, at most `max_channels` input and output channels, and
    flat element offsets that fit the kernels' int32 index arithmetic.

    Args:
      x_shape: (N, H, W, C).
      kernel_shape: (3, 3, C, Cout).
      strides: (sh, sw).
      padding: "SAME" or ((1, 1), (1, 1)).
      dtype: the operands' dtype.
      max_channels: the widest layer to take (wider ones ran faster on cuDNN).

    Returns:
      True when the kernels apply.
    """
    pad_ok = padding == "SAME" or [tuple(p) for p in padding] == [(1, 1), (1, 1)]
    return (
        len(x_shape) == 4
        and tuple(kernel_shape[:2]) == (3, 3)
        and tuple(strides) == (1, 1)
        and pad_ok
        and jnp.dtype(dtype) == jnp.bfloat16
        and max(kernel_shape[2], kernel_shape[3]) <= max_channels
        and math.prod(x_shape[:3]) * _pow2(max(kernel_shape[2], kernel_shape[3])) < 2**31
    )


def _taps(p, h_size: int, w_size: int, valid):
    """For flat output positions p: per tap (dh, dw), the source rows and the in-image mask."""
    hw = p % (h_size * w_size)
    h, w = hw // w_size, hw % w_size
    out = []
    for dh in (-1, 0, 1):
        for dw in (-1, 0, 1):
            ok = valid & (h + dh >= 0) & (h + dh < h_size) & (w + dw >= 0) & (w + dw < w_size)
            out.append((jnp.where(ok, p + dh * w_size + dw, 0), ok))
    return out


def _mask(ok, cols: int, c_real: int):
    """(rows, cols) mask: ok per row, and columns < c_real. Where every column is real the mask
    is ok broadcast along the columns (as fast as a per-element mask, and fewer registers)."""
    if cols == c_real:
        return jnp.broadcast_to(ok[:, None], (ok.shape[0], cols))
    return ok[:, None] & (jnp.arange(cols)[None, :] < c_real)


def _rows(ref, rows, ok, cols: int, c_real: int):
    """ref[rows, :cols] from a flat (P * c_real,) ref, zero where masked or past c_real."""
    offsets = rows[:, None] * c_real + jnp.arange(cols)[None, :]
    return plt.load(ref.at[offsets], mask=_mask(ok, cols, c_real), other=0)


def _fwd_kernel(x_ref, w_ref, y_ref, *, n_pix, h_size, w_size, c, co, cp, cop, block):
    p = pl.program_id(0) * block + jnp.arange(block)
    valid = p < n_pix
    acc = jnp.zeros((block, cop), jnp.float32)
    for t, (rows, ok) in enumerate(_taps(p, h_size, w_size, valid)):
        xt = _rows(x_ref, rows, ok, cp, c)
        acc += plt.dot(xt, w_ref[t])  # w_ref: (9, cp, cop)
    offsets = p[:, None] * co + jnp.arange(cop)[None, :]
    plt.store(y_ref.at[offsets], acc.astype(y_ref.dtype), mask=_mask(valid, cop, co))


def _wgrad_kernel(x_ref, dy_ref, dw_ref, *, n_pix, h_size, w_size, c, co, cp, cop, block, steps):
    g, t = pl.program_id(0), pl.program_id(1)
    dh, dw = t // 3 - 1, t % 3 - 1

    def body(s, acc):
        p = (g * steps + s) * block + jnp.arange(block)
        valid = p < n_pix
        hw = p % (h_size * w_size)
        h, w = hw // w_size, hw % w_size
        ok = valid & (h + dh >= 0) & (h + dh < h_size) & (w + dw >= 0) & (w + dw < w_size)
        xt = _rows(x_ref, jnp.where(ok, p + dh * w_size + dw, 0), ok, cp, c)
        dyt = _rows(dy_ref, p, valid, cop, co)
        return acc + plt.dot(xt, dyt, trans_a=True)

    acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((cp, cop), jnp.float32))
    dw_ref[0, 0] = acc


def _geometry(x, c_out: int) -> dict:
    """The kernels' static shape arguments for input x and c_out output channels."""
    n, h, w, c = x.shape
    return dict(n_pix=n * h * w, h_size=h, w_size=w, c=c, co=c_out, cp=_pow2(c), cop=_pow2(c_out))


def _call(kernel, geometry: dict, tuning: Tuning, **kw):
    """pl.pallas_call of `kernel` with its shape arguments: Triton on the GPU, else Pallas's interpreter."""
    interpret = _interpret()
    params = {}
    if not interpret:
        params = {"compiler_params": plt.CompilerParams(num_warps=tuning.warps, num_stages=tuning.stages)}
    return pl.pallas_call(functools.partial(kernel, **geometry), interpret=interpret, **params, **kw)


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


@functools.partial(jax.jit, static_argnames=("tuning",))
def _forward(x, kernel, tuning: Tuning):
    block = tuning.fwd_block
    g = _geometry(x, kernel.shape[-1])
    c, co, cp, cop = g["c"], g["co"], g["cp"], g["cop"]
    wk = jnp.pad(kernel.reshape(9, c, co), ((0, 0), (0, cp - c), (0, cop - co))).astype(x.dtype)
    y = _call(
        functools.partial(_fwd_kernel, block=block),
        g,
        tuning,
        out_shape=jax.ShapeDtypeStruct((g["n_pix"] * co,), x.dtype),
        grid=(pl.cdiv(g["n_pix"], block),),
    )(x.reshape(-1), wk)
    return y.reshape(*x.shape[:3], co)


@functools.partial(jax.jit, static_argnames=("tuning",))
def _weight_grad(x, dy, tuning: Tuning):
    block, steps = tuning.wgrad_block, tuning.wgrad_steps
    g = _geometry(x, dy.shape[-1])
    cp, cop = g["cp"], g["cop"]
    groups = pl.cdiv(g["n_pix"], block * steps)
    parts = _call(
        functools.partial(_wgrad_kernel, block=block, steps=steps),
        g,
        tuning,
        out_shape=jax.ShapeDtypeStruct((groups, 9, cp, cop), jnp.float32),
        grid=(groups, 9),
        out_specs=pl.BlockSpec((1, 1, cp, cop), lambda i, t: (i, t, 0, 0)),
    )(x.reshape(-1), dy.reshape(-1))
    return parts.sum(0)[:, : g["c"], : g["co"]].reshape(3, 3, g["c"], g["co"])


@jax.custom_vjp
def conv3x3(x, kernel):
    """3x3 convolution, stride 1, zero padding 1: `lax.conv_general_dilated(x, kernel, (1, 1),
    ((1, 1), (1, 1)))` in NHWC/HWIO, up to float32 summation order.

    Args:
      x: (N, H, W, C) bfloat16.
      kernel: (3, 3, C, Cout), cast to x's dtype.

    Returns:
      (N, H, W, Cout) in x's dtype; differentiable in both arguments (the gradients' dtypes
      are the arguments').
    """
    return _forward(x, kernel, TUNING)


def _conv3x3_fwd(x, kernel):
    return _forward(x, kernel, TUNING), (x, kernel)


def _conv3x3_bwd(res, dy):
    x, kernel = res
    dy = dy.astype(x.dtype)
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # (3, 3, Cout, C)
    dx = _forward(dy, flipped.astype(x.dtype), TUNING)
    dw = _weight_grad(x, dy, TUNING)
    return dx, dw.astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
