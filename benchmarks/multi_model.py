"""Several small models on one GPU: one vmapped program, concurrent processes, or one after another?

    python -m benchmarks.multi_model --case resnet20:32:256:bfloat16 --models 4 \
        --modes sequential,vmap,processes,processes_mps --out F.jsonl

Each mode trains `--models` ResNets of one setting that differ only in their
seed (initialisation and data order), with the trainer's epoch program
(`steps.train_epoch`: `--steps` steps in one `lax.scan` over on-device data,
activation quantization on), and reports the total training images/s over
`--calls` timed calls after the warm-up calls (until a call compiles nothing;
a timed call that compiles is an error):

- `sequential`: one model's program, the models one after another;
- `vmap`: one program that trains all models at once (`jax.vmap` over the
  stacked states, data orders and keys), so each kernel does the work of all;
- `processes`: one process per model, all released at once after compiling
  (what `qresnet sweep --jobs N` does); `processes_mps`: the same under a
  private CUDA MPS daemon (`qresnet sweep --mps`), so their kernels can overlap.

This is the measurement behind choosing how `qresnet sweep` packs runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import check_compiled, compiled_count, epoch_mesh, on_mesh, record, warm_up
from benchmarks import train_step as bench
from qresnet import data, results
from qresnet import steps as steps_lib

MODES = ("sequential", "vmap", "processes", "processes_mps")


def _setup(case: bench.Case, setting: str, models: int, steps: int, seed0: int = 0):
    """(run, per-model states stacked, images, labels, per-model idx (M, steps, B), keys (M,))."""
    run = bench.run_spec(case, setting, act_start_step=0)
    k_data = jax.random.key(1234)
    n = steps * case.batch
    images = jax.random.randint(k_data, (n, *case.info.image_shape), 0, 256, jnp.int32).astype(jnp.uint8)
    labels = jax.random.randint(jax.random.fold_in(k_data, 1), (n,), 0, case.info.num_classes)
    sample = data.normalize(images[:8], case.info)
    keys = jnp.stack([jax.random.key(seed0 + m) for m in range(models)])
    states = jax.jit(jax.vmap(lambda k: steps_lib.create_train_state(run, k, sample)))(keys)
    states = states.replace(quant_stats=jax.tree.map(jnp.ones_like, states.quant_stats))  # bounds of 1: time only
    idx = jnp.stack([jax.random.permutation(jax.random.fold_in(k, 7), n).reshape(steps, case.batch) for k in keys])
    return run, states, images, labels, idx.astype(jnp.int32), keys


def _epoch_fn(run):
    mesh = epoch_mesh()

    def epoch(state, images, labels, idx, key):
        return steps_lib.train_epoch(run, mesh, state, images, labels, idx, key, act_quant=True)

    return epoch


def _warm(fn, state, args):
    """Warm-up calls (compilation) until one compiles nothing; returns (state, programs compiled)."""
    box = [on_mesh(state, epoch_mesh())]

    def call():
        box[0], out = fn(box[0], *args)
        jax.block_until_ready(out)

    warm_up(fn, call)
    return box[0], compiled_count(fn)


def _timed(fn, state, args, calls: int) -> tuple[float, object]:
    state, programs = _warm(fn, state, args)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, out = fn(state, *args)
    jax.block_until_ready(out)
    dt = time.perf_counter() - t0
    check_compiled(fn, programs, "a timed call")
    return dt, out


def time_sequential(case, setting, models, steps, calls) -> float:
    """Seconds for `calls` epochs of each model, one model after another."""
    run, states, images, labels, idx, keys = _setup(case, setting, models, steps)
    fn = jax.jit(_epoch_fn(run), donate_argnums=(0,))
    total = 0.0
    for m in range(models):
        state = jax.tree.map(lambda a, m=m: a[m], states)
        dt, _ = _timed(fn, state, (images, labels, idx[m], keys[m]), calls)
        total += dt
    return total


def time_vmap(case, setting, models, steps, calls) -> float:
    """Seconds for `calls` epochs of the vmapped program that trains every model at once."""
    run, states, images, labels, idx, keys = _setup(case, setting, models, steps)
    fn = jax.jit(jax.vmap(_epoch_fn(run), in_axes=(0, None, None, 0, 0)), donate_argnums=(0,))
    dt, _ = _timed(fn, states, (images, labels, idx, keys), calls)
    return dt


def time_processes(case, setting, models, steps, calls, *, mps: bool) -> float:
    """Seconds from releasing `models` compiled and warmed-up processes to the last one's end."""
    from qresnet import sweep

    mps_env = sweep.mps_daemon() if mps else contextlib.nullcontext({})
    with tempfile.TemporaryDirectory() as tmp, mps_env as extra_env:
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", **extra_env)
        spec = f"{case.model}:{case.image_size}:{case.batch}:{case.dtype}:{case.width}"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.multi_model",
                    "--child",
                    str(m),
                    "--barrier",
                    tmp,
                    "--case",
                    spec,
                    "--setting",
                    setting,
                    "--steps",
                    str(steps),
                    "--calls",
                    str(calls),
                ],
                env=env,
            )  # fmt: skip
            for m in range(models)
        ]
        while len(list(Path(tmp).glob("ready_*"))) < models:
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a benchmark child process failed before it was ready")
            time.sleep(0.05)
        t0 = time.perf_counter()
        (Path(tmp) / "go").touch()
        codes = [p.wait() for p in procs]
        dt = time.perf_counter() - t0
        if any(codes):
            raise RuntimeError(f"benchmark child processes exited with {codes}")
    return dt


def child(index: int, barrier: str, case, setting, steps, calls) -> int:
    """A `processes` member: compile and warm up, say ready, wait for go, train `calls` epochs."""
    run, states, images, labels, idx, keys = _setup(case, setting, 1, steps, seed0=index)
    fn = jax.jit(_epoch_fn(run), donate_argnums=(0,))
    state = jax.tree.map(lambda a: a[0], states)
    args = (images, labels, idx[0], keys[0])
    state, programs = _warm(fn, state, args)
    (Path(barrier) / f"ready_{index}").touch()
    while not (Path(barrier) / "go").exists():
        time.sleep(0.01)
    for _ in range(calls):
        state, out = fn(state, *args)
    jax.block_until_ready(out)
    check_compiled(fn, programs, "a timed call")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="resnet20:32:256:bfloat16", help="MODEL:IMAGE_SIZE:BATCH:DTYPE")
    p.add_argument("--setting", default="w4a4_ends8", help="float or a precision setting")
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--steps", type=int, default=195, help="steps per epoch program (one call)")
    p.add_argument("--calls", type=int, default=5, help="timed calls per model after one warm-up call")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--out", help="also write the rows as JSON lines here")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        case = bench.parse_case(args.case)
        modes = args.modes.split(",")
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise ValueError(f"unknown modes {unknown}; choose from {list(MODES)}")
        if min(args.models, args.steps, args.calls) < 1:
            raise ValueError("--models, --steps and --calls must be >= 1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.child is not None:
        return child(args.child, args.barrier, case, args.setting, args.steps, args.calls)
    images = args.models * args.calls * args.steps * case.batch
    dev = jax.local_devices()[0]
    rows = []
    for mode in modes:
        if mode == "sequential":
            dt = time_sequential(case, args.setting, args.models, args.steps, args.calls)
        elif mode == "vmap":
            dt = time_vmap(case, args.setting, args.models, args.steps, args.calls)
        else:
            dt = time_processes(case, args.setting, args.models, args.steps, args.calls, mps=mode == "processes_mps")
        row = {
            "mode": mode,
            "model": case.model,
            "batch": case.batch,
            "dtype": case.dtype,
            "width": case.width,
            "setting": args.setting,
            "models": args.models,
            "steps_per_call": args.steps,
            "calls": args.calls,
            "seconds": dt,
            "images_per_s": images / dt,
            "device": f"{dev.device_kind} ({dev.platform})",
            "commit": results.git_commit(),
            "date": time.strftime("%Y-%m-%d"),
            **results.xla_flags_field(),
        }
        if rows and rows[0]["mode"] == "sequential":
            row["vs_sequential"] = row["images_per_s"] / rows[0]["images_per_s"]
        record(rows, row, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
