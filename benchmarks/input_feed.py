"""Does the ImageNet input pipeline keep a training step fed? (`benchmarks.input_pipeline --feed`)

qresnet's float train step is timed on fixed device data, then on the pipeline's batches (put on
the device and trained on, the host preparing the next meanwhile), in one process; optionally
under the profiler and a Python thread sampler. Also the fields every input-benchmark row takes
from its stream: the GPU-decoding settings and nvJPEG's time per phase.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from benchmarks.thread_sampler import ThreadSampler
from qresnet import imagenet_input, nvjpeg


def nvjpeg_fields(spec: imagenet_input.StreamSpec) -> dict:
    """A row's GPU-decoding settings, read from its stream's (nvjpeg rows only)."""
    if spec.image_backend != "nvjpeg":
        return {}
    fields = {
        "decode_threads": spec.decode_threads,
        "on_device": spec.decode_on_device,
        "stream_priority": spec.decode_priority,
    }
    fields |= {"gpu_decoder": spec.gpu_decoder} if spec.gpu_decoder != "torchvision" else {}
    fields |= {"batches_per_call": spec.decode_batches_per_call} if spec.decode_batches_per_call != 1 else {}
    return fields | ({"cpu_decode_share": spec.cpu_decode_share} if spec.cpu_decode_share else {})


def decode_phases() -> dict:
    """nvjpeg's decoding time per call of `decode_batch` (one call decodes `batches_per_call`
    train batches; the key says "per_batch" as the first rows did) and phase since the last
    reset (`nvjpeg.phase_seconds`), summed over the decoding threads; nothing for the CPU backends."""
    phases = nvjpeg.phase_seconds()
    n = phases.pop("batches", 0)
    return {"decode_ms_per_batch": {k: 1e3 * v / n for k, v in phases.items()}} if n else {}


def time_fed(
    source,
    spec: imagenet_input.StreamSpec,
    feed: str,
    *,
    decode: str,
    batches: int,
    warmup: int,
    profile: int = 0,
    sample_threads: bool = False,
) -> dict:
    """Images/s of qresnet's float train step for the `feed` case (MODEL:SIZE:BATCH:DTYPE, as
    `benchmarks.train_step`; `spec` streams batches of its size) on fixed device data, then on
    `spec`'s batches of `source` over `batches` steps after `warmup`. `decode` names the stream's
    decoding in the row. With `profile`, that many more steps of each kind run under the profiler
    afterwards (`_profiled`), so that where a fed step's extra time goes shows: longer kernels, other
    kernels, or an idle GPU. With `sample_threads`, the timed fed steps run under a `ThreadSampler`
    (where each Python thread was: the training loop, the decoding threads)."""

    from benchmarks import train_step as bench

    case = bench.parse_case(feed)
    if (spec.image_size, spec.batch_size) != (case.image_size, case.batch):
        raise ValueError(
            f"the stream's images and batch ({spec.image_size}, {spec.batch_size}) are not the case's "
            f"({case.image_size}, {case.batch})"
        )
    row = bench.prepare("qresnet", "float", "qresnet", case, warmup=3)
    alone = float(np.median([row.time_one() for _ in range(10)]))
    fixed = iter(lambda: dict(zip(("image", "label"), row.args)), None)
    alone_async, _ = _steps_per_s(row, fixed, batches)
    it = imagenet_input.train_batches(spec, source, seed=0, epoch=0)
    _steps_per_s(row, it, warmup)
    nvjpeg.phase_seconds(reset=True)
    with ThreadSampler() if sample_threads else contextlib.nullcontext() as sampler:
        fed, waited = _steps_per_s(row, it, batches)
    fed *= case.batch
    phases = decode_phases()
    profiles = {"thread_samples": sampler.summary()} if sample_threads else {}
    if profile:
        # The process's first trace starts the profiler in its first steps (close to a second a
        # step); a throw-away one-step trace takes that out of the rows' wall ms.
        _profiled(lambda i: row.time_one(), 1)
        profiles["alone_profile"] = _profiled(lambda i: row.time_one(), profile)
        profiles["fed_profile"] = _profiled(lambda i: _steps_per_s(row, it, 1), profile)
    return {
        "mode": "fed",
        "feed": feed,
        "workers": spec.workers,
        "decode": decode,
        "backend": spec.image_backend,
        **nvjpeg_fields(spec),
        "batches": batches,
        "warmup_batches": warmup,
        "alone_images_per_s": case.batch / alone,
        "alone_async_images_per_s": case.batch * alone_async,
        "fed_images_per_s": fed,
        "fed_vs_alone": fed * alone / case.batch,
        "fed_vs_alone_async": fed / (case.batch * alone_async),
        "fed_wait_ms_per_step": 1e3 * waited / batches,
        **phases,
        **profiles,
    }


def _steps_per_s(row, batches, steps: int) -> tuple[float, float]:
    """Trains `steps` steps on `batches` (an iterator of {"image", "label"}) without waiting for
    any step (as training does); returns steps/s and the seconds spent waiting for batches."""
    import jax

    jax.block_until_ready(row.state)
    waited, t0 = 0.0, time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        b = next(batches)
        waited += time.perf_counter() - t
        row.state, (loss, _) = row.step(
            row.state, jax.device_put(b["image"]), jax.device_put(b["label"]), row.keys[i % 64]
        )
    jax.block_until_ready(row.state)
    return steps / (time.perf_counter() - t0), waited


def _profiled(run, steps: int) -> dict:
    """`steps` calls of `run(i)` (each to completion) under `jax.profiler.trace`: wall ms per step
    and, on a GPU, kernel ms per step (XLA's, others', and the time any kernel ran)."""
    from benchmarks import profile_step

    wall, device = profile_step.traced(run, steps, profile_step.stream_summary)
    out = {"steps": steps, "wall_ms": 1e3 * wall / steps, "gpu": device.pop("gpu")}
    return out | {k.replace("_ns", "_ms"): v / steps / 1e6 for k, v in device.items()}
