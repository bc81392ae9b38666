"""Decoding, cropping and resizing one JPEG on the CPU: the paper's crops (Inception and center),
OpenCV or Pillow, reduced-scale decoding and crop-window decoding.

For train crops on the CPU, `jpeg_draft` lets libjpeg decode at 1/2, 1/4 or 1/8
scale (DCT scaling) whenever the crop still spans at least `image_size` pixels each
way at that scale. That needs large images or a small output size: at 224, few crops
of ImageNet-sized photos qualify; at 128 most do. It changes
those crops' pixels slightly (the reduction is a block average before the bicubic
resize; OpenCV rounds the crop to whole pixels of the reduced image); off, train
crops decode at full size as eval crops always do.

`jpeg_window` has the CPU decode only the crop's window of each JPEG (the rows and
columns outside it skipped, as TensorFlow's `decode_and_crop_jpeg` does), through
nvImageCodec's libjpeg-turbo decoder (`pip install nvidia-nvimgcodec-cu12`; no GPU
needed): the same pixels as decoding the whole image and cropping it, in less time
(docs/performance.md). Where the crop decodes at reduced scale (`jpeg_draft`), the
"""

from __future__ import annotations

import functools
import io
import math
import threading
from typing import Any

import numpy as np

EVAL_PAD = 32  # eval crop = size / (size + 32) of the shorter side (224 of 256)
CPU_BACKENDS = ("opencv", "pillow")  # the `image_backend`s that prepare one image at a time in the workers


class InputError(RuntimeError):
    """A streaming dataset that cannot be opened; the message says what to prepare."""


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the central square of side size/(size+32) of the shorter side."""
    side = int(size / (size + EVAL_PAD) * min(height, width))
    side = max(side, 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def inception_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    size: int,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering `area` of the image with aspect w/h in `ratio`.

    Args:
      rng: the example's generator.
      height, width: the image's size.
      size: the output size (for the fallback center crop).
      area: range of the crop's share of the image area.
      ratio: range of the crop's aspect ratio (width / height), drawn uniformly.
      attempts: draws before falling back to `center_crop_box`.

    Returns:
      The crop box, inside the image.
    """
    total = height * width
    for _ in range(attempts):
        target = rng.uniform(*area) * total
        aspect = rng.uniform(*ratio)
        h = int(round(math.sqrt(target / aspect)))
        w = int(round(math.sqrt(target * aspect)))
        if 0 < h <= height and 0 < w <= width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return center_crop_box(height, width, size)


def _rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1 or HxWx4 uint8 -> HxWx3 (ImageNet has a few grey and CMYK-decoded images)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise InputError(
            "image_backend 'opencv' needs OpenCV: pip install opencv-python-headless, "
            "or set --config.dataset.image_backend=pillow"
        ) from e
    cv2.setNumThreads(1)  # The grain workers are the parallelism; OpenCV's own threads would oversubscribe.
    return cv2


def check_window(backend: str = "opencv") -> None:
    """Raises InputError unless the crop-window decoder (`jpeg_window`) imports and `backend`
    (`image_backend`) uses it: OpenCV's decoding does, and so does nvjpeg's CPU share; Pillow's not."""
    if backend == "pillow":
        raise InputError(
            "dataset.jpeg_window=True decodes with OpenCV's pixels; image_backend 'pillow' would ignore it: "
            "set dataset.image_backend=opencv (or nvjpeg), or dataset.jpeg_window=False"
        )
    try:
        _nvimgcodec()
    except InputError as e:
        raise InputError(f"dataset.jpeg_window needs {e}; or set --config.dataset.jpeg_window=False") from e


@functools.cache
def _nvimgcodec():
    """nvImageCodec's module, imported once per process."""
    import importlib
    import os

    # Importing it loads every codec extension, and each one whose CUDA library is absent (nvJPEG2000,
    # nvTIFF; all of them off the GPU) prints to the C stderr; only the CPU JPEG decoder is used here.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            return importlib.import_module("nvidia.nvimgcodec")
    except ImportError as e:
        raise InputError(
            "nvImageCodec, which is not installed: pip install nvidia-nvimgcodec-cu12 (-cu13 on CUDA 13; "
            "qresnet's [nvimgcodec] extra)"
        ) from e
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_WINDOW = threading.local()  # each thread's decoder, and the process it was made in


def _window_decoder():
    """This thread's nvImageCodec decoder: libjpeg-turbo on the CPU, one thread (the workers are
    the parallelism), EXIF orientation ignored as by the other backends. Made in the thread and
    process that use it: a decoder's own threads do not survive a fork into a worker process."""
    import os

    nvimgcodec = _nvimgcodec()
    if getattr(_WINDOW, "pid", None) != os.getpid():
        _WINDOW.decoder = nvimgcodec.Decoder(
            device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
            max_num_cpu_threads=1,
            backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)],
        )
        _WINDOW.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)
        _WINDOW.pid = os.getpid()
    return nvimgcodec, _WINDOW.decoder, _WINDOW.params


def decode_window(data: bytes, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """The box (top, left, h, w) of a JPEG decoded alone, uint8 RGB (h, w, 3); None where the
    decoder cannot take the file, or the file is not greyscale or colour (the caller then decodes it
    whole)."""
    nvimgcodec, decoder, params = _window_decoder()
    top, left, h, w = box
    try:
        stream = nvimgcodec.CodeStream(data)
        # CMYK files (a few in ImageNet) convert to RGB up to 1 level off OpenCV's: those go OpenCV's way.
        if stream.codec_name != "jpeg" or stream.num_channels not in (1, 3):
            return None
        region = nvimgcodec.Region(top, left, top + h, left + w)
        image = decoder.decode(stream.get_sub_code_stream(region=region), params=params)
    except (RuntimeError, ValueError):  # what nvImageCodec raises for a file it cannot parse
        return None
    if image is None:
        return None
    out = np.asarray(image.cpu())
    return out if out.shape == (h, w, 3) else None


def _cpu_backend(backend: str) -> None:
    if backend not in CPU_BACKENDS:
        raise InputError(f"image_backend {backend!r} does not prepare single images; use one of {CPU_BACKENDS}")


def _cv2_resize(cv2, image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize to size x size (Keys a = -0.75, no antialiasing), uint8."""
    return np.asarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC), np.uint8)


def crop_and_resize(
    image: np.ndarray, box: tuple[int, int, int, int], size: int, backend: str = "opencv"
) -> np.ndarray:
    """The box of a decoded RGB `image`, bicubic-resized to size x size with `backend`, uint8."""
    _cpu_backend(backend)
    top, left, h, w = box
    image = _rgb(np.asarray(image))
    if backend == "opencv":
        return _cv2_resize(_cv2(), image[top : top + h, left : left + w], size)
    from PIL import Image

    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h)), np.uint8)


def draft_reduction(h: int, w: int, size: int) -> int:
    """The largest JPEG DCT scale-down (8, 4, 2, else 1) leaving an h x w crop >= size each way."""
    for r in (8, 4, 2):
        if min(h, w) >= size * r:
            return r
    return 1


def decode_crop_resize(
    data: bytes, box_of, size: int, draft: bool, backend: str = "opencv", window: bool = False
) -> np.ndarray:
    """Decodes a JPEG, crops it and bicubic-resizes the crop to size x size, uint8 RGB.

    Args:
      data: the JPEG file's bytes.
      box_of: (height, width) -> (top, left, h, w), the crop in full-size pixels.
      size: output side.
      draft: decode at 1/`draft_reduction` scale (output pixel i covers full-size pixels
        [i*r, (i+1)*r)), the crop mapped onto that grid (OpenCV: rounded to whole pixels of it).
      backend: "opencv" or "pillow" (module docstring).
      window: with "opencv", decode only the crop's window where the crop decodes at full size
        (`decode_window`; the same pixels).

    Returns:
      (size, size, 3) uint8.
    """
    from PIL import Image

    _cpu_backend(backend)
    img = Image.open(io.BytesIO(data))  # reads the header only
    width, height = img.size
    top, left, h, w = box_of(height, width)
    r = draft_reduction(h, w, size) if draft else 1
    if backend == "opencv":
        cv2 = _cv2()
        if window and r == 1:
            crop = decode_window(data, (top, left, h, w))
            if crop is not None:
                return _cv2_resize(cv2, crop, size)
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
            r, cv2.IMREAD_REDUCED_COLOR_8
        )
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise ValueError(f"OpenCV cannot decode this image ({len(data)} bytes, {img.format or 'unknown'} header)")
        r = round(width / bgr.shape[1])
        # The box on the reduced grid, to whole pixels (at most r/2 full-size pixels off; train
        # crops are random, so this only moves a random box slightly).
        crop = bgr[round(top / r) : round((top + h) / r), round(left / r) : round((left + w) / r)]
        return np.ascontiguousarray(_cv2_resize(cv2, crop, size)[..., ::-1])  # BGR -> RGB
    if r > 1:
        img.draft(None, (width // r, height // r))  # libjpeg picks the largest scale giving >= that size
        r = round(width / img.size[0])
    box = (left / r, top / r, (left + w) / r, (top + h) / r)
    return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC, box=box), np.uint8)


def _crop(example: dict[str, Any], box_of, size: int, draft: bool, backend: str, window: bool) -> np.ndarray:
    """The example's image (JPEG bytes or a decoded array) cropped and resized."""
    image = example["image"]
    if isinstance(image, bytes):  # np.bytes_ is a subclass
        return decode_crop_resize(bytes(image), box_of, size, draft, backend, window)
    image = np.asarray(image)
    return crop_and_resize(image, box_of(image.shape[0], image.shape[1]), size, backend)


def train_example(
    example: dict[str, Any],
    rng: np.random.Generator,
    size: int,
    draft: bool = True,
    backend: str = "opencv",
    window: bool = False,
) -> dict[str, np.ndarray]:
    """Inception crop, resize and random flip of one example (JPEG bytes or decoded)."""
    out = _crop(example, lambda h, w: inception_crop_box(rng, h, w, size), size, draft, backend, window)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return {"image": np.ascontiguousarray(out), "label": np.int32(example["label"])}


def eval_example(
    example: dict[str, Any], size: int, backend: str = "opencv", window: bool = False
) -> dict[str, np.ndarray]:
    """Center crop and resize of one example (JPEG bytes or decoded; always decoded at full size)."""
    out = _crop(example, lambda h, w: center_crop_box(h, w, size), size, False, backend, window)
    return {"image": out, "label": np.int32(example["label"])}


def _jpeg_bytes(example: dict[str, Any]) -> bytes:
    image = example["image"]
    if not isinstance(image, bytes):
        raise InputError("image_backend 'nvjpeg' decodes JPEG bytes; this source hands over decoded images")
    return bytes(image)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the file's header."""
    from PIL import Image

    width, height = Image.open(io.BytesIO(data)).size
    return height, width
