"""Feeding a run: its data on the device or streamed, and its compiled programs.

A `Feed` gives the loop an init sample, one epoch of training and the eval sums.
In-memory datasets live on the accelerator and an epoch is one compiled
`lax.scan` over `steps.train_step`, cropping and flipping on the device;
streaming datasets (`imagenet_input`) run one jitted step per batch while the
host prepares the next. The batch is sharded over every local device; BN and
bound statistics are computed over the global batch.

Activation quantization starts at `act_start_step`: the steps before it (bounds
calibrating) and after it (bounds frozen, inputs quantized) are separate
compiled programs (`steps.act_quant_phase`), so quantized steps carry no bound
bookkeeping; the evaluation program and the next phase's program compile on a
background thread (`PhasePrograms`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from qresnet import data, distributed, imagenet_input
from qresnet.quant import specs as specs_lib
from qresnet.run_spec import DataSpec, RunSpec, TrainError
from qresnet.steps import act_quant_phase, create_train_state, eval_step, evaluate_all, train_epoch, train_step


def load_arrays(spec: DataSpec) -> data.Arrays:
    """An in-memory dataset, subsets drawn."""
    arrays = data.load(spec.name, spec.data_dir, spec.synthetic_size, via_tfds=spec.via_tfds, tfds_dir=spec.tfds_dir)
    return data.subset(arrays, spec.train_subset, spec.test_subset)


def eval_batches(images, labels, batch):
    n = len(labels)
    batches = math.ceil(n / batch)
    pad = batches * batch - n
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = lambda a: a.reshape(batches, batch, *a.shape[1:])  # noqa: E731
    return shape(images), shape(labels), shape(mask)


def epoch_indices(seed: int, epoch: int, n_train: int, run: RunSpec) -> np.ndarray:
    """(steps, batch) example indices of one epoch, a function of (seed, epoch) only."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_train)[: run.steps_per_epoch * run.batch_size]
    return perm.reshape(run.steps_per_epoch, run.batch_size).astype(np.int32)


def oom_advice(run: RunSpec, fn, *args):
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
class Feed:
    """A run's data: an init sample, one epoch of training, and the eval sums."""

    sample: Any  # uint8 batch for initialisation
    # (state, epoch, on_steps) -> (state, losses (steps,), correct (steps,)); on_steps(n) hears of
    # n more steps done (per step where the host drives each step, once for a compiled epoch).
    train_epoch: Any
    evaluate: Any  # state -> (loss sum, correct count)
    programs: Any = None  # the run's PhasePrograms (their background compile times)


class PhasePrograms:
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
        self.float_first_s: float | None = None  # `compile_float_first`'s compilation, if any

    def _submit(self, key, name: str, jitted, args) -> None:
        """Queues the compilation of `jitted` for arguments shaped like `args` on the one
        background thread; its seconds go to compile_s[name]."""
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile")
        self._pending[key] = self._pool.submit(self._timed, name, jitted, shapes)

    def _timed(self, name, jitted, shapes):
        compiled, self.compile_s[name] = timed_compile(jitted, shapes)
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


def in_memory_feed(run: RunSpec, mesh, key, arrays: data.Arrays) -> Feed:
    """The whole dataset on the devices; an epoch is one compiled scan."""
    replicated = NamedSharding(mesh, P())
    train_images = jax.device_put(arrays.train_images, replicated)
    train_labels = jax.device_put(arrays.train_labels, replicated)
    ev = [
        jax.device_put(a, replicated) for a in eval_batches(arrays.test_images, arrays.test_labels, run.eval_batch_size)
    ]
    programs = PhasePrograms(
        lambda phase: jax.jit(functools.partial(train_epoch, run, mesh, act_quant=phase), donate_argnums=(0,))
    )
    eval_fn = jax.jit(functools.partial(evaluate_all, run))
    n_train = len(arrays.train_labels)
    spe = run.steps_per_epoch
    float_first = run.compile_float_first

    def one_epoch(state, epoch, on_steps=lambda n: None):
        nonlocal float_first
        idx = jax.device_put(epoch_indices(run.seed, epoch, n_train, run), NamedSharding(mesh, P(None, "data")))
        epoch_key = distributed.put_replicated(jax.random.fold_in(key, epoch + 1), replicated)
        args = (state, train_images, train_labels, idx, epoch_key)
        if float_first:
            float_first = False
            programs.float_first_s = compile_float_program(run, mesh, args, arrays.train_images[:8])
        # The evaluation program and the other phases' programs compile in the background while this
        # one compiles and trains, in the order the epochs need them (one thread, one after another).
        programs.prepare_eval(eval_fn, (state, *ev))
        later = dict.fromkeys(act_quant_phase(run, e * spe, spe) for e in range(epoch + 1, run.num_epochs))
        programs.prepare(list(later), args)
        state, (losses, correct) = programs.get(act_quant_phase(run, epoch * spe, spe))(*args)
        losses, correct = np.asarray(losses), np.asarray(correct)
        on_steps(spe)
        return state, losses, correct

    return Feed(
        arrays.train_images[: run.batch_size], one_epoch, lambda state: programs.get_eval(eval_fn)(state, *ev), programs
    )


def compile_float_program(run: RunSpec, mesh, args, sample) -> float:
    """Compiles, and drops, the float epoch program of the run's model for arguments like
    `args`; returns the seconds it took. For GPUs where XLA's autotuning of a quantized program
    compiled with no float program before it is slow: the float program's convolutions, autotuned
    first, are in XLA's cache when they are met again."""
    if all(s == specs_lib.FLOAT for s in run.specs.values()):
        return 0.0
    float_run = dataclasses.replace(run, specs={name: specs_lib.FLOAT for name in run.specs})
    x = data.normalize(jnp.asarray(sample), run.info)
    state = jax.eval_shape(lambda k: create_train_state(float_run, k, x), jax.random.key(0))
    replicated = NamedSharding(mesh, P())
    shapes = [jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)]
    shapes += [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for a in args[1:]]
    program = jax.jit(functools.partial(train_epoch, float_run, mesh, act_quant=True), donate_argnums=(0,))
    return timed_compile(program, shapes)[1]


def timed_compile(jitted, shapes) -> tuple[Any, float]:
    """(the compiled program, seconds it took) of a jitted function for argument shapes."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*shapes).compile()
    return compiled, round(time.perf_counter() - t0, 3)


def streaming_feed(run: RunSpec, mesh, key, stream: imagenet_input.StreamSpec, sources) -> Feed:
    """Batches from the input pipeline, one jitted step each (the host prepares the next meanwhile)."""
    if run.compile_float_first:
        raise TrainError(
            "compile_float_first applies to in-memory datasets (CIFAR, Fashion-MNIST), not to streaming "
            f"{run.info.name}; leave --config.compile_float_first=False"
        )
    batch = NamedSharding(mesh, P("data"))
    eval_sharding = batch if stream.eval_batch_size % mesh.size == 0 else NamedSharding(mesh, P())
    process = (jax.process_index(), jax.process_count())
    if process[1] > 1 and (run.batch_size % mesh.size or stream.eval_batch_size % mesh.size):
        raise TrainError(
            f"a multi-process run splits each batch over all {mesh.size} devices: make optim.batch_size "
            f"({run.batch_size}) and eval_batch_size ({stream.eval_batch_size}) multiples of {mesh.size}"
        )
    put = distributed.put_local if process[1] > 1 else jax.device_put
    programs = PhasePrograms(
        lambda phase: jax.jit(functools.partial(train_step, run, act_quant=phase), donate_argnums=(0,))
    )
    eval_fn = jax.jit(functools.partial(eval_step, run))
    train_src, eval_src = sources[stream.train_split], sources[stream.eval_split]

    def one_epoch(state, epoch, on_steps=lambda n: None):
        k = jax.random.fold_in(key, epoch + 1)
        losses, correct = [], []
        batches = imagenet_input.train_batches(stream, train_src, seed=run.seed, epoch=epoch, process=process)
        for i, b in zip(range(run.steps_per_epoch), batches):
            images, labels = put(b["image"], batch), put(b["label"], batch)
            step = epoch * run.steps_per_epoch + i
            step_fn = programs.get(act_quant_phase(run, step, 1))
            state, (loss, right) = step_fn(state, images, labels, jax.random.fold_in(k, i))
            losses.append(loss)
            correct.append(right)
            on_steps(1)
        return state, np.asarray(jnp.stack(losses)), np.asarray(jnp.stack(correct))

    def evaluate(state):
        loss_sum, correct = jnp.zeros(()), jnp.zeros(())
        for b in imagenet_input.eval_batches(stream, eval_src, process):
            loss, right = eval_fn(state, *(put(b[k], eval_sharding) for k in ("image", "label", "mask")))
            loss_sum, correct = loss_sum + loss, correct + right
        return loss_sum, correct

    sample = next(imagenet_input.eval_batches(dataclasses.replace(stream, workers=0), eval_src))["image"]
    return Feed(sample[: run.batch_size], one_epoch, evaluate, programs)
