"""Where does a train step's time go? A device profile of `benchmarks.train_step` rows.

    python -m benchmarks.profile_step --case resnet50:224:256:bfloat16 \
        --rows qresnet:float:qresnet,qresnet:w8a8:qresnet,qresnet:w8a8:switch --out DIR

For each row: the step is built, compiled and warmed up exactly as the
benchmark builds it, a few steps run under `jax.profiler.trace`, and every
device event that names an HLO instruction is summed per instruction and per
kernel. Writes `DIR/profile.json` (per row: device ms per step by instruction,
with the instruction's kind, totals by kind, and by kernel name) and `DIR/<row>.hlo.txt.gz` (the
optimized program, to read what a fusion holds). Comparing the float row with a
quantized one shows which instructions quantization adds or slows.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

from benchmarks import train_step as bench
from qresnet import results

# An HLO instruction definition: "%name = type opcode(" or "name = type opcode(".
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(", re.M)
_FUSION_KIND = re.compile(r"kind=(k\w+)")
_CUSTOM_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def instruction_kinds(hlo_text: str) -> dict[str, str]:
    """{instruction name: kind} for an optimized HLO module's text.

    Kind is "fusion:kLoop" / "fusion:kInput" / ..., "custom-call:<target>", or the opcode.
    """
    kinds = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(2)
        if opcode == "fusion":
            k = _FUSION_KIND.search(line)
            kind = f"fusion:{k.group(1) if k else '?'}"
            if "__cudnn$conv" in line or "cudnn" in line.lower():
                kind += "+cudnn"
        elif opcode == "custom-call":
            t = _CUSTOM_TARGET.search(line)
            kind = f"custom-call:{t.group(1) if t else '?'}"
        else:
            kind = opcode
        kinds[name] = kind
    return kinds


def device_times(xplane_path: str) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Summed device ns by HLO instruction and by kernel name, from a profile, and the lines read.

    GPU: the kernels on the device planes' stream lines; their `hlo_op` stat
    names the instruction (a `command_buffer_*` when XLA launched a CUDA graph,
    whose kernels still carry their own names). Without a GPU plane (CPU), the
    host events that carry `hlo_op`.
    """
    from jax.profiler import ProfileData

    profile = ProfileData.from_file(xplane_path)
    planes = [p for p in profile.planes if p.name.startswith("/device:GPU")]
    on_gpu = bool(planes)
    if not on_gpu:
        planes = [p for p in profile.planes if p.name.startswith("/host:CPU")]
    by_op: dict[str, float] = collections.defaultdict(float)
    by_kernel: dict[str, float] = collections.defaultdict(float)
    lines_read = []
    for plane in planes:
        for line in plane.lines:
            if on_gpu and "stream" not in line.name.lower():
                continue
            lines_read.append(f"{plane.name}/{line.name}")
            for event in line.events:
                op = dict(event.stats or {}).get("hlo_op")
                if op:
                    by_op[str(op)] += float(event.duration_ns)
                    by_kernel[event.name] += float(event.duration_ns)
    return dict(by_op), dict(by_kernel), lines_read


def stream_summary(xplane_path: str) -> dict:
    """Device time in a profile, ns: kernels XLA launched (they carry an `hlo_op`), all other
    kernels (e.g. PyTorch's and nvJPEG's in the same process), and the time at least one kernel
    ran (the union of their intervals), over the GPU planes' stream lines; {"gpu": False} where
    the profile has no GPU plane (CPU)."""
    from jax.profiler import ProfileData

    profile = ProfileData.from_file(xplane_path)
    planes = [p for p in profile.planes if p.name.startswith("/device:GPU")]
    if not planes:
        return {"gpu": False}
    xla = other = 0.0
    spans = []
    for plane in planes:
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                if dict(event.stats or {}).get("hlo_op"):
                    xla += float(event.duration_ns)
                else:
                    other += float(event.duration_ns)
                spans.append((float(event.start_ns), float(event.end_ns)))
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            busy += b - max(a, end)
            end = b
    return {"gpu": True, "xla_kernel_ns": xla, "other_kernel_ns": other, "busy_ns": busy}


def traced(run, steps: int, read):
    """Calls `run(i)` for i in range(steps) under `jax.profiler.trace`; returns their wall seconds
    and `read` (e.g. `device_times`, `stream_summary`) of the profile's .xplane.pb path."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            t0 = time.perf_counter()
            for i in range(steps):
                run(i)
            wall = time.perf_counter() - t0
        found = sorted(Path(d).rglob("*.xplane.pb"))
        if not found:
            raise RuntimeError(f"the profiler wrote no .xplane.pb under {d}")
        return wall, read(str(found[0]))


def profile_call(tag: str, lowered, run_once, *, steps: int, out: Path) -> dict:
    """Profiles `steps` calls of `run_once` (each run to completion) and writes `lowered`'s
    optimized HLO to `out/<tag>.hlo.txt.gz`; returns the summary (device ms by instruction,
    kind and kernel)."""
    hlo = lowered.compile().as_text()
    with gzip.open(out / f"{tag}.hlo.txt.gz", "wt") as f:
        f.write(hlo)
    kinds = instruction_kinds(hlo)
    wall = [run_once() for _ in range(steps)]
    _, (by_op, by_kernel, lines) = traced(lambda i: run_once(), steps, device_times)
    per_step_ms = {op: ns / steps / 1e6 for op, ns in by_op.items()}
    by_kind: dict[str, float] = collections.defaultdict(float)
    for op, ms in per_step_ms.items():
        by_kind[kinds.get(op, "command_buffer" if op.startswith("command_buffer") else "?")] += ms
    top = sorted(per_step_ms.items(), key=lambda kv: -kv[1])
    kernels = sorted(((k, ns / steps / 1e6) for k, ns in by_kernel.items()), key=lambda kv: -kv[1])
    return {
        "row": tag,
        "step_ms_wall": round(1e3 * sorted(wall)[len(wall) // 2], 3),
        "device_ms": round(sum(per_step_ms.values()), 3),
        "n_ops": len(per_step_ms),
        "by_kind_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "ops_ms": [[op, kinds.get(op, "?"), round(ms, 4)] for op, ms in top],
        "kernels_ms": [[k, round(ms, 4)] for k, ms in kernels[:150]],
        "lines": lines,
    }


def profile_row(library: str, setting: str, path: str, case: bench.Case, *, steps: int, warmup: int, out: Path):
    """Profiles one train-step row of `benchmarks.train_step`; returns its summary."""
    row = bench.prepare(library, setting, path, case, warmup=warmup)
    lowered = row.step.lower(row.state, *row.args, row.keys[0])
    return profile_call(f"{case.model}_{library}_{setting}_{path}", lowered, row.time_one, steps=steps, out=out)


INFERENCE_ROWS = ("bf16", "int8", "int8_conv", "int8_narrow_int", "int8_bf16")


def profile_inference(case: str, rows, *, steps: int, warmup: int, out: Path):
    """Profiles the inference benchmark's forward passes of one MODEL:IMAGE_SIZE:BATCH case (rows of
    INFERENCE_ROWS: bf16, the integer model, and the integer model with its 1x1 convs as convs or
    its stem as an int8 conv, or its float parts in bf16); yields each row's summary as it is done."""
    import time

    from benchmarks import inference

    name, size, batch = inference.parse_case(case)
    fns = inference.forward_functions(name, size, batch)
    for r in rows:
        fn, args = fns[r]
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))

        def run_once(fn=fn, args=args):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            return time.perf_counter() - t0

        yield profile_call(f"{name}_{size}_{batch}_{r}_forward", fn.lower(*args), run_once, steps=steps, out=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", help="MODEL:IMAGE_SIZE:BATCH:DTYPE (train steps)")
    p.add_argument(
        "--rows", help=f"comma-separated LIBRARY:SETTING:PATH (with --inference: of {','.join(INFERENCE_ROWS)})"
    )
    p.add_argument("--inference", help="MODEL:IMAGE_SIZE:BATCH: profile the inference benchmark's forward passes")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    try:
        if args.inference:
            rows = args.rows.split(",") if args.rows else list(INFERENCE_ROWS)
            if bad := [r for r in rows if r not in INFERENCE_ROWS]:
                raise ValueError(f"--rows {bad} with --inference: choose from {','.join(INFERENCE_ROWS)}")
            from benchmarks import inference

            inference.parse_case(args.inference)
        else:
            if not (args.case and args.rows):
                raise ValueError("give --case and --rows (train steps) or --inference MODEL:IMAGE_SIZE:BATCH")
            case = bench.parse_case(args.case)
            rows = [tuple(r.split(":")) for r in args.rows.split(",")]
            if any(len(r) != 3 for r in rows):
                raise ValueError(f"--rows {args.rows!r}: each row must be LIBRARY:SETTING:PATH")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.inference:
        summaries_iter = profile_inference(args.inference, rows, steps=args.steps, warmup=args.warmup, out=out)
    else:
        summaries_iter = (
            profile_row(library, setting, path, case, steps=args.steps, warmup=args.warmup, out=out)
            for library, setting, path in rows
        )
    summaries = []
    for summary in summaries_iter:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("ops_ms", "kernels_ms", "lines")}), flush=True)
        summaries.append(summary)
        results.atomic_write_text(out / "profile.json", json.dumps(summaries, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
