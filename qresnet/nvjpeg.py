"""JPEG decoding on the GPU for streamed datasets: NVIDIA's nvJPEG through torchvision.

`dataset.image_backend="nvjpeg"`. The CPU backends decode, crop and resize in grain's
worker processes, and on the 16 cores of an H200's host they prepare about three quarters
of the images a ResNet-50 trains on (docs/BENCHMARKS.md). With this backend the workers only
read each JPEG's bytes and draw its crop box and flip (`imagenet_input.plan_train` /
`plan_eval`, the same draws as the CPU backends'), and `decode_batch` decodes a whole batch
with nvJPEG, crops, resizes (bicubic, Keys a = -0.75, half-pixel centres, no antialiasing:
OpenCV's INTER_CUBIC) and flips on the GPU, on the calling thread's own CUDA stream, and
returns the uint8 batch as a JAX array on the GPU (the streamed train batches) or on the host
(eval batches, which are padded there). PyTorch and torchvision with CUDA are an optional
dependency (`pip install "qresnet[nvjpeg]"`); nothing else in qresnet needs them.
"""

from __future__ import annotations

import collections
import functools
import threading

import numpy as np

_local = threading.local()


class NvjpegError(RuntimeError):
    """The GPU decoder is not available; the message says what to install or use instead."""


def _torch():
    try:
        import torch
        import torchvision.io
    except ImportError as e:
        raise NvjpegError(
            f"image_backend 'nvjpeg' decodes with torchvision on an NVIDIA GPU ({e}): install PyTorch and "
            'torchvision with CUDA (pip install "qresnet[nvjpeg]"), or set --config.dataset.image_backend=opencv'
        ) from e
    if not torch.cuda.is_available():
        raise NvjpegError(
            "image_backend 'nvjpeg' needs a CUDA GPU that PyTorch can see; none found: "
            "set --config.dataset.image_backend=opencv"
        )
    return torch, torchvision.io


def check() -> None:
    """Raises NvjpegError unless PyTorch, torchvision and a CUDA GPU are there."""
    _torch()


def _as_tensor(torch, jpeg):
    """A 1-D uint8 tensor of the file: a numpy array is shared, bytes (read-only) are copied."""
    if isinstance(jpeg, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(jpeg, np.uint8))
    return torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)


def _decode(torch, tio, jpegs):
    """Decoded CHW uint8 RGB CUDA tensors; an image nvJPEG refuses (e.g. CMYK) decodes on the CPU."""
    tensors = [_as_tensor(torch, b) for b in jpegs]
    try:
        return tio.decode_jpeg(tensors, mode=tio.ImageReadMode.RGB, device="cuda")
    except RuntimeError:
        out = []
        for t in tensors:
            try:
                out.append(tio.decode_jpeg(t, mode=tio.ImageReadMode.RGB, device="cuda"))
            except RuntimeError:
                out.append(tio.decode_image(t, mode=tio.ImageReadMode.RGB).cuda())
        return out


def _stream(torch, priority: int = 0):
    """This thread's own CUDA stream of `priority` (lower is sooner; XLA's streams are 0).
    PyTorch's default (legacy) stream waits for, and is waited on by, every blocking stream of
    the device, so decoding there would take turns with the training step's kernels; torch's
    pool streams are non-blocking and run beside them."""
    streams = _local.__dict__.setdefault("streams", {})
    if priority not in streams:
        streams[priority] = torch.cuda.Stream(priority=priority)
    return streams[priority]


RESIZERS = ("torch", "triton")  # decode_batch's `resize`: per image (PyTorch), or one kernel a batch


def decode_batch(
    jpegs,
    boxes: np.ndarray,
    flips: np.ndarray,
    size: int,
    on_device: bool = False,
    priority: int = 0,
    resize: str = "torch",
):
    """Decodes, crops, resizes and flips a batch of JPEGs on the GPU.

    Args:
      jpegs: the JPEG files, each as bytes or a 1-D uint8 numpy array (used without a copy).
      boxes: (N, 4) int (top, left, h, w) crops in full-size pixels.
      flips: (N,) bool, flip horizontally after resizing.
      size: output side.
      on_device: return a JAX array on the GPU (through DLPack, copied into JAX's own memory on
        the device) instead of a host array.
      priority: the CUDA priority of the decoding stream (0: as XLA's; -1: its kernels' blocks
        are scheduled before the training step's; that fed a ResNet-50 step worse, 0.72 of its
        fixed-data speed against 0.84, docs/BENCHMARKS.md).
      resize: "torch" crops and resizes image by image (PyTorch's bicubic `interpolate`, two
        kernels an image); "triton" does the whole batch's crops, resizes and flips in one
        kernel (`resize_taps`, `_resize_kernel`), the same bicubic up to float rounding.

    Returns:
      (N, size, size, 3) uint8 RGB, on the host (numpy) or, with `on_device`, a jax.Array.
    """
    if resize not in RESIZERS:
        raise ValueError(f"resize={resize!r} is not one of {RESIZERS}")
    torch, tio = _torch()
    with torch.cuda.stream(_stream(torch, priority)):
        images = _decode(torch, tio, jpegs)
        crop_resize = _crop_resize_triton if resize == "triton" else _crop_resize_torch
        return _hand_over(torch, crop_resize(torch, images, boxes, flips, size), on_device)


def _crop_resize_torch(torch, images, boxes, flips, size):
    """(N, size, size, 3) uint8: each image cropped, resized (bicubic) and flipped on its own."""
    resized = []
    for x, (top, left, h, w) in zip(images, np.asarray(boxes).tolist()):
        crop = x[None, :, top : top + h, left : left + w].float()
        resized.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False))
    y = torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8)
    flip = torch.as_tensor(np.asarray(flips, bool), device=y.device)[:, None, None, None]
    y = torch.where(flip, y.flip(-1), y)
    return y.permute(0, 2, 3, 1).contiguous()


def resize_taps(boxes: np.ndarray, flips: np.ndarray, size: int):
    """The bicubic taps of a batch's crops, as PyTorch's `interpolate(mode="bicubic",
    align_corners=False)` computes them (float32; Keys a = -0.75, half-pixel centres, taps
    clamped at the crop's edges: OpenCV's INTER_CUBIC too).

    Args:
      boxes: (N, 4) int (top, left, h, w) crops in full-size pixels.
      flips: (N,) bool: the output flipped horizontally (its columns' taps reversed).
      size: output side.

    Returns:
      rows, row_weights, cols, col_weights: (N, size, 4) int32 image rows (columns) and float32
      weights; output pixel (y, x) of image n is sum_a row_weights[n, y, a] * sum_b
      col_weights[n, x, b] * image_n[rows[n, y, a], cols[n, x, b]].
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    a = np.float32(-0.75)
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
    centres = np.arange(size, dtype=np.float32) + np.float32(0.5)

    def axis(start, length):
        src = (length.astype(np.float32) / np.float32(size))[:, None] * centres - np.float32(0.5)
        first = np.floor(src)
        t = src - first
        weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1).astype(np.float32)
        taps = first.astype(np.int64)[..., None] + np.arange(-1, 3)
        return (np.clip(taps, 0, length[:, None, None] - 1) + start[:, None, None]).astype(np.int32), weights

    rows, row_weights = axis(boxes[:, 0], boxes[:, 2])
    cols, col_weights = axis(boxes[:, 1], boxes[:, 3])
    flip = np.asarray(flips, bool).reshape(-1)
    cols[flip], col_weights[flip] = cols[flip, ::-1], col_weights[flip, ::-1]
    return rows, row_weights, cols, col_weights


def _crop_resize_triton(torch, images, boxes, flips, size):
    """`_crop_resize_torch` in one kernel for the batch: the decoded images concatenated into one
    buffer (one copy), `resize_taps` from the host, `_resize_kernel` gathering and summing."""
    flat = torch.cat([x.reshape(-1) for x in images])
    hw = np.asarray([x.shape[1:] for x in images], np.int64)
    plane = hw[:, 0] * hw[:, 1]
    meta = np.stack([np.cumsum(3 * plane) - 3 * plane, plane, hw[:, 1]], 1)
    cuda = lambda a: torch.as_tensor(a, device=flat.device)  # noqa: E731
    taps = [cuda(t) for t in resize_taps(boxes, flips, size)]
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=flat.device)
    block = 256
    grid = (len(images), -(-size * size // block))
    _resize_kernel()[grid](flat, cuda(meta), *taps, out, size, block)
    return out


@functools.cache
def _resize_kernel():
    """The Triton kernel: one program per `block` output pixels of one image, all three channels;
    PyTorch's order of sums (each tap row across, then the rows down) and its rounding (half to
    even), clamped to uint8."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(src, meta, rows, row_w, cols, col_w, out, size: tl.constexpr, block: tl.constexpr):
        n = tl.program_id(0)
        p = tl.program_id(1) * block + tl.arange(0, block)
        inside = p < size * size
        y, x = p // size, p % size
        offset, plane, width = tl.load(meta + 3 * n), tl.load(meta + 3 * n + 1), tl.load(meta + 3 * n + 2)
        ty, tx = (n * size + y) * 4, (n * size + x) * 4
        for c in tl.static_range(3):
            total = tl.zeros((block,), tl.float32)
            for i in tl.static_range(4):
                r = tl.load(rows + ty + i, mask=inside, other=0).to(tl.int64)
                across = tl.zeros((block,), tl.float32)
                for j in tl.static_range(4):
                    col = tl.load(cols + tx + j, mask=inside, other=0).to(tl.int64)
                    v = tl.load(src + offset + c * plane + r * width + col, mask=inside, other=0).to(tl.float32)
                    across += v * tl.load(col_w + tx + j, mask=inside, other=0.0)
                total += across * tl.load(row_w + ty + i, mask=inside, other=0.0)
            low = tl.floor(total)
            frac = total - low
            odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
            up = (frac > 0.5) | ((frac == 0.5) & odd)
            v = tl.minimum(tl.maximum(low + up.to(tl.float32), 0.0), 255.0)
            tl.store(out + p * 3 + n * size * size * 3 + c, v.to(tl.uint8), mask=inside)

    return kernel


def _hand_over(torch, y, on_device):
    """The finished uint8 batch as a host array or, with `on_device`, a JAX array on the GPU."""
    if on_device:
        import jax

        # A copy that JAX owns, queued on JAX's stream after torch's stream has written y (the
        # DLPack exchange orders the two streams) and before the training step that reads it.
        # y is held until the copy is done, so torch cannot hand its memory to a later batch
        # while JAX still reads it. Waiting for the copy here instead (it queues behind the steps
        # already dispatched) held the pipeline to 11,400 images/s against 14,300 (BENCHMARKS.md).
        # The batch is finished before JAX sees it: otherwise JAX's stream could wait at the copy
        # for torch's kernels, and the training steps queued behind the copy with it. (Measured
        # on an H200: no faster fed, 0.82-0.84; a profile shows the fed step's kernels as long as
        # alone, the loss being time the GPU waits for the next batch: BENCHMARKS.md.)
        torch.cuda.current_stream().synchronize()
        z = jax.numpy.array(jax.dlpack.from_dlpack(y), copy=True)
        _hold(z, y)
        return z
    return y.cpu().numpy()


def _hold(copy, source, most: int = 8) -> None:
    """Keeps `source` alive until `copy` (made from it on the device) is ready; drops the sources
    of finished copies, and waits for the oldest when `most` are held."""
    held = _local.__dict__.setdefault("held", collections.deque())
    held.append((copy, source))
    while held and (len(held) > most or held[0][0].is_ready()):
        held[0][0].block_until_ready()
        held.popleft()
