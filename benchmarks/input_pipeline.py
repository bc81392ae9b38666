"""Can the ImageNet input pipeline keep a GPU fed? Images/s of `imagenet_input.train_batches`.

    python -m benchmarks.input_pipeline --workers 0,8,16 [--decode full,draft,window] [--backend opencv,pillow]
        --out F.jsonl [--target 6258]
    python -m benchmarks.input_pipeline --per-image 400 [--image-size 224] [--backend opencv,pillow] --out F.jsonl
    python -m benchmarks.input_pipeline --feed resnet50:224:256:bfloat16 --workers 15 --backend opencv,nvjpeg --out F
    python -m benchmarks.input_pipeline --backend nvjpeg --workers 4 --decode full --decode-threads 1,2
        --placement host,device --out F.jsonl

Times qresnet's streaming train pipeline (grain worker processes; JPEG decode,
Inception crop, bicubic resize to 224, flip, batching) on synthetic JPEGs of
ImageNet's typical sizes (300-500 x 350-600 pixels, quality 90, photo-like
content), handed to the workers as bytes as `open_source` hands them over, for
each worker count, decoding (`full` size; `draft`: `jpeg_draft`, reduced-scale decoding where
the crop allows; `window`: `jpeg_draft` and `jpeg_window`, only the crop's window decoded on
the CPU, through nvImageCodec) and image library (`image_backend`: opencv, pillow, or nvjpeg on the
GPU), side by side. `--nvjpeg-stub` replaces nvjpeg's GPU decoder by a no-op, to time
that path's host side on any machine; `--decode-threads 1,2` and `--placement host,device`
(decoded batches copied to the host, or kept on the GPU through DLPack) vary its GPU side.
`--feed CASE [--profile N]`: whether the pipeline keeps a
training step fed (qresnet's float train step trained on its batches against the same
step on fixed device data, in one process; `--profile N` then runs N steps of each under the
profiler and adds their wall and kernel ms per step to the row: XLA's kernels, other kernels
such as nvJPEG's, and the time any kernel ran). `--per-image`: the cost of one image's
preprocessing in one thread, per CPU library, from the bytes with full-size and with
draft decoding (OpenCV, where nvImageCodec is installed: also with window decoding),
and (Pillow) from a decoded array (what the source handed over before it passed bytes).
`--max-side N` first shrinks the JPEGs to longer side N (quality 90), as a copy of the dataset
prepared at reduced resolution would hold them (not built in qresnet): decoding costs less with
fewer pixels.
Nothing here needs TensorFlow or TFDS, so it runs where only grain is installed.
`--target` is the training step's images/s to compare with (e.g. qresnet's ResNet-50 bf16
batch 256 float step, docs/performance.md).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import input_feed, record
from benchmarks.input_feed import decode_phases, nvjpeg_fields
from benchmarks.synthetic_jpegs import JpegSource, shrink_jpegs, write_jpegs
from qresnet import imagenet_input, nvjpeg

# --decode's modes: (jpeg_draft, jpeg_window).
DECODES = {"full": (False, False), "draft": (True, False), "window": (True, True)}


def _spec(
    size,
    batch,
    workers,
    decode,
    backend,
    decode_threads,
    on_device,
    priority,
    per_call=1,
    cpu_share=0.0,
    gpu_decoder="torchvision",
) -> imagenet_input.StreamSpec:
    """The stream settings of a timed pipeline (synthetic source, train and eval batch `batch`;
    `decode` one of DECODES)."""
    draft, window = DECODES[decode]
    return imagenet_input.StreamSpec(
        "synthetic",
        "",
        size,
        batch,
        batch,
        workers=workers,
        jpeg_draft=draft,
        jpeg_window=window,
        image_backend=backend,
        decode_threads=decode_threads,
        decode_on_device=on_device,
        decode_priority=priority,
        decode_batches_per_call=per_call,
        cpu_decode_share=cpu_share,
        gpu_decoder=gpu_decoder,
    )


def time_pipeline(
    source,
    *,
    workers: int,
    batch: int,
    size: int,
    batches: int,
    warmup: int = 24,
    decode: str = "draft",
    backend: str = "opencv",
    decode_threads: int = 3,
    on_device: bool = True,
    priority: int = 0,
    per_call: int = 2,
    cpu_share: float = 0.7,
    gpu_decoder: str = "torchvision",
) -> dict:
    """Steady-state images/s of one epoch of `train_batches` over `batches` batches after `warmup`
    (the source must hold (warmup + batches) * batch examples: a new epoch restarts the workers).
    The warm-up must outlast the head start of the batches prepared in parallel while the first
    ones were awaited (grain's threads with 0 workers, the worker processes otherwise), or the
    timed batches come from that backlog."""
    if len(source) < (warmup + batches) * batch:
        raise ValueError(f"source has {len(source)} examples, fewer than {(warmup + batches) * batch}")
    spec = _spec(
        size, batch, workers, decode, backend, decode_threads, on_device, priority, per_call, cpu_share, gpu_decoder
    )
    it = imagenet_input.train_batches(spec, source, seed=0, epoch=0)
    for _ in range(warmup):
        next(it)
    nvjpeg.phase_seconds(reset=True)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    if on_device:
        import jax

        jax.block_until_ready(b["image"])
    dt = time.perf_counter() - t0
    assert b["image"].shape == (batch, size, size, 3)
    return {
        "workers": workers,
        "decode": decode,
        "backend": backend,
        **nvjpeg_fields(spec),
        "batch": batch,
        "image_size": size,
        "batches": batches,
        "warmup_batches": warmup,
        "images_per_s": batch * batches / dt,
        **decode_phases(),
    }


CPU_BACKENDS = imagenet_input.CPU_BACKENDS


def _has_window() -> bool:
    """Whether window decoding (nvImageCodec) is installed."""
    try:
        imagenet_input.check_window()
    except imagenet_input.InputError:
        return False
    return True


def time_per_image(source, *, size: int, images: int, backends=CPU_BACKENDS) -> dict:
    """One thread, no grain: ms per image of `train_example` (decode, Inception crop, resize,
    flip) per backend, from the bytes with full-size and with draft decoding, and (Pillow) from a
    decoded array (what the TFDS source handed over before it passed bytes), interleaved image
    by image (same crops); and the share of crops that draft decoding can shrink."""
    from PIL import Image

    modes = {"opencv": ("full", "draft") + (("window",) if _has_window() else ()), "pillow": ("full", "draft", "array")}
    ms = {f"{b}_{m}": 0.0 for b in backends for m in modes[b]}
    shrunk = 0
    for i in range(images):
        example = source[i]
        for key in ms:
            backend, mode = key.split("_")
            rng = np.random.default_rng(i)
            t0 = time.perf_counter()
            if mode == "array":
                image = np.asarray(Image.open(io.BytesIO(example["image"])).convert("RGB"))
                imagenet_input.train_example({**example, "image": image}, rng, size, backend=backend)
            else:
                draft, window = DECODES[mode]
                imagenet_input.train_example(example, rng, size, draft, backend, window)
            ms[key] += (time.perf_counter() - t0) * 1000 / images
        width, height = Image.open(io.BytesIO(example["image"])).size
        _, _, h, w = imagenet_input.inception_crop_box(np.random.default_rng(i), height, width, size)
        shrunk += imagenet_input.draft_reduction(h, w, size) > 1
    row = {"mode": "per_image", "image_size": size, "images": images, "ms_per_image": ms}
    if set(backends) == set(CPU_BACKENDS):
        row["opencv_vs_pillow_speedup"] = {m: ms[f"pillow_{m}"] / ms[f"opencv_{m}"] for m in ("full", "draft")}
    return row | {"share_of_crops_drafted": shrunk / images}


def _stub_decode_batch(jpegs, boxes, flips, size, on_device=False, priority=0, decoder="torchvision"):
    """`nvjpeg.decode_batch`'s shape and type with no decoding (`--nvjpeg-stub`)."""
    out = np.zeros((len(jpegs), size, size, 3), np.uint8)
    if on_device:
        import jax

        return jax.device_put(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="0,8,16", help="comma-separated worker counts to time")
    p.add_argument(
        "--decode", default="full,draft", help="train-crop decoding to time: full, draft, window (comma-separated)"
    )
    p.add_argument(
        "--backend", default="opencv,pillow", help="image libraries to time: opencv, pillow, nvjpeg (comma-separated)"
    )
    p.add_argument(
        "--decode-threads",
        default="3",
        help="nvjpeg rows: threads that launch the GPU decoding (counts, comma-separated)",
    )
    p.add_argument(
        "--decode-per-call",
        default="2",
        help="nvjpeg rows: batches decoded together in one nvJPEG call (counts, comma-separated)",
    )
    p.add_argument(
        "--cpu-share",
        default="0.7",
        help="nvjpeg rows: shares of each train batch decoded on the CPU in the workers (comma-separated, in [0, 1))",
    )
    p.add_argument(
        "--gpu-decoder",
        default="torchvision",
        help="nvjpeg rows: the GPU's decoder, torchvision or nvimgcodec (comma-separated)",
    )
    p.add_argument(
        "--placement",
        default="device",
        help="nvjpeg rows: where decoded batches are handed over: host (a numpy copy), device (DLPack), or both",
    )
    p.add_argument(
        "--stream-priority",
        default="0",
        help="nvjpeg rows: CUDA priorities of the decoding streams (comma-separated; -1 is ahead of XLA's 0)",
    )
    p.add_argument(
        "--nvjpeg-stub",
        action="store_true",
        help="nvjpeg rows: replace the GPU decoder by a no-op (times the host side only; needs no GPU)",
    )
    p.add_argument(
        "--feed",
        default="",
        help="instead: train this case (e.g. resnet50:224:256:bfloat16) on the pipeline's batches, against fixed data",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        help="--feed: then profile this many steps alone and fed (kernel time per step, in the row)",
    )
    p.add_argument(
        "--sample-threads",
        action="store_true",
        help="--feed: sample where each Python thread is during the timed fed steps (in the row)",
    )
    p.add_argument("--examples", type=int, default=1024, help="distinct synthetic JPEGs to make (then cycled)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batches", type=int, default=48, help="timed batches per worker count")
    p.add_argument("--warmup", type=int, default=24, help="untimed batches first (see time_pipeline)")
    p.add_argument("--target", type=float, default=0.0, help="training images/s to compare with")
    p.add_argument("--data", default="", help="where to keep the synthetic JPEGs (default: a temporary file)")
    p.add_argument(
        "--max-side",
        type=int,
        default=0,
        help="shrink the JPEGs first to this longer side, as a prepared shrunk copy holds them (0: as made)",
    )
    p.add_argument("--per-image", type=int, default=0, help="instead: ms per image of N images, one thread")
    p.add_argument("--out", help="also write the rows as JSON lines here")
    args = p.parse_args(argv)
    try:
        workers = [int(w) for w in args.workers.split(",")]
        if any(w < 0 for w in workers):
            raise ValueError
    except ValueError:
        print(f"error: --workers {args.workers!r} must be comma-separated counts >= 0, e.g. 0,8,16", file=sys.stderr)
        return 2
    decodes = args.decode.split(",")
    if not decodes or set(decodes) - set(DECODES):
        print(f"error: --decode {args.decode!r} must name some of {', '.join(DECODES)}", file=sys.stderr)
        return 2
    if "window" in decodes and not _has_window():
        print("error: --decode window needs nvImageCodec: pip install nvidia-nvimgcodec-cu12", file=sys.stderr)
        return 2
    backends = args.backend.split(",")
    if not backends or set(backends) - set(imagenet_input.BACKENDS):
        print(
            f"error: --backend {args.backend!r} must name some of {', '.join(imagenet_input.BACKENDS)}", file=sys.stderr
        )
        return 2
    if args.per_image and set(backends) - set(CPU_BACKENDS):
        print("error: --per-image times the CPU backends (opencv, pillow) only", file=sys.stderr)
        return 2
    if args.nvjpeg_stub:
        nvjpeg.check = lambda decoder="torchvision": None
        nvjpeg.decode_batch = _stub_decode_batch
    gpu_decoders = args.gpu_decoder.split(",")
    if not gpu_decoders or set(gpu_decoders) - set(nvjpeg.GPU_DECODERS):
        names = ", ".join(nvjpeg.GPU_DECODERS)
        print(f"error: --gpu-decoder {args.gpu_decoder!r} must name some of {names}", file=sys.stderr)
        return 2
    for backend in backends:
        for gpu_decoder in gpu_decoders if backend == "nvjpeg" else ["torchvision"]:
            imagenet_input.check_backend(backend, gpu_decoder)
    if args.feed:  # the pipeline's batches take the training case's size
        from benchmarks import train_step

        try:
            case = train_step.parse_case(args.feed)
        except ValueError as e:
            print(f"error: --feed: {e}", file=sys.stderr)
            return 2
        args.batch, args.image_size = case.batch, case.image_size
    try:
        threads = [int(t) for t in args.decode_threads.split(",")]
        per_calls = [int(t) for t in args.decode_per_call.split(",")]
    except ValueError:
        threads = per_calls = [0]
    try:
        priorities = [int(t) for t in args.stream_priority.split(",")]
    except ValueError:
        print(
            f"error: --stream-priority {args.stream_priority!r} must be comma-separated integers, e.g. 0,-1",
            file=sys.stderr,
        )
        return 2
    try:
        shares = [float(t) for t in args.cpu_share.split(",")]
        if not all(0 <= t < 1 for t in shares):
            raise ValueError
    except ValueError:
        print(
            f"error: --cpu-share {args.cpu_share!r} must be comma-separated shares in [0, 1), e.g. 0,0.3",
            file=sys.stderr,
        )
        return 2
    placements = args.placement.split(",")
    if not placements or set(placements) - {"host", "device"}:
        print(f"error: --placement {args.placement!r} must be host, device or host,device", file=sys.stderr)
        return 2
    if min(args.examples, args.batch, args.batches, *threads, *per_calls) < 1 or min(args.warmup, args.profile) < 0:
        print(
            "error: --examples, --batch, --batches, --decode-threads and --decode-per-call must be counts >= 1, "
            "--warmup and --profile >= 0",
            file=sys.stderr,
        )
        return 2
    if args.max_side < 0:
        print(
            f"error: --max-side {args.max_side} must be a side in pixels > 0 (0: leave the JPEGs as made)",
            file=sys.stderr,
        )
        return 2
    if (args.profile or args.sample_threads) and not args.feed:
        print("error: --profile and --sample-threads watch the training steps of --feed; give --feed", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.data or Path(tmp) / "jpegs.npz")
        if not path.exists():
            write_jpegs(path, args.examples)
        if args.max_side:
            small = path.with_name(f"{path.stem}_max{args.max_side}.npz")
            if not small.exists():
                shrink_jpegs(path, small, args.max_side)
            path = small
        source = JpegSource(path, length=(args.warmup + args.batches + args.profile) * args.batch)
        rows = []
        if args.per_image:
            row = time_per_image(source, size=args.image_size, images=args.per_image, backends=backends)
            record(
                rows,
                row
                | {"max_side": args.max_side, "cpus": os.cpu_count(), "distinct_jpegs": args.examples}
                | {"date": time.strftime("%Y-%m-%d")},
                args.out,
            )
            return 0
        grid = itertools.product(
            workers, decodes, backends, threads, placements, priorities, per_calls, shares, gpu_decoders
        )
        for w, decode, backend, t, place, prio, per_call, share, gpu_decoder in grid:
            nv = {"decode_threads": t, "on_device": place == "device", "priority": prio, "per_call": per_call}
            nv |= {"cpu_share": share, "gpu_decoder": gpu_decoder}
            firsts = (threads[0], placements[0] == "device", priorities[0], per_calls[0], shares[0], gpu_decoders[0])
            if backend != "nvjpeg" and tuple(nv.values()) != firsts:
                continue  # the CPU backends have no decoding threads, placement, stream, calls or shares to vary
            if backend == "pillow" and decode == "window":
                continue  # window decoding is OpenCV's (and the nvjpeg backend's CPU share)
            if args.feed:
                spec = _spec(args.image_size, args.batch, w, decode, backend, **nv)
                row = input_feed.time_fed(
                    source,
                    spec,
                    args.feed,
                    decode=decode,
                    batches=args.batches,
                    warmup=args.warmup,
                    profile=args.profile,
                    sample_threads=args.sample_threads,
                )
                row |= {"max_side": args.max_side, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
                record(rows, row, args.out)
                continue
            row = time_pipeline(
                source,
                workers=w,
                batch=args.batch,
                size=args.image_size,
                batches=args.batches,
                warmup=args.warmup,
                decode=decode,
                backend=backend,
                **nv,
            )
            row |= {"max_side": args.max_side, "cpus": os.cpu_count(), "distinct_jpegs": args.examples}
            row |= {"date": time.strftime("%Y-%m-%d")}
            if args.target:
                row |= {"target_images_per_s": args.target, "feeds_target": row["images_per_s"] >= args.target}
            record(rows, row, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
