"""Training-step benchmark: qresnet against plain Flax, AQT and Qwix, in one process.

    python -m benchmarks.train_step --out docs/results/bench/train_step.jsonl
    python -m benchmarks.train_step --report docs/results/bench/train_step.jsonl

Every row times the same function, `qresnet.steps.train_step` (on-device
augmentation, normalisation, forward/backward, cross-entropy + L2, Nesterov
SGD), jitted once, on synthetic uint8 data; only the model differs:

- `qresnet`: qresnet's ResNet in the paper's settings (float, w8a8, w4a4,
  w4a4_ends8), path `qresnet`: the program the trainer runs once activation
  quantization has started (`steps.act_quant_phase` True: weights and
  activations quantized, bounds frozen), which is most of a run; path
  `switch`: one program for the whole run with the traced switch
  `step >= act_start_step` (what the trainer ran before it compiled per phase),
  switched on after the warm-up steps, which calibrate its bounds;
- `plain_flax`: `benchmarks.plain_resnet.PlainResNet`, no quantization code;
- `aqt`, `qwix`: the same architecture quantized by those libraries
  (`benchmarks.baselines`; optional: `pip install -e ".[bench]"`).

With `--scan N` every timed call is instead the trainer's epoch program
(`steps.train_epoch`: N steps in one `lax.scan`, batches gathered from
on-device data), as `qresnet train` runs it for in-memory datasets, and
step times are the call's time / N.

A row reports the median of `--steps` timed steps after `--warmup` steps
(compilation included in warm-up; more warm-up calls where a call still compiles, and a
timed call that compiles is an error), each ended by `block_until_ready` and
followed by one step of the case's qresnet float model, whose median is recorded
beside it (`float_step_ms`, `vs_float`: ratios from the same stretch of time),
and the norm of the cross-entropy gradient at the stem kernel (0 means the step does not
train the convs). A library that fails gets a row with `error`. Rows go to
`--out` as JSON lines, rewritten atomically after each row; rows already there
for the same device are skipped, so a long benchmark resumes across calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import baselines, check_compiled, compiled_count, epoch_mesh, on_mesh, warm_up
from benchmarks.plain_resnet import PlainResNet
from configs import settings
from qresnet import conv_kernels, data, resnet, results, steps
from qresnet.quant.layers import CONV_IMPLS, ConvBackend
from qresnet.run_spec import RunSpec

DEFAULT_CASES = ("resnet20:32:512:float32", "resnet20:32:512:bfloat16", "resnet50:224:256:bfloat16")
QRESNET_SETTINGS = ("float", "w8a8", "w4a4", "w4a4_ends8")
QRESNET_PATHS = ("qresnet", "switch")  # the trainer's quantized-phase program; one program with a traced switch
# (library, setting, path). AQT's own conv path is run once per case, to record that it passes no gradient.
DEFAULT_ROWS = (
    ("plain_flax", "float", "flax"),
    *(("qresnet", s, "qresnet") for s in QRESNET_SETTINGS),
    # One program with the traced switch: computes the EMA batch max and a select every step.
    *(("qresnet", s, "switch") for s in QRESNET_SETTINGS[1:]),
    ("aqt", "w8a8", "conv"),
    *(("aqt", s, "im2col") for s in ("w8a8", "w4a4", "w4a4_ends8")),
    *(("qwix", s, "qat") for s in ("w8a8", "w4a4", "w4a4_ends8")),
    ("qwix", "w8", "weight_only"),
)
LIBRARIES = ("qresnet", "plain_flax", "aqt", "qwix")


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    image_size: int
    batch: int
    dtype: str
    width: float = 1.0  # ResNet width multiplier; other widths pad channels as the sweep configs do
    conv_impl: str = "xla"  # QConv's: "xla" or "pallas" (3x3 stride-1 convs as Triton kernels)
    pallas_max_channels: int = 32

    @property
    def info(self) -> data.DatasetInfo:
        base = data.dataset_info("cifar10" if resnet.get_arch(self.model).cifar else "imagenet2012")
        return dataclasses.replace(base, image_shape=(self.image_size, self.image_size, 3))


def parse_case(text: str) -> Case:
    """ "resnet20:32:512:float32" -> Case; an optional fifth field is the width ("...:float32:0.5")."""
    parts = text.split(":")
    if len(parts) not in (4, 5) or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(
            f"case {text!r} must look like MODEL:IMAGE_SIZE:BATCH:DTYPE[:WIDTH], e.g. resnet20:32:512:float32"
        )
    try:
        width = float(parts[4]) if len(parts) == 5 else 1.0
    except ValueError:
        width = -1.0
    if width <= 0:
        raise ValueError(f"case {text!r}: WIDTH must be a positive number, e.g. resnet20:32:256:bfloat16:0.5")
    case = Case(parts[0], int(parts[1]), int(parts[2]), parts[3], width)
    resnet.get_arch(case.model)
    if case.dtype not in resnet.DTYPES:
        raise ValueError(f"case {text!r}: dtype must be one of {sorted(resnet.DTYPES)}")
    return case


def parse_tuning(text: str) -> conv_kernels.Tuning:
    """ "fwd_block=64,warps=8" -> conv_kernels.Tuning with those fields changed ("" = the defaults)."""
    fields = {f.name for f in dataclasses.fields(conv_kernels.Tuning)}
    changes = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in fields or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--conv-tuning item {item!r}: expected KEY=N with N >= 1 and KEY one of {sorted(fields)}")
        changes[key] = int(value)
    return dataclasses.replace(conv_kernels.Tuning(), **changes)


def run_spec(case: Case, setting: str, act_start_step: int) -> RunSpec:
    """The trainer's RunSpec for a case, CIFAR augmentation for CIFAR models.

    With the traced switch (path `switch`), activation quantization starts at
    `act_start_step`; the warm-up steps before it calibrate the EMA bounds,
    which start at 0.
    """
    info = case.info
    cifar = resnet.get_arch(case.model).cifar
    rules = settings.SETTINGS["bf16" if setting == "float" else setting]
    return RunSpec(
        model_name=case.model,
        width=case.width,
        dtype=case.dtype,
        info=info,
        specs=resnet.resolve_specs(
            rules, case.model, width=case.width, num_classes=info.num_classes, input_shape=info.image_shape
        ),
        batch_size=case.batch,
        num_epochs=1,
        steps_per_epoch=10_000,
        act_start_step=act_start_step,
        crop_pad=4 if cifar else 0,
        flip=True,
        peak_lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4 if cifar else 1e-4,
        warmup_steps=0,
        cosine_alpha=0.0,
        cooldown_steps=0,
        backend=ConvBackend(
            case.conv_impl,
            channel_multiple=0 if case.width == 1.0 else 8,  # as configs/common.py, for the sweep's widths
            pallas_max_channels=case.pallas_max_channels,
        ),
    )


def build_model(library: str, setting: str, path: str, case: Case, run: RunSpec):
    """The Flax module a row trains."""
    dtype = resnet.DTYPES[case.dtype]
    classes = case.info.num_classes
    if library == "qresnet":
        if path not in QRESNET_PATHS:
            raise ValueError(f"qresnet path {path!r}: choose one of {list(QRESNET_PATHS)}")
        return steps.create_model(run)
    if library == "plain_flax":
        return PlainResNet(case.model, classes, dtype=dtype)
    if library == "aqt":
        return baselines.aqt_model(case.model, classes, dtype, setting, path)
    if library == "qwix":
        return baselines.qwix_model(case.model, classes, dtype, setting)
    raise ValueError(f"unknown library {library!r}; choose from {LIBRARIES}")


def _stem_kernel(grads) -> jax.Array:
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        keys = [getattr(k, "key", str(k)) for k in path]
        if "stem" in keys and keys[-1] == "kernel":
            return leaf
    raise KeyError("no stem kernel in the gradients")


@dataclasses.dataclass
class Prepared:
    """A row's compiled step with its state and data, ready to time."""

    step: Any
    state: Any
    args: tuple  # the step's arguments between the state and the key
    keys: jax.Array
    stem_grad_norm: float
    warmup_s: float
    steps_per_call: int = 1
    programs: int = 0  # the step's compiled programs after the warm-up; a timed call must add none
    i: int = 0
    loss: float = float("nan")

    def time_one(self) -> float:
        """Runs one call to completion; returns its seconds per training step."""
        key = self.keys[self.i % self.keys.shape[0]]
        t = time.perf_counter()
        self.state, (loss, _) = self.step(self.state, *self.args, key)
        jax.block_until_ready(loss)
        elapsed = time.perf_counter() - t
        self.i += 1
        self.loss = jnp.ravel(loss)[-1]
        return elapsed / self.steps_per_call


def prepare(library: str, setting: str, path: str, case: Case, *, warmup: int, scan: int = 0) -> Prepared:
    """Builds one row's model and step (or, with `scan`, its epoch program of `scan` steps),
    compiles it and runs the warm-up calls."""
    run = run_spec(case, "float" if library != "qresnet" else setting, act_start_step=warmup)
    model = build_model(library, setting, path, case, run)
    key = jax.random.key(0)
    k_img, k_lab, k_init = jax.random.split(key, 3)
    images = jax.random.randint(k_img, (case.batch, *case.info.image_shape), 0, 256, jnp.int32).astype(jnp.uint8)
    labels = jax.random.randint(k_lab, (case.batch,), 0, case.info.num_classes)
    sample = data.normalize(images[:8], case.info)
    state = jax.jit(functools.partial(steps.create_train_state, run, model=model))(k_init, sample)

    # The trainer's quantized phase (`act_quant_phase` True); `switch`: the traced switch.
    act_quant = None if path == "switch" else True
    if act_quant:  # no calibration steps: start the EMA bounds at 1 (their values do not change the time)
        state = state.replace(quant_stats=jax.tree.map(jnp.ones_like, state.quant_stats))
    if scan:
        mesh = epoch_mesh()
        state = on_mesh(state, mesh)
        epoch = functools.partial(steps.train_epoch, run, mesh, model=model, act_quant=act_quant)
        step = jax.jit(epoch, donate_argnums=(0,))
        idx = jnp.arange(scan * case.batch, dtype=jnp.int32).reshape(scan, case.batch)
        args = (jnp.tile(images, (scan, 1, 1, 1)), jnp.tile(labels, scan), idx)
    else:
        step = jax.jit(functools.partial(steps.train_step, run, model=model, act_quant=act_quant), donate_argnums=(0,))
        args = (images, labels)
    row = Prepared(step, state, args, jax.random.split(key, 64), 0.0, 0.0, steps_per_call=max(scan, 1))
    t0 = time.perf_counter()
    calls = warm_up(step, row.time_one)  # compilations, the second one included where there is one
    for _ in range(warmup - calls):
        row.time_one()
    row.warmup_s = time.perf_counter() - t0
    row.programs = compiled_count(step)

    # Cross-entropy only (no L2), so a conv that passes no gradient shows 0.
    no_l2 = dataclasses.replace(run, weight_decay=0.0)
    x = data.normalize(images, case.info)
    grads, _ = jax.jit(functools.partial(steps.gradients, no_l2, model, act_quant=act_quant))(row.state, x, labels)
    row.stem_grad_norm = float(jnp.linalg.norm(_stem_kernel(grads).astype(jnp.float32)))
    return row


def time_row(row: Prepared, reference: Prepared | None, case: Case, *, steps: int) -> dict[str, Any]:
    """Times `steps` steps of `row`, each followed by one step of `reference` (the case's
    qresnet float step), so both medians come from the same stretch of time."""
    times, ref_times = [], []
    for _ in range(steps):
        times.append(row.time_one())
        if reference is not None:
            ref_times.append(reference.time_one())
    check_compiled(row.step, row.programs, "a timed step")
    if reference is not None:
        check_compiled(reference.step, reference.programs, "a timed float step")
    median = statistics.median(times)
    out = {
        "step_ms": round(1e3 * median, 3),
        "images_per_s": round(case.batch / median, 1),
        "stem_grad_norm": row.stem_grad_norm,
        "scan": row.steps_per_call if row.steps_per_call > 1 else 0,
        "loss": float(row.loss),
        "warmup_s": round(row.warmup_s, 2),
        "steps": steps,
    }
    if ref_times:
        ref = statistics.median(ref_times)
        out |= {"float_step_ms": round(1e3 * ref, 3), "vs_float": round(median / ref, 4)}
    return out


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    dev = jax.local_devices()[0]
    versions = {p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "aqtp", "qwix")}
    device = f"{dev.device_kind} ({dev.platform})"
    return {"device": device, "versions": versions, "commit": results.git_commit(), **results.xla_flags_field()}


def row_key(row: dict[str, Any]) -> tuple:
    keys = ("library", "model", "setting", "path", "dtype", "batch", "device")
    extra = (row.get("scan", 0), row.get("width", 1.0), row.get("xla_flags"), row.get("alone", False))
    extra += (row.get("conv_impl", "xla"), row.get("pallas_max_channels", 32), json.dumps(row.get("conv_tuning")))
    return (*(row[k] for k in keys), *extra)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(
    cases: Iterable[Case],
    rows=DEFAULT_ROWS,
    *,
    libraries: Iterable[str] = LIBRARIES,
    steps: int = 20,
    warmup: int = 3,
    out: str | Path | None = None,
    interleave: bool = True,
    scan: int = 0,
) -> list[dict[str, Any]]:
    """Times every (case, row) not already in `out`; prints and records each.

    Args:
      cases: model/size/batch/dtype combinations.
      rows: (library, setting, path) triples.
      libraries: keep only rows of these libraries.
      steps: timed steps (median reported); the issue asks for >= 20.
      warmup: untimed steps first (compilation).
      out: JSON-lines file, resumed and rewritten atomically after every row.
      interleave: time each row's steps alternating with the case's qresnet float
        step, and record that reference's median (`float_step_ms`) and the ratio
        (`vs_float`), so ratios compare the same stretch of time.
      scan: time the trainer's epoch program of this many steps per call instead
        of single steps (0).

    Returns:
      All rows in `out` (or measured, without `out`).
    """
    unknown = sorted(set(libraries) - set(LIBRARIES))
    if unknown:
        raise ValueError(f"unknown libraries {unknown}; choose from {list(LIBRARIES)}")
    env = environment()
    out = Path(out) if out else None
    done = read_rows(out) if out else []
    have = {row_key(r) for r in done}
    for case in cases:
        reference = None
        for library, setting, path in rows:
            if library not in libraries:
                continue
            row = {
                "library": library,
                "model": case.model,
                "setting": setting,
                "path": path,
                "dtype": case.dtype,
                "batch": case.batch,
                "image_size": case.image_size,
                "width": case.width,
                **(
                    {
                        "conv_impl": case.conv_impl,
                        "pallas_max_channels": case.pallas_max_channels,
                        "conv_tuning": dataclasses.asdict(conv_kernels.TUNING),
                    }
                    if case.conv_impl != "xla"
                    else {}
                ),
                "scan": scan,
                **({} if interleave else {"alone": True}),  # no float program compiled or timed beside it
                **env,
                "date": time.strftime("%Y-%m-%d"),
            }
            if row_key(row) in have:
                continue
            try:
                if reference is None and interleave:
                    reference = prepare("qresnet", "float", "qresnet", case, warmup=warmup, scan=scan)
                prepared = prepare(library, setting, path, case, warmup=warmup, scan=scan)
                row.update(time_row(prepared, reference, case, steps=steps))
                del prepared
                if row["stem_grad_norm"] == 0.0:
                    row["error"] = "zero gradient at the stem kernel: this conv path does not train (no STE)"
                elif not math.isfinite(row["loss"]):
                    row["error"] = f"non-finite loss {row['loss']}"
            except Exception as e:  # noqa: BLE001 - a library's failure is a result to record
                row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
            print(json.dumps(row), flush=True)
            done.append(row)
            if out:
                results.atomic_write_jsonl(out, done)
    return done


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def _times(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}x"


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: every row, and the ratios the issue asks for, per case and device."""
    lines = [
        "| device | model | dtype | batch | steps/call | library | setting | path | step ms | images/s | stem grad | "
        "vs qresnet float row | vs float, side by side | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floats = {
        (r["device"], r["model"], r["dtype"], r["batch"], r.get("scan", 0)): r["step_ms"]
        for r in rows
        if r["library"] == "qresnet" and r["setting"] == "float" and "step_ms" in r
    }
    for r in rows:
        base = floats.get((r["device"], r["model"], r["dtype"], r["batch"], r.get("scan", 0)))
        ratio = r["step_ms"] / base if base and "step_ms" in r else None
        lines.append(
            f"| {r['device']} | {r['model']} | {r['dtype']} | {r['batch']} | {r.get('scan') or 1} | "
            f"{r['library']} | {r['setting']} | "
            f"{r['path']} | {_fmt(r.get('step_ms'))} | {_fmt(r.get('images_per_s'), 0)} | "
            f"{_fmt(r.get('stem_grad_norm'), 4)} | {_times(ratio)} | {_times(r.get('vs_float'), 3)} | "
            f"{r.get('error', '')[:160]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", help=f"MODEL:IMAGE_SIZE:BATCH:DTYPE (default {list(DEFAULT_CASES)})")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated subset of " + ",".join(LIBRARIES))
    p.add_argument("--rows", help="comma-separated LIBRARY:SETTING:PATH rows, in order (default: all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--scan", type=int, default=0, help="time the trainer's epoch program of N steps per call")
    p.add_argument(
        "--alone",
        action="store_true",
        help="no float step timed beside each row (and none compiled before it in the process)",
    )
    p.add_argument(
        "--conv-impl",
        default="xla",
        choices=CONV_IMPLS,
        help="QConv's conv_impl: pallas runs 3x3 stride-1 convs as Triton kernels",
    )
    p.add_argument(
        "--pallas-max-channels", type=int, default=32, help="with --conv-impl pallas: wider convs stay XLA's"
    )
    p.add_argument(
        "--conv-tuning",
        default="",
        help="with --conv-impl pallas: KEY=VALUE,... fields of qresnet.conv_kernels.Tuning (e.g. fwd_block=64,warps=8)",
    )
    p.add_argument("--out", help="JSON-lines file (resumed)")
    p.add_argument("--report", help="print the markdown table of a JSON-lines file and exit")
    args = p.parse_args(argv)
    try:
        if args.report:
            print(report(read_rows(Path(args.report))), end="")
            return 0
        if args.steps < 1 or args.warmup < 1 or args.scan < 0:
            raise ValueError(
                f"--steps ({args.steps}) and --warmup ({args.warmup}) must be >= 1, --scan ({args.scan}) >= 0"
            )
        conv_kernels.TUNING = parse_tuning(args.conv_tuning)
        cases = [
            dataclasses.replace(parse_case(c), conv_impl=args.conv_impl, pallas_max_channels=args.pallas_max_channels)
            for c in (args.case or DEFAULT_CASES)
        ]
        rows = DEFAULT_ROWS
        if args.rows:
            rows = [tuple(r.split(":")) for r in args.rows.split(",")]
            bad = [r for r in rows if len(r) != 3]
            if bad:
                raise ValueError(f"--rows entries must be LIBRARY:SETTING:PATH, got {bad}")
            bad = [":".join(r) for r in rows if r[0] == "qresnet" and r[2] not in QRESNET_PATHS]
            if bad:
                raise ValueError(f"--rows {bad}: a qresnet row's path is one of {list(QRESNET_PATHS)}")
        run(
            cases,
            rows,
            libraries=args.libraries.split(","),
            steps=args.steps,
            warmup=args.warmup,
            out=args.out,
            scan=args.scan,
            interleave=not args.alone,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
