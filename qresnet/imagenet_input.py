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
crop and resize them (`qresnet.jpeg_decode`) with OpenCV (`image_backend="opencv"`,
the default: libjpeg-turbo and a bicubic resize without antialiasing, as TensorFlow's
`tf.image.resize` in the paper's pipeline) or with Pillow (`"pillow"`: its bicubic
resize antialiases when it shrinks). With `"nvjpeg"` the workers read the bytes and
draw each crop and flip, and the GPU decodes, crops and resizes whole batches
(`qresnet/nvjpeg.py`; the same draws, OpenCV's resize kernel),
`decode_batches_per_call` at a time; the workers decode the first `cpu_decode_share`
of each train batch themselves (OpenCV), since torchvision's decoder does one call at
a time per process and slows while the model trains. All ignore EXIF orientation, as
TensorFlow's decoder does.

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
import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from qresnet.jpeg_decode import (  # noqa: F401 - the decoding functions are part of this module's API
    CPU_BACKENDS,
    EVAL_PAD,
    InputError,
    _cv2,
    _jpeg_bytes,
    _jpeg_size,
    _nvimgcodec,
    center_crop_box,
    check_window,
    crop_and_resize,
    decode_crop_resize,
    decode_window,
    draft_reduction,
    eval_example,
    inception_crop_box,
    train_example,
)

BACKENDS = ("opencv", "pillow", "nvjpeg")  # nvjpeg: decoded on the GPU (qresnet/nvjpeg.py)


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
    threads, so batching calls is what feeds a model faster.)"""
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


def _process_part(grain, ds, batch: int, process: tuple[int, int]):
    """This process's rows of each batch of `ds`: with P processes, process p reads rows
    [p*B/P, (p+1)*B/P) of every global batch of B (the remainder dropped), and prepares only those."""
    index, count = process
    if count == 1:
        return ds
    local = batch // count
    n = len(ds) // batch * local
    return grain.MapDataset.range(n).map(lambda k: ds[k // local * batch + index * local + k % local])


def train_batches(
    spec: StreamSpec, source, *, seed: int, epoch: int, process: tuple[int, int] = (0, 1)
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of shuffled, augmented, full batches (the remainder is dropped).

    Args:
      spec: sizes and workers.
      source: the train split (`open_source`).
      seed: the run's seed.
      epoch: the epoch, 0-based; order and crops are a function of (seed, epoch).
      process: (index, count) of a multi-process job: this process's share of each global batch
        (`_process_part`; the same examples and crops as one process would make there).

    Returns:
      An iterator of {"image": uint8 (B / count, S, S, 3), "label": int32 (B / count,)}.
    """
    grain = _grain()
    if process[1] > 1 and spec.image_backend == "nvjpeg":
        raise InputError("image_backend='nvjpeg' streams on one process; use opencv decoding for multi-process runs")
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
    )
    ds = _process_part(grain, ds, spec.batch_size, process)
    ds = ds.batch(spec.batch_size // process[1], drop_remainder=True)
    return iter(_parallel(grain, ds, spec.workers))


def eval_batches(spec: StreamSpec, source, process: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
    """The eval split in order, in batches of eval_batch_size, the last one padded; with `process`
    (index, count), this process's rows of each (`train_batches`).

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
    index, count = process
    for b in batches:
        n = len(b["label"])
        pad = batch - n
        out = {
            "image": np.concatenate([b["image"], np.zeros((pad, *b["image"].shape[1:]), np.uint8)]),
            "label": np.concatenate([b["label"], np.zeros(pad, np.int32)]),
            "mask": np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]),
        }
        # Each process decodes the whole eval batch and keeps its rows: evaluation is a small part.
        local = batch // count
        yield {k: v[index * local : (index + 1) * local] for k, v in out.items()}


def _parallel(grain, ds, workers: int):
    if workers <= 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; qresnet's CLI parses with argparse
        flags.FLAGS.mark_as_parsed()
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
