"""Training and evaluation: `train_and_evaluate(config, workdir)`.

The whole (small) dataset lives on the accelerator; an epoch is one jitted
`lax.scan` over `train_step`, with cropping and flipping done on device. The
batch is sharded over every local device (`jax.sharding`); BN and bound
statistics are computed over the global batch. ImageNet-sized datasets stream
from TFDS instead (`imagenet_input`), one jitted step per batch.

Activation quantization starts at `act_start_step`: the steps before it (bounds
calibrating) and after it (bounds frozen, inputs quantized) are separate
compiled programs (`act_quant_phase`), so quantized steps carry no bound
bookkeeping; the evaluation program and the next phase's program compile in the background.

The workdir is the record: config.json (resolved config and per-layer specs),
metrics.jsonl (one line per epoch), tb/ (TensorBoard events), ckpt/ (Orbax),
result.json. Re-running the
same command resumes from the last checkpoint. SIGTERM stops a run at the end of
the epoch in flight, after saving a checkpoint (`Interrupted`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from qresnet import config_lib, cost, data, imagenet_input, resnet, results, tensorboard
from qresnet.quant import specs as specs_lib


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class Interrupted(TrainError):
    """SIGTERM stopped the run at an epoch's end, after saving a checkpoint; re-running resumes it."""


@contextlib.contextmanager
def stop_requests():
    """Yields a list that gets the signal number once SIGTERM arrives, instead of dying at once.

    The training loop checks it after each epoch, saves a checkpoint and stops, so a
    preempted or timed-out run loses at most the epoch in flight. Only the main thread can
    take signals; elsewhere the list stays empty and SIGTERM keeps its usual effect.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    quant_stats: Any
    opt_state: Any
    # The distillation teacher's {"params", "batch_stats"} (None without distillation); constant,
    # not checkpointed: loaded from its run at every start.
    teacher: Any = None

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats, "quant_stats": self.quant_stats}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a run needs, resolved once from the config (no ConfigDict below here)."""

    model_name: str
    width: float
    dtype: str
    channel_multiple: int
    info: data.DatasetInfo
    specs: Mapping[str, specs_lib.QuantSpec]
    batch_size: int
    num_epochs: int
    steps_per_epoch: int
    act_start_step: int
    crop_pad: int
    flip: bool
    peak_lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    warmup_steps: int
    cosine_alpha: float
    cooldown_steps: int
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    conv_impl: str = "xla"  # QConv's: "xla" or "pallas" (model.conv_impl "auto" resolved)
    pallas_max_channels: int = 32
    fold_bn: bool = False  # the BN-folded network for fused integer deployment (resnet.ResNet)

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch


def resolve_specs(config: ml_collections.ConfigDict) -> Mapping[str, specs_lib.QuantSpec]:
    """The config's rules resolved against its model's layers."""
    info = data.dataset_info(config.dataset.name)
    names = resnet.layer_names(config.model.name, float(config.model.width), info.num_classes, info.image_shape)
    return specs_lib.resolve_specs(config.quant.rules, names, resnet.signed_layers(names))


def config_cost(config: ml_collections.ConfigDict, specs=None) -> dict[str, Any]:
    """`cost.model_cost` for a config (its model, dataset shape and rules)."""
    info = data.dataset_info(config.dataset.name)
    specs = resolve_specs(config) if specs is None else specs
    ref = None
    if config.cost.reference:
        ref = (config.cost.reference, 1.0, info.num_classes, info.image_shape)
    return cost.model_cost(
        config.model.name,
        width=float(config.model.width),
        num_classes=info.num_classes,
        input_shape=info.image_shape,
        specs=specs,
        reference=ref,
    )


def make_run_spec(config: ml_collections.ConfigDict, num_train: int, specs=None) -> RunSpec:
    o = config.optim
    if o.batch_size < 1 or o.batch_size % jax.device_count():
        raise TrainError(
            f"optim.batch_size={o.batch_size} must be a positive multiple of the {jax.device_count()} device(s)"
        )
    if o.num_epochs < 1:
        raise TrainError(f"optim.num_epochs={o.num_epochs} must be >= 1")
    if config.checkpoint_every_epochs < 1:
        raise TrainError(
            f"checkpoint_every_epochs={config.checkpoint_every_epochs} must be >= 1 (the last epoch is always saved)"
        )
    steps_per_epoch = num_train // o.batch_size
    if steps_per_epoch < 1:
        raise TrainError(
            f"optim.batch_size={o.batch_size} exceeds the {num_train} training examples; use a smaller batch"
        )
    total = o.num_epochs * steps_per_epoch
    distill = config.get("distill") or {"weight": 0.0, "temperature": 1.0}  # absent in older records
    if not 0.0 <= distill["weight"] <= 1.0:
        raise TrainError(f"distill.weight={distill['weight']} must be in [0, 1] (0 = no distillation)")
    if distill["temperature"] <= 0:
        raise TrainError(f"distill.temperature={distill['temperature']} must be > 0")
    if distill["weight"] > 0 and not config.get("init_from"):
        raise TrainError(
            f"distill.weight={distill['weight']} needs a teacher: name a finished float run with "
            "--config.init_from=RUN (the student starts from it and learns from its outputs)"
        )
    start = config.quant.act_start_step
    if start < 0:
        start = int(round(config.quant.act_start_frac * total))
    return RunSpec(
        model_name=config.model.name,
        width=float(config.model.width),
        dtype=config.model.dtype,
        channel_multiple=int(config.model.get("channel_multiple", 0)),  # absent in older records
        info=data.dataset_info(config.dataset.name),
        specs=resolve_specs(config) if specs is None else specs,
        batch_size=o.batch_size,
        num_epochs=o.num_epochs,
        steps_per_epoch=steps_per_epoch,
        act_start_step=start,
        crop_pad=config.dataset.crop_pad,
        flip=config.dataset.flip,
        peak_lr=o.base_lr * o.batch_size / 256,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
        warmup_steps=int(o.warmup_epochs * steps_per_epoch),
        cosine_alpha=o.cosine_alpha,
        cooldown_steps=int(o.cooldown_epochs * steps_per_epoch),
        distill_weight=float(distill["weight"]),
        distill_temperature=float(distill["temperature"]),
        conv_impl=conv_impl(str(config.model.get("conv_impl", "xla"))),  # absent in older records
        pallas_max_channels=config.model.get("pallas_max_channels", 32),
        fold_bn=bool(config.model.get("fold_bn", False)),  # absent in older records
    )


def conv_impl(name: str) -> str:
    """QConv's conv_impl for model.conv_impl: "auto" is "pallas" on one CUDA GPU of compute
    capability 8.0 or newer (the Triton kernels are GPU-only, their bf16 dots need Ampere or
    newer, and a pallas_call does not split over a sharded batch), else "xla"."""
    if name not in ("auto", *resnet.CONV_IMPLS):
        raise TrainError(f"model.conv_impl={name!r} must be auto, xla or pallas (e.g. --config.model.conv_impl=auto)")
    if name == "auto":
        devices = jax.devices()
        return "pallas" if len(devices) == 1 and _triton_bf16_gpu(devices[0]) else "xla"
    return name


def _triton_bf16_gpu(device) -> bool:
    """Whether `device` is a CUDA GPU of compute capability >= 8.0 (ROCm GPUs report no "major.minor")."""
    if device.platform != "gpu":
        return False
    try:
        return int(str(getattr(device, "compute_capability", "")).split(".")[0]) >= 8
    except ValueError:
        return False


def learning_rate(run: RunSpec, step: jax.Array) -> jax.Array:
    """Linear warm-up, cosine decay to alpha, then a linear cool-down (paper.md section 4)."""
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1) / max(run.warmup_steps, 1))
    span = max(run.total_steps - run.warmup_steps - run.cooldown_steps, 1)
    r = jnp.clip((step - run.warmup_steps) / span, 0.0, 1.0)
    cosine = run.cosine_alpha + (1 - run.cosine_alpha) * 0.5 * (1 + jnp.cos(jnp.pi * r))
    cool = jnp.minimum(1.0, (run.total_steps - step) / run.cooldown_steps) if run.cooldown_steps else 1.0
    return run.peak_lr * warm * cosine * cool


def create_model(run: RunSpec) -> resnet.ResNet:
    return resnet.create_model(
        run.model_name,
        num_classes=run.info.num_classes,
        width=run.width,
        specs=run.specs,
        dtype=run.dtype,
        channel_multiple=run.channel_multiple,
        conv_impl=run.conv_impl,
        pallas_max_channels=run.pallas_max_channels,
        fold_bn=run.fold_bn,
    )


def create_optimizer(run: RunSpec) -> optax.GradientTransformation:
    return optax.sgd(functools.partial(learning_rate, run), momentum=run.momentum, nesterov=run.nesterov)


def create_train_state(run: RunSpec, key: jax.Array, sample: jax.Array, model: nn.Module | None = None) -> TrainState:
    """Initialises from a real batch (LSQ bounds start from data); `model` defaults to the run's."""
    model = create_model(run) if model is None else model
    variables = model.init(key, sample, train=False, act_quant=True)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        quant_stats=variables.get("quant_stats", {}),
        opt_state=create_optimizer(run).init(params),
    )


def teacher_model(run: RunSpec) -> resnet.ResNet:
    """The run's architecture with every layer float, with BN: the distillation teacher (a float run)."""
    return create_model(dataclasses.replace(run, specs={name: specs_lib.FLOAT for name in run.specs}, fold_bn=False))


def distill_loss(logits, teacher_logits, labels, weight: float, temperature: float) -> jax.Array:
    """Mean of (1 - weight) * cross-entropy + weight * T^2 * KL(teacher || student) at temperature T.

    Args:
      logits: the student's (batch, classes).
      teacher_logits: the teacher's, same shape (no gradient flows into them).
      labels: (batch,) integer labels.
      weight: share of the distillation term, in [0, 1].
      temperature: softens both distributions; T^2 keeps the term's gradients at the scale of T = 1.

    Returns:
      The scalar loss.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = logits.astype(jnp.float32) / temperature
    kl = jnp.sum(jax.nn.softmax(t) * (jax.nn.log_softmax(t) - jax.nn.log_softmax(s)), axis=-1)
    return jnp.mean((1.0 - weight) * ce + weight * temperature**2 * kl)


def _l2(params) -> jax.Array:
    return sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params) if p.ndim > 1)


def gradients(run: RunSpec, model: nn.Module, state: TrainState, x: jax.Array, labels: jax.Array, act_quant=None):
    """Gradient of cross-entropy (or `distill_loss` with a teacher) + L2 (run.weight_decay) on a
    normalised batch; returns (grads, (new, logits, ce)), ce the plain cross-entropy.

    `act_quant` None switches activation quantization on at run.act_start_step
    inside the program (traced); True/False fix it when compiling.
    """
    if act_quant is None:
        act_quant = state.step >= run.act_start_step
    teacher_logits = None
    if run.distill_weight > 0:
        if state.teacher is None:
            raise TrainError("distill.weight > 0 but the state carries no teacher (see load_teacher)")
        teacher_logits = teacher_model(run).apply(state.teacher, x, train=False, act_quant=True)

    def loss_fn(params):
        variables = {**state.variables(), "params": params}
        logits, new = model.apply(variables, x, train=True, act_quant=act_quant, mutable=["batch_stats", "quant_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss = ce
        if teacher_logits is not None:
            loss = distill_loss(logits, teacher_logits, labels, run.distill_weight, run.distill_temperature)
        return loss + 0.5 * run.weight_decay * _l2(params), (new, logits, ce)

    return jax.grad(loss_fn, has_aux=True)(state.params)


def train_step(
    run: RunSpec,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    model: nn.Module | None = None,
    act_quant=None,
):
    """One SGD step on a uint8 batch; returns the new state and (loss, correct).

    `model` defaults to the run's ResNet; the benchmarks pass other Flax models
    (plain, AQT, Qwix) that take the same call arguments, to time the same step.
    `act_quant`: as in `gradients`.
    """
    model = create_model(run) if model is None else model
    x = data.normalize(data.augment(key, images, run.crop_pad, run.flip), run.info, jnp.float32)
    grads, (new, logits, ce) = gradients(run, model, state, x, labels, act_quant)
    updates, opt_state = create_optimizer(run).update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        batch_stats=new.get("batch_stats", {}),
        quant_stats=new.get("quant_stats", state.quant_stats),
    )
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return state, (ce, correct)


def act_quant_phase(run: RunSpec, first_step: int, num_steps: int) -> bool | None:
    """How a program that runs steps [first_step, first_step + num_steps) quantizes activations.

    False before run.act_start_step (bounds calibrate), True from it (bounds
    frozen: no batch-max reduction or select on the hot path), None where the
    start falls inside (a traced switch). Runs without quantized activations get
    True, which leaves float layers unchanged, so they compile one program.

    Args:
      run: the run.
      first_step: the program's first step.
      num_steps: how many steps it runs.

    Returns:
      The `act_quant` to compile `train_step` with.
    """
    if not any(s.a_bits is not None for s in run.specs.values()):
        return True
    if first_step + num_steps <= run.act_start_step:
        return False
    if first_step >= run.act_start_step:
        return True
    return None


def train_epoch(run: RunSpec, mesh, state: TrainState, images, labels, idx, key, act_quant=None, model=None):
    """Scans `train_step` over idx (steps, batch) of on-device data; `act_quant`, `model` as in `train_step`."""
    batch_sharding = NamedSharding(mesh, P("data"))

    def body(state, xs):
        i, k = xs
        imgs = jax.lax.with_sharding_constraint(images[i], batch_sharding)
        return train_step(run, state, imgs, labels[i], k, model=model, act_quant=act_quant)

    keys = jax.random.split(key, idx.shape[0])
    return jax.lax.scan(body, state, (idx, keys))


def eval_step(run: RunSpec, state: TrainState, images, labels, mask):
    """(loss sum, correct count) over one padded uint8 batch."""
    logits = create_model(run).apply(
        state.variables(), data.normalize(images, run.info), train=False, act_quant=state.step >= run.act_start_step
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(ce * mask), jnp.sum((jnp.argmax(logits, -1) == labels) * mask)


def evaluate_all(run: RunSpec, state: TrainState, images, labels, mask):
    """Scans `eval_step` over (batches, batch, ...) arrays; returns sums."""

    def body(carry, xs):
        loss, correct = eval_step(run, state, *xs)
        return (carry[0] + loss, carry[1] + correct), None

    return jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), (images, labels, mask))[0]


def smooth(values: list[float], window: int) -> list[float]:
    """Triangular smoothing (weights 1,2,..,k,..,2,1 over `window` points), renormalised at the ends."""
    half = window // 2
    weights = [half + 1 - abs(j) for j in range(-half, half + 1)]
    out = []
    for i in range(len(values)):
        num = den = 0.0
        for j, w in zip(range(i - half, i + half + 1), weights):
            if 0 <= j < len(values):
                num += w * values[j]
                den += w
        out.append(num / den)
    return out


def report(history: list[dict[str, Any]], act_start_step: int, window: int) -> dict[str, Any]:
    """The paper's reporting: best smoothed eval top-1 at steps >= act_start_step."""
    evals = [h for h in history if "eval_top1" in h]
    sm_eval = smooth([h["eval_top1"] for h in evals], window)
    sm_train = smooth([h["train_top1"] for h in evals], window)
    eligible = [i for i, h in enumerate(evals) if h["step"] >= act_start_step] or list(range(len(evals)))
    best = max(eligible, key=lambda i: sm_eval[i])
    return {
        "top1": sm_eval[best],
        "top1_last": evals[-1]["eval_top1"],
        "train_top1_at_best": sm_train[best],
        "best_step": evals[best]["step"],
        "best_epoch": evals[best]["epoch"],
    }


def device_description() -> str:
    devs = jax.local_devices()
    return f"{len(devs)}x {devs[0].device_kind} ({devs[0].platform})"


def xla_flags_field() -> dict[str, str]:
    """{"xla_flags": $XLA_FLAGS} if set (they change the programs XLA builds), else {}: for records."""
    return {"xla_flags": os.environ["XLA_FLAGS"]} if os.environ.get("XLA_FLAGS") else {}


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> str:
    """HEAD of the checkout ("-dirty" if modified), or $QRESNET_COMMIT where there is no .git."""
    if os.environ.get("QRESNET_COMMIT"):
        return os.environ["QRESNET_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode:
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _eval_batches(images, labels, batch):
    n = len(labels)
    batches = math.ceil(n / batch)
    pad = batches * batch - n
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = lambda a: a.reshape(batches, batch, *a.shape[1:])  # noqa: E731
    return shape(images), shape(labels), shape(mask)


def check_workdir(workdir: Path, record: dict[str, Any]) -> None:
    """Refuses to resume into a workdir that holds another config."""
    path = workdir / "config.json"
    if not path.exists():
        return
    old = results.read_json(path)
    if old.get("config") != record["config"]:
        diff = sorted(_diff_keys(old.get("config", {}), record["config"]))
        raise TrainError(
            f"workdir {workdir} holds a run of a different config (differs at: {', '.join(diff[:8]) or '?'}); "
            f"use another --workdir, or delete {workdir} to start fresh"
        )


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, quiet: bool = False
) -> dict[str, Any]:
    """Trains a config to the end (resuming from workdir) and writes result.json.

    Args:
      config: a ConfigDict from a configs/ file (with overrides applied).
      workdir: the run's folder; created if missing.
      quiet: no progress lines.

    Returns:
      The result.json object.
    """
    import orbax.checkpoint as ocp

    t_enter = time.perf_counter()
    workdir = Path(workdir).resolve()
    specs = resolve_specs(config)
    cost_obj = config_cost(config, specs)
    record = {"config": config_lib.to_json(config), "specs": specs_lib.specs_to_json(specs)}
    check_workdir(workdir, record)
    done = results.read_result(workdir)
    if done is not None:
        return done

    info = data.dataset_info(config.dataset.name)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    key = jax.random.key(config.seed)
    if info.streaming:
        if config.dataset.train_subset or config.dataset.test_subset:
            raise TrainError(
                f"dataset.train_subset/test_subset apply to in-memory datasets, not to streaming {info.name}; "
                "prepare a smaller TFDS dataset and name it with --config.dataset.tfds_name"
            )
        stream = stream_spec(config)
        sources = {s: imagenet_input.open_source(stream, s) for s in (stream.train_split, stream.eval_split)}
        n_train, n_test = len(sources[stream.train_split]), len(sources[stream.eval_split])
        # The input pipeline crops and flips on the host.
        run = dataclasses.replace(make_run_spec(config, n_train, specs), crop_pad=0, flip=False)
        feed = _streaming_feed(config, run, mesh, key, stream, sources)
    else:
        arrays = data.load(
            config.dataset.name,
            config.dataset.data_dir,
            (config.dataset.synthetic_train, config.dataset.synthetic_test),
            via_tfds=config.dataset.via_tfds,
            tfds_dir=config.dataset.tfds_dir,
        )
        arrays = data.subset(arrays, config.dataset.train_subset, config.dataset.test_subset)
        n_train, n_test = len(arrays.train_labels), len(arrays.test_labels)
        run = make_run_spec(config, n_train, specs)
        feed = _in_memory_feed(config, run, mesh, key, arrays)
    if config.get("init_from") and (run.distill_weight > 0 or not (workdir / "ckpt").exists()):
        # A bad source fails here, before anything is written (the checkpoint loads later).
        _source_config(config.init_from, run, teacher=run.distill_weight > 0)
    workdir.mkdir(parents=True, exist_ok=True)
    results.atomic_write_json(
        workdir / "config.json",
        {**record, "act_start_step": run.act_start_step, "steps_per_epoch": run.steps_per_epoch},
    )

    replicated = NamedSharding(mesh, P())
    sample = data.normalize(jnp.asarray(feed.sample), run.info)
    state = jax.jit(functools.partial(create_train_state, run), out_shardings=replicated)(
        jax.random.fold_in(key, 0), sample
    )
    manager = ocp.CheckpointManager(workdir / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    state, start_epoch = _restore(manager, state)
    if start_epoch == 0 and config.get("init_from"):  # absent in older records
        state = jax.device_put(warm_start(state, config.init_from, run), replicated)
    if run.distill_weight > 0:  # before the first epoch: the programs compile for a state with it
        state = state.replace(teacher=jax.device_put(load_teacher(config.init_from, run), replicated))
    history = [h for h in results.read_jsonl(workdir / "metrics.jsonl") if h["epoch"] <= start_epoch]
    results.atomic_write_text(workdir / "metrics.jsonl", "".join(results.to_json_line(h) for h in history))

    writer = tensorboard.SummaryWriter(workdir / "tb")
    images_per_epoch = run.steps_per_epoch * run.batch_size
    timed_images, timed_s, first_epoch_s = 0, 0.0, None
    t_run = time.perf_counter()
    setup_s = t_run - t_enter
    with stop_requests() as stop:
        for epoch in range(start_epoch, run.num_epochs):
            t0 = time.perf_counter()
            state, losses, correct = _oom_advice(run, feed.train_epoch, state, epoch)
            dt = time.perf_counter() - t0
            _check_finite(losses, epoch, run)
            if epoch > start_epoch:  # The first epoch of a process includes compilation.
                timed_images += images_per_epoch
                timed_s += dt
            else:
                first_epoch_s = dt
            loss_sum, eval_correct = feed.evaluate(state)
            row = {
                "epoch": epoch + 1,
                "step": (epoch + 1) * run.steps_per_epoch,
                "lr": float(learning_rate(run, (epoch + 1) * run.steps_per_epoch - 1)),
                "train_loss": float(losses.mean()),
                "train_top1": float(np.sum(correct)) / images_per_epoch,
                "eval_loss": float(loss_sum) / n_test,
                "eval_top1": float(eval_correct) / n_test,
                "images_per_s": images_per_epoch / dt,
                "epoch_s": dt,
            }
            history.append(row)
            results.append_jsonl(workdir / "metrics.jsonl", row)
            writer.scalars(row["step"], {k: v for k, v in row.items() if k not in ("epoch", "step")})
            if not quiet:
                _progress(row, run)
            saved = (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == run.num_epochs
            if saved:
                manager.save(epoch + 1, args=ocp.args.StandardSave(_to_tree(state)))
            if stop and epoch + 1 < run.num_epochs:  # After the last epoch, finishing is quicker.
                _stop(manager, state, epoch + 1, run, workdir, stop[0], saved)
    manager.wait_until_finished()

    summary = report(history, run.act_start_step, config.smoothing_window)
    result = {
        "name": workdir.name,
        "model": run.model_name,
        "dataset": run.info.name,
        "setting": config.setting,
        "width": run.width,
        "epochs": run.num_epochs,
        **summary,
        "cost": {"total": cost_obj["total"], "ratio": cost_obj["ratio"]},
        "w_bits": {n: s.w_bits for n, s in specs.items()},
        "a_bits": {n: s.a_bits for n, s in specs.items()},
        "images_per_s": timed_images / timed_s if timed_s else history[-1]["images_per_s"],
        "wall_s": time.perf_counter() - t_run,
        # Fixed costs of this process: data, model and checkpoint set-up before the first epoch,
        # and that epoch (compiling its train program, and its evaluation waiting for the evaluation
        # program's background compilation if that is not done).
        "setup_s": setup_s,
        "first_epoch_s": first_epoch_s,
        # Background compilations in this process, seconds by program: evaluation ("eval"), later phases.
        "compile_s": dict(feed.programs.compile_s) if feed.programs else {},
        **(
            {"float_first_compile_s": feed.programs.float_first_s}
            if feed.programs and feed.programs.float_first_s is not None
            else {}
        ),
        "resumed_from_epoch": start_epoch,
        "batch_size": run.batch_size,
        "seed": config.seed,
        "init_from": config.get("init_from", ""),  # the run it was fine-tuned from ("" = from scratch)
        "distill_weight": run.distill_weight,
        "device": device_description(),
        **xla_flags_field(),
        "conv_impl": run.conv_impl,  # what model.conv_impl resolved to ("auto": per device)
        "versions": versions(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
    }
    results.atomic_write_json(workdir / "result.json", result)
    return result


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a workdir's run trained with (its `config.json`)."""
    return ml_collections.ConfigDict(results.read_json(Path(workdir) / "config.json")["config"])


def restore_final(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[TrainState, Mapping]:
    """The newest readable checkpoint of a workdir, and the run's specs (for export)."""
    import orbax.checkpoint as ocp

    specs = resolve_specs(config)
    info = data.dataset_info(config.dataset.name)
    n_train = config.dataset.synthetic_train if info.name == "synthetic" else info.num_train
    run = make_run_spec(config, config.dataset.train_subset or n_train, specs)
    sample = jnp.zeros((run.batch_size, *info.image_shape), jnp.float32)
    abstract = jax.eval_shape(functools.partial(create_train_state, run), jax.random.key(0), sample)
    state, epoch = _restore(ocp.CheckpointManager(Path(workdir).resolve() / "ckpt"), abstract)
    if epoch == 0:
        raise TrainError(f"{workdir} has no readable checkpoint")
    return state, specs


def warm_start(state: TrainState, source: str | Path, run: RunSpec) -> TrainState:
    """`state` with the weights and BN statistics of another run's newest checkpoint (fine-tuning).

    Every `params` and `batch_stats` leaf that the source run has is copied (cast to this run's
    dtype); leaves it lacks, such as learned (LSQ) bound offsets, keep their initial values. The
    step, the optimizer and the quantizers' state (`quant_stats`) start fresh: activation bounds
    are calibrated again on the new weights before activation quantization starts. A BN-folded
    run (model.fold_bn) started from a run with BN gets its weights with BN folded in
    (`resnet.fold_batch_norm`): the same function in inference mode.

    Args:
      state: a freshly initialised state of this run.
      source: the source run's workdir (config.json and a checkpoint), same model and width.
      run: this run's RunSpec.

    Returns:
      The new state.
    """
    src_config = _source_config(source, run)
    src_state, _ = restore_final(src_config, source)
    src_params, src_stats = src_state.params, src_state.batch_stats
    if run.fold_bn and not src_config.model.get("fold_bn", False):
        src_params, src_stats = resnet.fold_batch_norm(src_params, src_stats), {}
    elif src_config.model.get("fold_bn", False) and not run.fold_bn:
        raise TrainError(
            f"config.init_from={str(source)!r} is a BN-folded run (model.fold_bn) and this run has BN; "
            "start it from a run with BN, or set --config.model.fold_bn=True"
        )
    copied = []

    def merge(mine, theirs, path):
        if isinstance(mine, Mapping):
            return {
                k: merge(v, theirs.get(k) if isinstance(theirs, Mapping) else None, f"{path}/{k}")
                for k, v in mine.items()
            }
        if theirs is None:
            return mine
        if tuple(theirs.shape) != tuple(mine.shape):
            raise TrainError(
                f"config.init_from={str(source)!r}: {path} has shape {tuple(theirs.shape)} there and "
                f"{tuple(mine.shape)} here (is model.channel_multiple the same?)"
            )
        copied.append(path)
        return jnp.asarray(theirs, mine.dtype)

    params = merge(state.params, src_params, "params")
    batch_stats = merge(state.batch_stats, src_stats, "batch_stats")
    if not copied:
        raise TrainError(f"config.init_from={str(source)!r} shares no weights with this run")
    return state.replace(params=params, batch_stats=batch_stats)


def _source_config(source: str | Path, run: RunSpec, *, teacher: bool = False) -> ml_collections.ConfigDict:
    """The config of the run at `source` (config.init_from), checked to be a run of `run`'s model,
    width and dataset and, for a distillation `teacher`, float in every layer."""
    source = Path(source)
    if not (source / "config.json").is_file():
        raise TrainError(
            f"config.init_from={str(source)!r} is not a run's workdir (no config.json there); "
            "train that run first, or give the path of one"
        )
    src = run_config(source)
    mine = {"model.name": run.model_name, "model.width": run.width, "dataset.name": run.info.name}
    theirs = {"model.name": src.model.name, "model.width": float(src.model.width), "dataset.name": src.dataset.name}
    if mine != theirs:
        key = next(k for k in mine if mine[k] != theirs[k])
        raise TrainError(
            f"config.init_from={str(source)!r} is a run of {key}={theirs[key]!r}, this run has {mine[key]!r}; "
            "start from a run of the same model, width and dataset"
        )
    quantized = sorted(name for name, spec in resolve_specs(src).items() if not spec.is_float) if teacher else []
    if quantized:
        more = " ..." if len(quantized) > 3 else ""
        raise TrainError(
            f"config.init_from={str(source)!r} quantizes {', '.join(quantized[:3])}{more}; "
            "distillation needs a float teacher: start from a bf16 run"
        )
    return src


def load_teacher(source: str | Path, run: RunSpec) -> dict[str, Any]:
    """The distillation teacher's variables: the final weights and BN statistics of a float run.

    Args:
      source: the teacher run's workdir (config.init_from): same model, width and dataset, every
        layer float.
      run: the student's RunSpec.

    Returns:
      {"params", "batch_stats"} for `teacher_model(run)`.
    """
    # Same model, width and dataset (checked), so the same parameter shapes: channel padding
    # (model.channel_multiple) happens inside the layers, not in the parameters.
    src_state, _ = restore_final(_source_config(source, run, teacher=True), source)
    return {"params": src_state.params, "batch_stats": src_state.batch_stats}


def _epoch_indices(seed: int, epoch: int, n_train: int, run: RunSpec) -> np.ndarray:
    """(steps, batch) example indices of one epoch, a function of (seed, epoch) only."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_train)[: run.steps_per_epoch * run.batch_size]
    return perm.reshape(run.steps_per_epoch, run.batch_size).astype(np.int32)


def _oom_advice(run: RunSpec, fn, *args):
    """Calls fn; an out-of-memory error becomes advice on the batch size."""
    try:
        return fn(*args)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            smaller = max(run.batch_size // 2, jax.device_count())
            raise TrainError(
                f"out of memory at batch size {run.batch_size}; try --config.optim.batch_size={smaller}"
            ) from e
        raise


@dataclasses.dataclass
class _Feed:
    """A run's data: an init sample, one epoch of training, and the eval sums."""

    sample: Any  # uint8 batch for initialisation
    train_epoch: Any  # (state, epoch) -> (state, losses (steps,), correct (steps,))
    evaluate: Any  # state -> (loss sum, correct count)
    programs: Any = None  # the run's _PhasePrograms (their background compile times)


class _PhasePrograms:
    """The jitted programs of a run, one per activation-quantization phase (`act_quant_phase`).

    `prepare` compiles phases needed later on a background thread, from the
    shapes of the current call's arguments, so switching phase does not stall
    training for a compilation.
    """

    PHASE_NAMES = {False: "calibrate", None: "switch", True: "quantized"}

    def __init__(self, make):
        self._make = make
        self._fns: dict[bool | None, Any] = {}
        self._pending: dict[bool | None, concurrent.futures.Future] = {}
        self._pool = None
        # Seconds each background compilation took, by phase name: a run's record of how long
        # XLA (mostly its GPU autotuner) took, hidden behind training as it is.
        self.compile_s: dict[str, float] = {}
        self.float_first_s: float | None = None  # `config.compile_float_first`'s compilation, if any

    def _submit(self, key, name: str, jitted, args) -> None:
        """Queues the compilation of `jitted` for arguments shaped like `args` on the one
        background thread; its seconds go to compile_s[name]."""
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile")
        self._pending[key] = self._pool.submit(self._timed, name, jitted, shapes)

    def _timed(self, name, jitted, shapes):
        compiled, self.compile_s[name] = _timed_compile(jitted, shapes)
        return compiled

    def _take(self, key) -> None:
        """Moves a finished (or waited-for) background compilation of `key` to the programs."""
        if key in self._pending:
            self._fns[key] = self._pending.pop(key).result()

    def prepare(self, phases, args) -> None:
        """Starts compiling each phase in `phases` not yet compiled, in that order (one thread
        compiles them one after another), for arguments shaped like `args`."""
        for phase in phases:
            if phase not in self._fns and phase not in self._pending:
                self._submit(phase, self.PHASE_NAMES[phase], self._make(phase), args)

    def get(self, phase: bool | None):
        """The program for `phase`: compiled in the background, or jitted now."""
        self._take(phase)
        if phase not in self._fns:
            self._fns[phase] = self._make(phase)
        return self._fns[phase]

    def prepare_eval(self, jitted, args) -> None:
        """Starts compiling the evaluation program `jitted` for arguments shaped like `args`, ahead
        of the phases `prepare` queues after it: the first epoch needs it once it has trained."""
        if "eval" not in self._fns and "eval" not in self._pending:
            self._submit("eval", "eval", jitted, args)

    def get_eval(self, jitted):
        """The evaluation program: compiled in the background, or `jitted` itself."""
        self._take("eval")
        return self._fns.get("eval", jitted)


def _in_memory_feed(config, run: RunSpec, mesh, key, arrays: data.Arrays) -> _Feed:
    """The whole dataset on the devices; an epoch is one compiled scan."""
    replicated = NamedSharding(mesh, P())
    train_images = jax.device_put(arrays.train_images, replicated)
    train_labels = jax.device_put(arrays.train_labels, replicated)
    ev = [
        jax.device_put(a, replicated)
        for a in _eval_batches(arrays.test_images, arrays.test_labels, config.eval_batch_size)
    ]
    programs = _PhasePrograms(
        lambda phase: jax.jit(functools.partial(train_epoch, run, mesh, act_quant=phase), donate_argnums=(0,))
    )
    eval_fn = jax.jit(functools.partial(evaluate_all, run))
    n_train = len(arrays.train_labels)
    spe = run.steps_per_epoch
    float_first = bool(config.get("compile_float_first", False))  # absent in older records

    def one_epoch(state, epoch):
        nonlocal float_first
        idx = jax.device_put(_epoch_indices(config.seed, epoch, n_train, run), NamedSharding(mesh, P(None, "data")))
        epoch_key = jax.device_put(jax.random.fold_in(key, epoch + 1), replicated)
        args = (state, train_images, train_labels, idx, epoch_key)
        if float_first:
            float_first = False
            programs.float_first_s = _compile_float_program(run, mesh, args, arrays.train_images[:8])
        # The evaluation program and the other phases' programs compile in the background while this
        # one compiles and trains, in the order the epochs need them (one thread, one after another).
        programs.prepare_eval(eval_fn, (state, *ev))
        later = dict.fromkeys(act_quant_phase(run, e * spe, spe) for e in range(epoch + 1, run.num_epochs))
        programs.prepare(list(later), args)
        state, (losses, correct) = programs.get(act_quant_phase(run, epoch * spe, spe))(*args)
        return state, np.asarray(losses), np.asarray(correct)

    return _Feed(
        arrays.train_images[: run.batch_size], one_epoch, lambda state: programs.get_eval(eval_fn)(state, *ev), programs
    )


def _compile_float_program(run: RunSpec, mesh, args, sample) -> float:
    """Compiles, and drops, the float epoch program of the run's model for arguments like
    `args`; returns the seconds it took. A workaround under test for slow GPU autotuning of
    quantized programs compiled with no float program before them (docs/RESULTS.md): the
    float program's convolutions, autotuned first, are in XLA's cache when they are met again."""
    if all(s == specs_lib.FLOAT for s in run.specs.values()):
        return 0.0
    float_run = dataclasses.replace(run, specs={name: specs_lib.FLOAT for name in run.specs})
    x = data.normalize(jnp.asarray(sample), run.info)
    state = jax.eval_shape(lambda k: create_train_state(float_run, k, x), jax.random.key(0))
    replicated = NamedSharding(mesh, P())
    shapes = [jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)]
    shapes += [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for a in args[1:]]
    program = jax.jit(functools.partial(train_epoch, float_run, mesh, act_quant=True), donate_argnums=(0,))
    return _timed_compile(program, shapes)[1]


def _timed_compile(jitted, shapes) -> tuple[Any, float]:
    """(the compiled program, seconds it took) of a jitted function for argument shapes."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*shapes).compile()
    return compiled, round(time.perf_counter() - t0, 3)


def stream_spec(config: ml_collections.ConfigDict) -> imagenet_input.StreamSpec:
    """The streaming input's settings from a config."""
    info = data.dataset_info(config.dataset.name)
    spec = imagenet_input.StreamSpec(
        tfds_name=config.dataset.tfds_name or info.name,
        data_dir=config.dataset.tfds_dir,
        image_size=config.dataset.image_size or info.image_shape[0],
        batch_size=config.optim.batch_size,
        eval_batch_size=config.eval_batch_size,
        workers=config.dataset.workers,
        # Absent in older records, which ran with these.
        jpeg_draft=bool(config.dataset.get("jpeg_draft", True)),
        jpeg_window=bool(config.dataset.get("jpeg_window", False)),
        image_backend=config.dataset.get("image_backend", "pillow"),
        decode_threads=config.dataset.get("decode_threads", 1),
        decode_batches_per_call=config.dataset.get("decode_batches_per_call", 1),
        cpu_decode_share=config.dataset.get("cpu_decode_share", 0.0),
        gpu_decoder=config.dataset.get("gpu_decoder", "torchvision"),
    )
    from qresnet import nvjpeg  # its GPU libraries are imported only when it decodes

    if spec.gpu_decoder not in nvjpeg.GPU_DECODERS:
        raise TrainError(f"dataset.gpu_decoder={spec.gpu_decoder!r} is not one of {nvjpeg.GPU_DECODERS}")
    imagenet_input.check_backend(spec.image_backend, spec.gpu_decoder)
    if spec.jpeg_window:
        imagenet_input.check_window(spec.image_backend)
    for key in ("decode_threads", "decode_batches_per_call"):
        if getattr(spec, key) < 1:
            raise TrainError(f"dataset.{key}={getattr(spec, key)} must be >= 1")
    if not 0 <= spec.cpu_decode_share < 1:
        raise TrainError(
            f"dataset.cpu_decode_share={spec.cpu_decode_share} must be in [0, 1): the share of each train batch "
            "decoded on the CPU, the rest by nvjpeg (for all of it on the CPU, set dataset.image_backend=opencv)"
        )
    return spec


def _streaming_feed(config, run: RunSpec, mesh, key, stream: imagenet_input.StreamSpec, sources) -> _Feed:
    """Batches from the input pipeline, one jitted step each (the host prepares the next meanwhile)."""
    if config.get("compile_float_first", False):
        raise TrainError(
            "compile_float_first applies to in-memory datasets (CIFAR, Fashion-MNIST), not to streaming "
            f"{config.dataset.name}; leave --config.compile_float_first=False"
        )
    batch = NamedSharding(mesh, P("data"))
    eval_sharding = batch if stream.eval_batch_size % mesh.size == 0 else NamedSharding(mesh, P())
    programs = _PhasePrograms(
        lambda phase: jax.jit(functools.partial(train_step, run, act_quant=phase), donate_argnums=(0,))
    )
    eval_fn = jax.jit(functools.partial(eval_step, run))
    train_src, eval_src = sources[stream.train_split], sources[stream.eval_split]

    def one_epoch(state, epoch):
        k = jax.random.fold_in(key, epoch + 1)
        losses, correct = [], []
        batches = imagenet_input.train_batches(stream, train_src, seed=config.seed, epoch=epoch)
        for i, b in zip(range(run.steps_per_epoch), batches):
            images, labels = jax.device_put(b["image"], batch), jax.device_put(b["label"], batch)
            step = epoch * run.steps_per_epoch + i
            step_fn = programs.get(act_quant_phase(run, step, 1))
            state, (loss, right) = step_fn(state, images, labels, jax.random.fold_in(k, i))
            losses.append(loss)
            correct.append(right)
        return state, np.asarray(jnp.stack(losses)), np.asarray(jnp.stack(correct))

    def evaluate(state):
        loss_sum, correct = jnp.zeros(()), jnp.zeros(())
        for b in imagenet_input.eval_batches(stream, eval_src):
            loss, right = eval_fn(state, *(jax.device_put(b[k], eval_sharding) for k in ("image", "label", "mask")))
            loss_sum, correct = loss_sum + loss, correct + right
        return loss_sum, correct

    sample = next(imagenet_input.eval_batches(dataclasses.replace(stream, workers=0), eval_src))["image"]
    return _Feed(sample[: run.batch_size], one_epoch, evaluate, programs)


def _stop(manager, state, epoch: int, run: RunSpec, workdir: Path, signum: int, saved: bool) -> None:
    """Saves a checkpoint at `epoch` (unless just saved) and raises Interrupted."""
    import orbax.checkpoint as ocp

    if not saved:
        manager.save(epoch, args=ocp.args.StandardSave(_to_tree(state)))
    manager.wait_until_finished()
    raise Interrupted(
        f"stopped by {signal.Signals(signum).name} after epoch {epoch} of {run.num_epochs}; "
        f"checkpoint saved in {workdir / 'ckpt'}; re-run the same command to resume"
    )


def _check_finite(losses: np.ndarray, epoch: int, run: RunSpec) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = epoch * run.steps_per_epoch + int(bad[0]) + 1
        raise TrainError(
            f"loss became {losses[bad[0]]} at step {step} (epoch {epoch + 1}); lower "
            "--config.optim.base_lr or check the data; the last good checkpoint is kept"
        )


def _to_tree(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "quant_stats": state.quant_stats,
        "opt_state": state.opt_state,
    }


def _restore(manager, state: TrainState) -> tuple[TrainState, int]:
    """Restores the newest readable checkpoint; a corrupt one is reported and skipped."""
    import orbax.checkpoint as ocp

    for step in sorted(manager.all_steps(), reverse=True):
        try:
            tree = manager.restore(step, args=ocp.args.StandardRestore(_to_tree(state)))
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to an older one
            print(
                f"checkpoint {step} is unreadable ({type(e).__name__}: {str(e)[:200]}); trying an older one",
                file=sys.stderr,
            )
            continue
        return TrainState(**tree), int(step)
    return state, 0


def _progress(row: Mapping[str, Any], run: RunSpec) -> None:
    done = row["epoch"] / run.num_epochs
    bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
    print(
        f"[{bar}] epoch {row['epoch']}/{run.num_epochs} loss {row['train_loss']:.3f} "
        f"train {row['train_top1']:.4f} eval {row['eval_top1']:.4f} {row['images_per_s']:,.0f} img/s",
        flush=True,
    )
