"""Streaming input for ImageNet-sized datasets: TFDS array_record read by grain, the paper's preprocessing.

Datasets too large to hold on the accelerator (`imagenet2012`) stream from a
prepared TFDS dataset through `tfds.data_source` (array_record; no TensorFlow
needed to read it) and a grain pipeline whose worker processes decode and crop:

- train (paper.md section 4): an Inception crop as TensorFlow's
  `sample_distorted_bounding_box` draws it (area 0.08-1 of the image, aspect
  ratio 3/4-4/3, 10 attempts, then the center crop below), bicubic resize to the
  model's size, random horizontal flip;
- eval: the central square of side size/(size+32) of the shorter side, bicubic
  resize.

The source hands over the JPEG bytes (TFDS `SkipDecoding`) and the workers decode,
crop and resize them with OpenCV (`image_backend="opencv"`, the default: libjpeg-turbo
and a bicubic resize without antialiasing, as TensorFlow's `tf.image.resize` in the
paper's pipeline; much less time per image than Pillow, docs/BENCHMARKS.md) or with
Pillow (`"pillow"`: its bicubic resize antialiases when it shrinks). With `"nvjpeg"`
the workers read the bytes and draw each crop and flip, and the GPU decodes, crops and
resizes whole batches (`qresnet/nvjpeg.py`; the same draws, OpenCV's resize kernel),
`decode_batches_per_call` at a time; the workers decode the first `cpu_decode_share`
of each train batch themselves (OpenCV), since torchvision's decoder does one call at
a time per process and slows while the model trains (docs/BENCHMARKS.md). All ignore
EXIF orientation, as TensorFlow's decoder does.

For train crops on the CPU, `jpeg_draft` lets libjpeg decode at 1/2, 1/4 or 1/8
scale (DCT scaling) whenever the crop still spans at least `image_size` pixels each
way at that scale. That needs large images or a small output size: at 224, few crops
of ImageNet-sized photos qualify (docs/BENCHMARKS.md); at 128 most do. It changes
those crops' pixels slightly (the reduction is a block average before the bicubic
resize; OpenCV rounds the crop to whole pixels of the reduced image); off, train
crops decode at full size as eval crops always do.

`jpeg_window` has the CPU decode only the crop's window of each JPEG (the rows and
columns outside it skipped, as TensorFlow's `decode_and_crop_jpeg` does), through
nvImageCodec's libjpeg-turbo decoder (`pip install nvidia-nvimgcodec-cu12`; no GPU
needed): the same pixels as decoding the whole image and cropping it, in less time
(docs/BENCHMARKS.md). Where the crop decodes at reduced scale (`jpeg_draft`), the
file is CMYK, or the decoder cannot take it, OpenCV decodes it as without the option.

Batches leave as uint8 (N, S, S, 3) with int32 labels; mean/std normalisation
happens on the device (`data.normalize`). Every random choice is a function of
(seed, epoch, example), so an epoch is reproducible and a run resumed at an epoch
boundary sees the same data. TFDS prepares `imagenet2012` as TFRecord by
default; for streaming prepare it as array_record:
`tfds build imagenet2012 --manual_dir DIR --file_format=array_record`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import itertools
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

EVAL_PAD = 32  # eval crop = size / (size + 32) of the shorter side (224 of 256)
BACKENDS = ("opencv", "pillow", "nvjpeg")  # nvjpeg: decoded on the GPU (qresnet/nvjpeg.py)
CPU_BACKENDS = ("opencv", "pillow")  # those that prepare one image at a time in the workers


class InputError(RuntimeError):
    """A streaming dataset that cannot be opened; the message says what to prepare."""


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Where and how to stream: TFDS name and data dir, output size, batch, workers, whether
    train crops decode JPEGs at reduced scale where they can (`jpeg_draft`), and the library
    that decodes and resizes (`image_backend`, one of `BACKENDS`)."""

    tfds_name: str
    data_dir: str
    image_size: int
    batch_size: int
    eval_batch_size: int
    workers: int = 0
    jpeg_draft: bool = True
    jpeg_window: bool = False  # CPU decoding of the crop's window only (nvImageCodec; module docstring)
    image_backend: str = "opencv"
    decode_threads: int = 3  # nvjpeg: threads of the training process that launch the GPU decoding
    decode_on_device: bool = True  # nvjpeg: train batches stay on the GPU (DLPack), not copied to the host
    decode_priority: int = 0  # nvjpeg: CUDA priority of the decoding streams (-1: ahead of XLA's 0)
    decode_batches_per_call: int = 2  # nvjpeg: batches decoded together, in one nvJPEG call
    cpu_decode_share: float = 0.7  # nvjpeg: share of each train batch decoded in the workers (OpenCV)
    gpu_decoder: str = "torchvision"  # nvjpeg: "torchvision" or "nvimgcodec" (nvjpeg.GPU_DECODERS)
    train_split: str = "train"
    eval_split: str = "validation"


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


def check_backend(name: str, gpu_decoder: str = "torchvision") -> None:
    """Raises InputError unless `name` is one of BACKENDS and its library (with "nvjpeg", that of
    `gpu_decoder` too) imports."""
    if name not in BACKENDS:
        raise InputError(f"image_backend {name!r} is not one of {BACKENDS}; set --config.dataset.image_backend")
    if name == "opencv":
        _cv2()
    if name == "nvjpeg":
        from qresnet import nvjpeg

        try:
            nvjpeg.check(gpu_decoder)
        except nvjpeg.NvjpegError as e:
            raise InputError(str(e)) from e


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


def plan_train(example: dict[str, Any], rng: np.random.Generator, size: int) -> dict[str, Any]:
    """What the GPU decoder needs for one train example: its bytes, crop box and flip, drawn from
    `rng` exactly as `train_example` draws them."""
    data = _jpeg_bytes(example)
    box = inception_crop_box(rng, *_jpeg_size(data), size)
    flip = rng.random() < 0.5
    return {"jpeg": data, "box": np.asarray(box, np.int32), "flip": flip, "label": np.int32(example["label"])}


def plan_eval(example: dict[str, Any], size: int) -> dict[str, Any]:
    """`plan_train` for an eval example: the center crop, no flip."""
    data = _jpeg_bytes(example)
    box = center_crop_box(*_jpeg_size(data), size)
    return {"jpeg": data, "box": np.asarray(box, np.int32), "flip": False, "label": np.int32(example["label"])}


def collate_plans(
    plans: list[dict[str, Any]], cpu_images: int = 0, size: int = 0, draft: bool = False, window: bool = False
) -> dict[str, np.ndarray]:
    """A batch of plans as arrays (the JPEGs concatenated, with offsets), so that grain's workers
    hand over one batch at a time through shared memory rather than one example at a time.

    Args:
      plans: `plan_train` or `plan_eval` of each example, in batch order.
      cpu_images: decode the first this many here, on the CPU with OpenCV (as the opencv backend
        would, from the same draws: `draft` and `window` as its `jpeg_draft` and `jpeg_window`,
        `size` the output side), into
        "cpu_image"; the JPEGs, boxes and flips then cover the others only (labels: all).

    Returns:
      {"jpeg", "offsets", "box", "flip", "label"[, "cpu_image"]}.
    """
    out = {"label": np.asarray([p["label"] for p in plans], np.int32)}
    if cpu_images:
        images = []
        for p in plans[:cpu_images]:
            box = tuple(int(v) for v in p["box"])
            image = decode_crop_resize(p["jpeg"], lambda h, w, box=box: box, size, draft, "opencv", window)
            images.append(image[:, ::-1] if p["flip"] else image)
        out["cpu_image"] = np.ascontiguousarray(np.stack(images))
        plans = plans[cpu_images:]
    jpegs = [np.frombuffer(p["jpeg"], np.uint8) for p in plans]
    return out | {
        "jpeg": np.concatenate(jpegs),
        "offsets": np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64),
        "box": np.stack([p["box"] for p in plans]),
        "flip": np.asarray([p["flip"] for p in plans], bool),
    }


def _gpu_batches(
    batches,
    size: int,
    threads: int = 1,
    ahead: int = 2,
    on_device: bool = False,
    priority: int = 0,
    per_call: int = 1,
    decoder: str = "torchvision",
):
    """Decodes the collated batches of plans on the GPU (`nvjpeg.decode_batch` with `decoder`, on
    streams of `priority`), `per_call` batches in one call, in `threads` background threads, up to `ahead`
    (at least `threads`, so that every thread has work) calls ahead of the consumer; yields
    {"image", "label"} per batch, in order, images as host arrays or, with `on_device`, as
    jax.Arrays on the GPU. (torchvision decodes one call at a time per process, whatever the
    threads; two batches a call fed a ResNet-50 better than one, docs/BENCHMARKS.md.)"""
    from qresnet import nvjpeg

    def decode(group):
        jpegs = []
        for b in group:
            o = b["offsets"]
            jpegs += [b["jpeg"][o[i] : o[i + 1]] for i in range(len(o) - 1)]  # views, not copies
        boxes = np.concatenate([b["box"] for b in group])
        flips = np.concatenate([b["flip"] for b in group])
        images = nvjpeg.decode_batch(jpegs, boxes, flips, size, on_device, priority, decoder=decoder)
        out, end = [], 0
        for b in group:
            start, end = end, end + len(b["box"])
            image = images[start:end]
            if "cpu_image" in b:  # the batch's first images, decoded in a worker (collate_plans)
                image = _concatenate(b["cpu_image"], image)
            out.append({"image": image, "label": b["label"]})
        return out

    for group in _ordered_map(decode, _groups(batches, per_call), threads, max(ahead, threads)):
        yield from group


def _concatenate(host: np.ndarray, decoded):
    """host and decoded (a host array, or a jax.Array on the GPU) along the batch, where decoded is."""
    if isinstance(decoded, np.ndarray):
        return np.concatenate([host, decoded])
    import jax

    return jax.numpy.concatenate([jax.device_put(host, decoded.sharding), decoded])


def _groups(items, n: int):
    """Lists of `n` consecutive items of the iterator (the last one may be shorter)."""
    items = iter(items)
    while group := list(itertools.islice(items, n)):
        yield group


def _ordered_map(fn, items, threads: int, ahead: int):
    """Yields fn(item) for each item of the iterator `items`, in order. A feeder thread reads
    `items` and hands them to `threads` worker threads, at most `ahead` results ahead of the
    consumer; an exception, in `fn` or in `items`, is raised here at its place in the order.
    Closing the generator stops the threads."""
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode")
    futures, stop = queue.Queue(ahead), threading.Event()

    def put(future) -> bool:
        while not stop.is_set():
            try:
                futures.put(future, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed():
        try:
            for item in items:
                if not put(pool.submit(fn, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - raised to the consumer in order
            failed = concurrent.futures.Future()
            failed.set_exception(e)
            put(failed)
        put(None)

    threading.Thread(target=feed, daemon=True, name="decode-feed").start()
    try:
        while (future := futures.get()) is not None:
            yield future.result()
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def open_source(spec: StreamSpec, split: str):
    """The split as a random-access `tfds.data_source` of JPEG bytes; errors name what to prepare."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise InputError("streaming datasets need tensorflow-datasets: pip install tensorflow-datasets") from e
    try:
        return tfds.data_source(
            spec.tfds_name,
            split=split,
            data_dir=spec.data_dir or None,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},  # the workers decode (`decode_crop_resize`)
        )
    except Exception as e:  # noqa: BLE001 - TFDS raises many types for a missing or unprepared dataset
        raise InputError(
            f"cannot open TFDS dataset {spec.tfds_name!r} split {split!r} in "
            f"{spec.data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'} ({type(e).__name__}: {e}); prepare it as "
            f"array_record, e.g. `tfds build {spec.tfds_name} --file_format=array_record` (imagenet2012 also needs "
            "--manual_dir with the downloaded tars), and set --config.dataset.tfds_dir"
        ) from e


def _grain():
    try:
        import grain
    except ImportError as e:
        raise InputError("streaming datasets need grain: pip install grain") from e
    return grain


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(spec: StreamSpec, source, *, seed: int, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of shuffled, augmented, full batches (the remainder is dropped).

    Args:
      spec: sizes and workers.
      source: the train split (`open_source`).
      seed: the run's seed.
      epoch: the epoch, 0-based; order and crops are a function of (seed, epoch).

    Returns:
      An iterator of {"image": uint8 (B, S, S, 3), "label": int32 (B,)}.
    """
    grain = _grain()
    epoch_seed = _epoch_seed(seed, epoch)
    size, draft, backend, window = spec.image_size, spec.jpeg_draft, spec.image_backend, spec.jpeg_window
    if backend == "nvjpeg":  # the workers plan (and decode the CPU's share); the GPU decodes the rest
        ds = grain.MapDataset.source(source).shuffle(seed=epoch_seed)
        ds = ds.random_map(lambda ex, rng: plan_train(ex, rng, size), seed=epoch_seed)
        # The CPU's share of each batch is decoded where it is collated, in the worker processes.
        cpu = min(round(spec.cpu_decode_share * spec.batch_size), spec.batch_size - 1)
        collate = functools.partial(collate_plans, cpu_images=cpu, size=size, draft=draft, window=window)
        ds = ds.batch(spec.batch_size, drop_remainder=True, batch_fn=collate)
        batches = _parallel(grain, ds, spec.workers)
        return _gpu_batches(
            batches,
            size,
            spec.decode_threads,
            on_device=spec.decode_on_device,
            priority=spec.decode_priority,
            per_call=spec.decode_batches_per_call,
            decoder=spec.gpu_decoder,
        )
    ds = (
        grain.MapDataset.source(source)
        .shuffle(seed=epoch_seed)
        .random_map(lambda ex, rng: train_example(ex, rng, size, draft, backend, window), seed=epoch_seed)
        .batch(spec.batch_size, drop_remainder=True)
    )
    return iter(_parallel(grain, ds, spec.workers))


def eval_batches(spec: StreamSpec, source) -> Iterator[dict[str, np.ndarray]]:
    """The eval split in order, in batches of eval_batch_size, the last one padded.

    Returns:
      An iterator of {"image", "label", "mask"}; mask is 1.0 for real examples.
    """
    grain = _grain()
    size, batch, backend = spec.image_size, spec.eval_batch_size, spec.image_backend
    if backend == "nvjpeg":
        ds = grain.MapDataset.source(source).map(lambda ex: plan_eval(ex, size))
        ds = ds.batch(batch, drop_remainder=False, batch_fn=collate_plans)
        batches = _gpu_batches(
            _parallel(grain, ds, spec.workers),
            size,
            spec.decode_threads,
            priority=spec.decode_priority,
            decoder=spec.gpu_decoder,
        )
    else:
        ds = grain.MapDataset.source(source).map(lambda ex: eval_example(ex, size, backend, spec.jpeg_window))
        batches = _parallel(grain, ds.batch(batch, drop_remainder=False), spec.workers)
    for b in batches:
        n = len(b["label"])
        pad = batch - n
        yield {
            "image": np.concatenate([b["image"], np.zeros((pad, *b["image"].shape[1:]), np.uint8)]),
            "label": np.concatenate([b["label"], np.zeros(pad, np.int32)]),
            "mask": np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]),
        }


def _parallel(grain, ds, workers: int):
    if workers <= 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; qresnet's CLI parses with argparse
        flags.FLAGS.mark_as_parsed()
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
