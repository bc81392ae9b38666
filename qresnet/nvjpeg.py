"""JPEG decoding on the GPU for streamed datasets: NVIDIA's nvJPEG through torchvision.

`dataset.image_backend="nvjpeg"`. The CPU backends decode, crop and resize in grain's
worker processes; on a host with few cores per GPU they may not keep up with a ResNet-50
(docs/performance.md). With this backend the workers
read each JPEG's bytes and draw its crop box and flip (`imagenet_input.plan_train` /
`plan_eval`, the same draws as the CPU backends'; for train batches they also decode a share
themselves, `StreamSpec.cpu_decode_share`), and `decode_batch` decodes a whole batch
with nvJPEG, crops, resizes (bicubic, Keys a = -0.75, half-pixel centres, no antialiasing:
OpenCV's INTER_CUBIC) and flips on the GPU, on the calling thread's own CUDA stream, and
returns the uint8 batch as a JAX array on the GPU (the streamed train batches) or on the host
(eval batches, which are padded there). PyTorch and torchvision with CUDA are an optional
dependency (`pip install "qresnet[nvjpeg]"`); nothing else in qresnet needs them.

`decoder="nvimgcodec"` (`dataset.gpu_decoder`) decodes with nvImageCodec instead of
torchvision: the batch in one call, on the GPU's hardware JPEG decoder where it has one, only
each crop's window (`pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg` on CUDA 13; -cu12 and
nvidia-nvjpeg-cu12 on CUDA 12); the resize, flips and hand-over stay as they are. Its pixels
are the CPU decoders' (libjpeg-turbo, OpenCV) where torchvision's differ by 1.4 levels on
average; it is no faster than torchvision and feeds a ResNet-50 no better.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

GPU_DECODERS = ("torchvision", "nvimgcodec")
_local = threading.local()
_phases: collections.Counter = collections.Counter()  # seconds per phase of decode_batch, all threads
_phases_lock = threading.Lock()


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


def check(decoder: str = "torchvision") -> None:
    """Raises NvjpegError unless PyTorch, torchvision, a CUDA GPU and `decoder` are there."""
    if decoder not in GPU_DECODERS:
        raise NvjpegError(f"gpu_decoder {decoder!r} is not one of {GPU_DECODERS}; set --config.dataset.gpu_decoder")
    _torch()
    if decoder == "nvimgcodec":
        _nvimgcodec()


def _nvimgcodec():
    from qresnet import jpeg_decode

    try:
        return jpeg_decode._nvimgcodec()
    except jpeg_decode.InputError as e:
        raise NvjpegError(
            f"gpu_decoder 'nvimgcodec' needs it, and nvJPEG ({e}); or set --config.dataset.gpu_decoder=torchvision"
        ) from e


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


def _windows(torch, tio, jpegs, boxes):
    """nvImageCodec: each box's window of each JPEG, decoded on the GPU in one call on the current
    stream, as CHW uint8 CUDA tensors; an image it cannot decode (e.g. CMYK) decodes with
    torchvision, on the CPU, and is cropped."""
    nvimgcodec = _nvimgcodec()
    if getattr(_local, "nvimgcodec", None) is None:  # one decoder per thread, with its own state
        # The GPU's backends only (the hardware decoder first): a CPU fallback would be silently slow.
        kinds = ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU")
        backends = [nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, k)) for k in kinds]
        # nvImageCodec refuses crop windows with fancy upsampling (the CPU decoders' chroma) on nvJPEG < 13.2, as
        # the copy bundled with torchvision can be: every image then comes back None. Allowed: at worst a
        # 1-pixel-wide image edge differs.
        options = " ".join(f"{d}:enable_roi_fancy_upsampling=1" for d in ("nvjpeg_hw_decoder", "nvjpeg_cuda_decoder"))
        _local.nvimgcodec = nvimgcodec.Decoder(
            device_id=torch.cuda.current_device(), backends=backends, options=options
        )
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)
    streams = [
        nvimgcodec.CodeStream(bytes(b)).get_sub_code_stream(region=nvimgcodec.Region(t, left, t + h, left + w))
        for b, (t, left, h, w) in zip(jpegs, boxes)
    ]
    images = _local.nvimgcodec.decode(streams, params=params, cuda_stream=torch.cuda.current_stream().cuda_stream)
    if all(im is None for im in images):
        raise NvjpegError(
            "nvImageCodec decoded none of the batch on the GPU: install nvJPEG for it (pip install nvidia-nvjpeg on "
            "CUDA 13, nvidia-nvjpeg-cu12 on CUDA 12), or set --config.dataset.gpu_decoder=torchvision"
        )
    out = []
    for im, b, (t, left, h, w) in zip(images, jpegs, boxes):
        if im is None:
            x = tio.decode_image(_as_tensor(torch, b), mode=tio.ImageReadMode.RGB)[:, t : t + h, left : left + w]
            out.append(x.cuda())
        else:
            out.append(torch.as_tensor(im, device="cuda").permute(2, 0, 1))
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


def decode_batch(
    jpegs,
    boxes: np.ndarray,
    flips: np.ndarray,
    size: int,
    on_device: bool = False,
    priority: int = 0,
    decoder: str = "torchvision",
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
        are scheduled before the training step's, which feeds a ResNet-50 step worse).
      decoder: "torchvision" (nvJPEG through torchvision) or "nvimgcodec" (module docstring).

    Returns:
      (N, size, size, 3) uint8 RGB, on the host (numpy) or, with `on_device`, a jax.Array.
    """
    torch, tio = _torch()
    with torch.cuda.stream(_stream(torch, priority)):
        return _decode_crop_resize(torch, tio, jpegs, boxes, flips, size, on_device, decoder)


def phase_seconds(reset: bool = False) -> dict[str, float]:
    """Seconds that `decode_batch` spent in each phase, summed over calls and threads since the
    last reset, and the calls ("batches"): "decode" (nvJPEG), "resize" (launching the crops,
    resizes and flips), "sync" (waiting for the batch's GPU work), "hand_over" (JAX's copy, or
    the copy to the host). Wall time in each thread: it includes waiting for the GPU and for
    Python's interpreter lock, which is what tells them apart when the GPU is shared.

    Args:
      reset: start the sums again after reading them.

    Returns:
      {phase: seconds, "batches": calls}.
    """
    with _phases_lock:
        out = dict(_phases)
        if reset:
            _phases.clear()
    return out


def _timed(phases: dict, name: str, start: float) -> float:
    now = time.perf_counter()
    phases[name] = phases.get(name, 0.0) + now - start
    return now


def _decode_crop_resize(torch, tio, jpegs, boxes, flips, size, on_device, decoder="torchvision"):
    phases, t = {"batches": 1}, time.perf_counter()
    boxes = np.asarray(boxes).tolist()
    if decoder == "nvimgcodec":
        crops = _windows(torch, tio, jpegs, boxes)
    else:
        images = _decode(torch, tio, jpegs)
        crops = [x[:, top : top + h, left : left + w] for x, (top, left, h, w) in zip(images, boxes)]
    t = _timed(phases, "decode", t)
    resized = []
    for x in crops:
        crop = x[None].float()
        resized.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False))
    y = torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8)
    flip = torch.as_tensor(np.asarray(flips, bool), device=y.device)[:, None, None, None]
    y = torch.where(flip, y.flip(-1), y)
    y = y.permute(0, 2, 3, 1).contiguous()
    out = _hand_over(torch, y, on_device, phases, _timed(phases, "resize", t))
    with _phases_lock:
        _phases.update(phases)
    return out


def _hand_over(torch, y, on_device, phases, t):
    """The finished batch y as a JAX array on the GPU or a host array; adds its phases' times."""
    if on_device:
        import jax

        # A copy that JAX owns, queued on JAX's stream after torch's stream has written y (the
        # DLPack exchange orders the two streams) and before the training step that reads it.
        # y is held until the copy is done, so torch cannot hand its memory to a later batch
        # while JAX still reads it. Waiting for the copy here instead would queue it behind the
        # steps already dispatched and slow the pipeline by a fifth. The batch is finished before
        # JAX sees it: otherwise JAX's stream could wait at the copy for torch's kernels, and the
        # training steps queued behind the copy with it.
        torch.cuda.current_stream().synchronize()
        t = _timed(phases, "sync", t)
        z = jax.numpy.array(jax.dlpack.from_dlpack(y), copy=True)
        _hold(z, y)
        _timed(phases, "hand_over", t)
        return z
    y = y.cpu().numpy()  # waits for the batch's GPU work, then copies
    _timed(phases, "hand_over", t)
    return y


def _hold(copy, source, most: int = 8) -> None:
    """Keeps `source` alive until `copy` (made from it on the device) is ready; drops the sources
    of finished copies, and waits for the oldest when `most` are held."""
    held = _local.__dict__.setdefault("held", collections.deque())
    held.append((copy, source))
    while held and (len(held) > most or held[0][0].is_ready()):
        held[0][0].block_until_ready()
        held.popleft()
