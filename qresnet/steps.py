"""The pure pieces of training: the state, the model and optimizer, the loss, one step, one epoch.

`train_step` and `eval_step` are pure functions of (run, state, batch); the feeds
(`qresnet.feeds`) jit them once per activation-quantization phase
(`act_quant_phase`). The benchmarks time these same functions with other Flax
models (plain, AQT, Qwix) passed as `model`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from qresnet import data, resnet
from qresnet.quant import specs as specs_lib
from qresnet.run_spec import RunSpec, TrainError


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
    """The run's ResNet."""
    return resnet.create_model(
        run.model_name,
        num_classes=run.info.num_classes,
        width=run.width,
        specs=run.specs,
        dtype=run.dtype,
        backend=run.backend,
        fold_bn=run.fold_bn,
        replica_size=run.replica_size,
    )


def create_optimizer(run: RunSpec) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum on the run's schedule (`learning_rate`)."""
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
            raise TrainError("distill.weight > 0 but the state carries no teacher (see checkpoints.load_teacher)")
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
    if run.grad_accum_steps == 1:
        grads, (new, logits, ce) = gradients(run, model, state, x, labels, act_quant)
    else:
        grads, (new, logits, ce) = _accumulated(run, model, state, x, labels, act_quant)
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


def _accumulated(run: RunSpec, model: nn.Module, state: TrainState, x, labels, act_quant):
    """`gradients` over run.grad_accum_steps consecutive micro-batches of the batch, one at a time:
    the mean of their gradients, statistics (BN running averages and activation-bound EMAs move
    linearly with a batch's statistics, so their mean is the update of the mean statistic) and
    cross-entropies. With replica statistics this equals `gradients` on the whole batch."""
    k = run.grad_accum_steps
    xs = x.reshape(k, x.shape[0] // k, *x.shape[1:])
    ys = labels.reshape(k, labels.shape[0] // k)

    def body(acc, xy):
        grads, (new, logits, ce) = gradients(run, model, state, *xy, act_quant)
        summed = jax.tree.map(jnp.add, acc, (grads, new, ce)) if acc is not None else (grads, new, ce)
        return summed, logits

    first, first_logits = body(None, (xs[0], ys[0]))
    total, logits = jax.lax.scan(body, first, (xs[1:], ys[1:]))
    grads, new, ce = jax.tree.map(lambda t: t / k, total)
    return grads, (new, jnp.concatenate([first_logits[None], logits]).reshape(-1, first_logits.shape[-1]), ce)


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
