"""Could the GPU decode ImageNet's JPEGs? Images/s of nvJPEG (through torchvision) on batches.

    python -m benchmarks.gpu_decode_probe [--batch 256 --batches 20 --image-size 224] --out F.jsonl
    python -m benchmarks.gpu_decode_probe --decoders nvimgcodec --out F.jsonl

The CPU pipeline (`benchmarks.input_pipeline`) prepares about three quarters of what an H200
trains ResNet-50 at on its host's 16 cores (docs/BENCHMARKS.md). This probe asks whether decoding
on the GPU would close that, before any of it is built into qresnet: on the same synthetic
ImageNet-sized JPEGs as `input_pipeline`, it times `torchvision.io.decode_jpeg(..., device="cuda")`
(NVIDIA's nvJPEG) on whole batches, alone and followed by the train preprocessing on the GPU
(Inception crop boxes drawn as `imagenet_input` draws them, bicubic resize without antialiasing,
flip), in one thread and in two at once, and how busy the CPU is meanwhile (nvJPEG may decode
Huffman codes on the host). Then it compares qresnet's `nvjpeg.decode_batch` (`image_backend="nvjpeg"`) with the
opencv backend on the same crops, and times it. It needs PyTorch and torchvision with CUDA
(`pip install "qresnet[nvjpeg]"`).

`--decoders nvimgcodec` asks the same of nvImageCodec (`nvidia-nvimgcodec-cu13` and `nvidia-nvjpeg`
on CUDA 13; `dataset.gpu_decoder="nvimgcodec"`): it decodes a whole batch in one call, on the GPU's
hardware JPEG decoder where it has one, and only each Inception crop's window (as
`dataset.jpeg_window` does on the CPU). Its rows: its pixels against the CPU's window decoding
(libjpeg-turbo), and `decode_batch(..., decoder="nvimgcodec")` against the opencv backend's batch and
torchvision's, with its images/s; then the window decoding alone and with the resize and flip, in
one thread and in two (a decoder each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import record
from qresnet import imagenet_input


def _torch():
    try:
        import torch
        import torchvision
        from torchvision.io import decode_jpeg
    except ImportError as e:
        raise SystemExit(f"error: the probe needs torch and torchvision with CUDA ({e})") from e
    if not torch.cuda.is_available():
        raise SystemExit("error: the probe needs a CUDA GPU for torch")
    return torch, torchvision, decode_jpeg


def preprocess(torch, images, rng: np.random.Generator, size: int):
    """Inception crop, bicubic resize (no antialiasing) and random flip of decoded CHW uint8
    CUDA tensors; returns (N, size, size, 3) uint8 on the GPU."""
    out = []
    for x in images:
        top, left, h, w = imagenet_input.inception_crop_box(rng, int(x.shape[1]), int(x.shape[2]), size)
        crop = x[None, :, top : top + h, left : left + w].float()
        y = torch.nn.functional.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False)
        if rng.random() < 0.5:
            y = y.flip(-1)
        out.append(y)
    return torch.cat(out).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def time_decode(blobs, *, batch: int, batches: int, size: int, crop: bool, threads: int = 1) -> dict:
    """Images/s and the process's CPU seconds per second over `batches` batches per thread, in
    `threads` threads at once, after two warm-up batches; `crop` adds the train preprocessing on
    the GPU."""
    import concurrent.futures

    torch, _, decode_jpeg = _torch()
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    def one(k, rng):
        chunk = [tensors[(k * batch + i) % len(tensors)] for i in range(batch)]
        images = decode_jpeg(chunk, device="cuda")
        return preprocess(torch, images, rng, size) if crop else images

    def loop(seed):
        rng = np.random.default_rng(seed)
        for k in range(batches):
            one(k + seed, rng)
        torch.cuda.synchronize()

    for k in range(2):
        one(k, np.random.default_rng(k))
    torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return _rate_row("decode_and_preprocess" if crop else "decode", threads, batch, batches, size, wall, cpu)


def _rate_row(mode: str, threads: int, batch: int, batches: int, size: int, wall: float, cpu: float) -> dict:
    """A timing row: images/s over all threads' batches, and the process's CPU seconds per second."""
    return {
        "mode": mode,
        "threads": threads,
        "batch": batch,
        "batches": batches,
        "image_size": size,
        "images_per_s": batch * batches * threads / wall,
        "cpu_s_per_s": cpu / wall,
    }


def compare_with_opencv(blobs, *, batch: int, size: int, batches: int) -> dict:
    """qresnet's `nvjpeg.decode_batch` (Inception crops, no flips) against the opencv backend's
    `decode_crop_resize` on the same crops: pixel differences, and decode_batch's images/s in one
    thread over `batches` batches, with a host batch out (what the pipeline uses) and with a JAX
    array on the GPU (`on_device`)."""
    from qresnet import nvjpeg

    rng = np.random.default_rng(1)
    jpegs = blobs[:batch]
    boxes = []
    for b in jpegs:
        height, width = imagenet_input._jpeg_size(b)
        boxes.append(imagenet_input.inception_crop_box(rng, height, width, size))
    flips = np.zeros(len(jpegs), bool)
    gpu = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size).astype(int)
    cpu = np.stack(
        [imagenet_input.decode_crop_resize(b, lambda h, w, box=box: box, size, False) for b, box in zip(jpegs, boxes)]
    ).astype(int)
    diff = np.abs(gpu - cpu)
    on_device = np.asarray(nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size, on_device=True)).astype(int)

    def rate(**kw):
        out = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size, **kw)
        t0 = time.perf_counter()
        for _ in range(batches):
            out = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size, **kw)
        np.asarray(out)  # waits for the last batch
        return len(jpegs) * batches / (time.perf_counter() - t0)

    return {
        "mode": "decode_batch_vs_opencv",
        "batch": len(jpegs),
        "image_size": size,
        "mean_abs_diff": float(diff.mean()),
        "share_over_2": float((diff > 2).mean()),
        "max_abs_diff": int(diff.max()),
        "on_device_equals_host": bool((on_device == gpu).all()),
        "decode_batch_images_per_s": rate(),
        "decode_batch_on_device_images_per_s": rate(on_device=True),
    }


def _resize_flip(torch, crops, flips, size):
    """CHW uint8 crops bicubic-resized (no antialiasing) and flipped: (N, size, size, 3) uint8."""
    out = []
    for x, flip in zip(crops, flips):
        y = torch.nn.functional.interpolate(x[None].float(), size=(size, size), mode="bicubic", align_corners=False)
        out.append(y.flip(-1) if flip else y)
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _draws(blobs, batch: int, k: int, size: int):
    """Batch k's JPEGs (cycling through blobs), Inception crop boxes and flips."""
    rng = np.random.default_rng(k)
    jpegs = [blobs[(k * batch + i) % len(blobs)] for i in range(batch)]
    boxes = [imagenet_input.inception_crop_box(rng, *imagenet_input._jpeg_size(b), size) for b in jpegs]
    return jpegs, boxes, rng.random(batch) < 0.5


def time_nvimgcodec(blobs, *, batch: int, batches: int, size: int, resize: bool, threads: int = 1) -> dict:
    """`time_decode` for nvImageCodec's window decoding (`nvjpeg._windows`, what
    `decode_batch(..., decoder="nvimgcodec")` decodes with): images/s over `batches` batches per
    thread (crop boxes and flips drawn beforehand, outside the timing), in `threads` threads with a
    decoder and a CUDA stream each, after two warm-up batches; `resize` adds the resize and flip."""
    import concurrent.futures

    from qresnet import nvjpeg

    torch, torchvision, _ = _torch()
    draws = [_draws(blobs, batch, k, size) for k in range(batches + 2)]
    barrier = threading.Barrier(threads + 1)

    def loop(_):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for k, (jpegs, boxes, flips) in enumerate(draws):
                    if k == 2:
                        stream.synchronize()
                        barrier.wait()
                    crops = nvjpeg._windows(torch, torchvision.io, jpegs, boxes)
                    if resize:
                        _resize_flip(torch, crops, flips, size)
                stream.synchronize()
        except BaseException:
            barrier.abort()  # the timing thread then stops waiting and reports this error
            raise

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(loop, i) for i in range(threads)]
        try:
            barrier.wait()  # every thread warmed up
        except threading.BrokenBarrierError:
            for f in futures:
                f.result()  # raises the thread's error
        t0, c0 = time.perf_counter(), time.process_time()
        for f in futures:
            f.result()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mode = "nvimgcodec_window_and_preprocess" if resize else "nvimgcodec_window"
    return _rate_row(mode, threads, batch, batches, size, wall, cpu)


def compare_nvimgcodec(blobs, *, batch: int, size: int, batches: int) -> dict:
    """nvImageCodec's GPU window decoding against the CPU's (libjpeg-turbo, `decode_window`) on one
    batch's crops, and `decode_batch(..., decoder="nvimgcodec")` against the opencv backend's
    `decode_crop_resize` and against torchvision's decode_batch; its images/s as `compare_with_opencv`
    times torchvision's."""
    from qresnet import nvjpeg

    torch, torchvision, _ = _torch()
    jpegs, boxes, _ = _draws(blobs, batch, 0, size)
    flips = np.zeros(batch, bool)
    with torch.cuda.stream(torch.cuda.Stream()):
        crops = nvjpeg._windows(torch, torchvision.io, jpegs, boxes)
        window_diffs = [
            np.abs(x.permute(1, 2, 0).cpu().numpy().astype(int) - imagenet_input.decode_window(b, box))
            for x, b, box in zip(crops, jpegs, boxes)
        ]
    ours = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size, decoder="nvimgcodec").astype(int)
    theirs = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size).astype(int)
    cpu = np.stack(
        [imagenet_input.decode_crop_resize(b, lambda h, w, box=box: box, size, False) for b, box in zip(jpegs, boxes)]
    ).astype(int)

    def rate(**kw):
        out = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size, decoder="nvimgcodec", **kw)
        t0 = time.perf_counter()
        for _ in range(batches):
            out = nvjpeg.decode_batch(jpegs, np.asarray(boxes), flips, size, decoder="nvimgcodec", **kw)
        np.asarray(out)  # waits for the last batch
        return batch * batches / (time.perf_counter() - t0)

    return {
        "mode": "nvimgcodec_vs_cpu",
        "batch": batch,
        "image_size": size,
        "window_mean_abs_diff": float(np.mean([d.mean() for d in window_diffs])),
        "window_max_abs_diff": int(max(d.max() for d in window_diffs)),
        "resized_vs_opencv_mean_abs_diff": float(np.abs(ours - cpu).mean()),
        "resized_vs_opencv_share_over_2": float((np.abs(ours - cpu) > 2).mean()),
        "resized_vs_torchvision_mean_abs_diff": float(np.abs(ours - theirs).mean()),
        "decode_batch_images_per_s": rate(),
        "decode_batch_on_device_images_per_s": rate(on_device=True),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=1024, help="distinct synthetic JPEGs (then cycled)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--decoders", default="torchvision", help="torchvision, nvimgcodec (comma-separated)")
    p.add_argument("--out", help="also write the rows as JSON lines here")
    args = p.parse_args(argv)
    if min(args.examples, args.batch, args.batches, args.image_size) < 1:
        print("error: --examples, --batch, --batches and --image-size must be >= 1", file=sys.stderr)
        return 2
    decoders = args.decoders.split(",")
    if not decoders or set(decoders) - {"torchvision", "nvimgcodec"}:
        print(f"error: --decoders {args.decoders!r} must name some of torchvision, nvimgcodec", file=sys.stderr)
        return 2
    torch, torchvision, _ = _torch()
    if "nvimgcodec" in decoders:
        try:
            imagenet_input.check_window()
        except imagenet_input.InputError:
            print("error: --decoders nvimgcodec needs nvidia-nvimgcodec-cu13 (and nvidia-nvjpeg)", file=sys.stderr)
            return 2
    from benchmarks import input_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jpegs.npz"
        input_pipeline.write_jpegs(path, args.examples)
        source = input_pipeline.JpegSource(path)
        blobs = [source[i]["image"] for i in range(len(source))]
    extra = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "gpu": torch.cuda.get_device_name(),
        "distinct_jpegs": args.examples,
        "date": time.strftime("%Y-%m-%d"),
    }
    rows = []
    sizes = {"batch": args.batch, "batches": args.batches, "size": args.image_size}
    if "torchvision" in decoders:
        for crop, threads in ((False, 1), (True, 1), (True, 2)):
            record(rows, time_decode(blobs, crop=crop, threads=threads, **sizes) | extra, args.out)
        row = compare_with_opencv(blobs, batch=args.batch, size=args.image_size, batches=args.batches)
        record(rows, row | extra, args.out)
    if "nvimgcodec" in decoders:
        extra["nvimgcodec"] = imagenet_input._nvimgcodec().__version__
        row = compare_nvimgcodec(blobs, batch=args.batch, size=args.image_size, batches=args.batches)
        record(rows, row | extra, args.out)
        for resize, threads in ((False, 1), (True, 1), (True, 2)):
            record(rows, time_nvimgcodec(blobs, resize=resize, threads=threads, **sizes) | extra, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
