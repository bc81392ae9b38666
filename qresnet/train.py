"""Training and evaluation of one run: `train_and_evaluate(config, workdir)`, the loop.

The config is read once into a `RunSpec` (`run_spec`); the data and compiled
programs come from a feed (`feeds`), the step functions from `steps`, the
workdir's checkpoints from `checkpoints`. The loop trains an epoch, evaluates,
logs a row to metrics.jsonl and TensorBoard (tensorboardX, in tb/), saves a
checkpoint every `checkpoint_every_epochs` and at the end, then writes
result.json. Re-running the same command resumes from the last checkpoint.
SIGTERM stops a run at the end of the epoch in flight, after saving a
checkpoint (`Interrupted`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from qresnet import checkpoints, config_lib, data, distributed, feeds, imagenet_input, locks, results, run_spec, steps
from qresnet.quant import specs as specs_lib
from qresnet.run_spec import RunSpec, TrainError

__all__ = ["Interrupted", "TrainError", "stop_requests", "train_and_evaluate"]

LOCK_FILE = ".lock"  # held by the process training in a workdir (`locks.exclusive`)


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


def _prepare_feed(config: ml_collections.ConfigDict, specs, mesh, key) -> tuple[RunSpec, feeds.Feed, int]:
    """The run's RunSpec, its feed and the number of test examples."""
    info = data.dataset_info(config.dataset.name)
    if not info.streaming:
        arrays = feeds.load_arrays(run_spec.data_spec(config))
        run = run_spec.make_run_spec(config, len(arrays.train_labels), specs)
        return run, feeds.in_memory_feed(run, mesh, key, arrays), len(arrays.test_labels)
    if config.dataset.train_subset or config.dataset.test_subset:
        raise TrainError(
            f"dataset.train_subset/test_subset apply to in-memory datasets, not to streaming {info.name}; "
            "prepare a smaller TFDS dataset and name it with --config.dataset.tfds_name"
        )
    stream = run_spec.stream_spec(config)
    sources = {s: imagenet_input.open_source(stream, s) for s in (stream.train_split, stream.eval_split)}
    n_train = len(sources[stream.train_split])
    # The input pipeline crops and flips on the host.
    run = dataclasses.replace(run_spec.make_run_spec(config, n_train, specs), crop_pad=0, flip=False)
    return run, feeds.streaming_feed(run, mesh, key, stream, sources), len(sources[stream.eval_split])


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, quiet: bool = False
) -> dict[str, Any]:
    """Trains a config to the end (resuming from workdir) and writes result.json.

    Args:
      config: a ConfigDict from a configs/ file (with overrides applied).
      workdir: the run's folder; created if missing.
      quiet: no progress bars or lines.

    Returns:
      The result.json object.
    """
    t_enter = time.perf_counter()
    workdir = Path(workdir).resolve()
    if workdir.exists() and not workdir.is_dir():
        raise TrainError(f"--workdir {workdir} is a file; give a folder (new, or a run's to resume it)")
    specs = run_spec.resolve_specs(config)
    cost_obj = run_spec.config_cost(config, specs)
    record = {"config": config_lib.to_json(config), "specs": specs_lib.specs_to_json(specs)}
    run_id = results.run_identity(record)
    checkpoints.check_workdir(workdir, record, run_id)
    done = results.read_result(workdir)
    if done is not None:
        return done

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    key = jax.random.key(config.seed)
    run, feed, n_test = _prepare_feed(config, specs, mesh, key)
    if run.init_from and (run.distill_weight > 0 or not (workdir / "ckpt").exists()):
        # A bad source fails here, before anything is written (the checkpoint loads later).
        checkpoints.source_run(run.init_from, run)
        if run.distill_weight > 0:
            checkpoints.teacher_source(run.init_from, run)
    workdir.mkdir(parents=True, exist_ok=True)
    # In a multi-process run (qresnet.distributed) process 0 holds the lock and writes the records.
    lock = (
        locks.exclusive(workdir / LOCK_FILE, f"workdir {workdir}")
        if distributed.primary()
        else contextlib.nullcontext()
    )
    with lock:
        # Again under the lock: another process may have written here since the first look.
        checkpoints.check_workdir(workdir, record, run_id)
        done = results.read_result(workdir)
        if done is not None:
            return done
        if distributed.primary():
            results.atomic_write_json(
                workdir / "config.json",
                {
                    **record,
                    "run_id": run_id,
                    "act_start_step": run.act_start_step,
                    "steps_per_epoch": run.steps_per_epoch,
                },
            )
        return _train(
            run,
            feed,
            n_test,
            mesh,
            key,
            workdir,
            quiet=quiet,
            t_enter=t_enter,
            extra={"run_id": run_id, "cost": {k: cost_obj[k] for k in ("total", "ratio", "avg_bits")}},
        )


def _initial_state(run: RunSpec, feed: feeds.Feed, mesh, key, workdir: Path, manager):
    """(state, first epoch, metrics rows so far): the newest checkpoint whose every epoch has its
    metrics row, else a fresh start (fine-tuning and distillation sources loaded)."""
    replicated = NamedSharding(mesh, P())
    sample = data.normalize(jnp.asarray(feed.sample), run.info)
    fresh = jax.jit(functools.partial(steps.create_train_state, run), out_shardings=replicated)(
        jax.random.fold_in(key, 0), sample
    )
    state, start_epoch = checkpoints.restore(manager, fresh)
    history = [h for h in results.read_jsonl(workdir / "metrics.jsonl") if h["epoch"] <= start_epoch]
    missing = sorted(set(range(1, start_epoch + 1)) - {h["epoch"] for h in history})
    if missing or len(history) != start_epoch:
        # A result must come from every epoch's row: without them the checkpoint cannot be used.
        distributed.sync("qresnet_checked_metrics")  # every process has read them before they move
        if distributed.primary():
            aside = results.move_aside(workdir / "ckpt", "incomplete")
            print(
                f"qresnet: metrics.jsonl lacks epoch(s) {_ranges(missing) or 'rows'} that the checkpoint of epoch "
                f"{start_epoch} covers; training again from the start (the checkpoints are kept in {aside})",
                file=sys.stderr,
            )
        distributed.sync("qresnet_moved_checkpoints")  # and none opens ckpt/ before it has moved
        manager = checkpoints.manager(workdir)
        state, start_epoch, history = fresh, 0, []
    if start_epoch == 0 and run.init_from:
        state = jax.device_put(checkpoints.warm_start(state, run.init_from, run), replicated)
    if run.distill_weight > 0:  # before the first epoch: the programs compile for a state with it
        state = state.replace(teacher=jax.device_put(checkpoints.load_teacher(run.init_from, run), replicated))
    distributed.sync("qresnet_read_metrics")  # every process has read the rows before they are rewritten
    if distributed.primary():
        results.atomic_write_text(workdir / "metrics.jsonl", "".join(results.to_json_line(h) for h in history))
    return state, start_epoch, history, manager


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    out: list[list[int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def _train(run: RunSpec, feed: feeds.Feed, n_test: int, mesh, key, workdir: Path, *, quiet, t_enter, extra):
    """The loop, under the workdir's lock: trains from the last complete checkpoint to the end and
    writes result.json (`extra`'s fields included)."""
    manager = checkpoints.manager(workdir)
    state, start_epoch, history, manager = _initial_state(run, feed, mesh, key, workdir, manager)

    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    primary = distributed.primary()
    writer = SummaryWriter(str(workdir / "tb")) if primary else None
    quiet = quiet or not primary
    # Bars on a terminal; a line per epoch wherever the output goes (a sweep's log files).
    bars = not quiet and sys.stderr.isatty()
    epochs_bar = tqdm(total=run.num_epochs, initial=start_epoch, desc="epochs", unit="epoch", disable=not bars)
    images_per_epoch = run.steps_per_epoch * run.batch_size
    timed_images, timed_s, first_epoch_s = 0, 0.0, None
    t_run = time.perf_counter()
    setup_s = t_run - t_enter
    with stop_requests() as stop:
        for epoch in range(start_epoch, run.num_epochs):
            t0 = time.perf_counter()
            steps_bar = tqdm(
                total=run.steps_per_epoch, desc=f"epoch {epoch + 1}", unit="step", leave=False, disable=not bars
            )
            state, losses, correct = feeds.oom_advice(run, feed.train_epoch, state, epoch, steps_bar.update)
            steps_bar.close()
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
                "lr": float(steps.learning_rate(run, (epoch + 1) * run.steps_per_epoch - 1)),
                "train_loss": float(losses.mean()),
                "train_top1": float(np.sum(correct)) / images_per_epoch,
                "eval_loss": float(loss_sum) / n_test,
                "eval_top1": float(eval_correct) / n_test,
                "images_per_s": images_per_epoch / dt,
                "epoch_s": dt,
            }
            history.append(row)
            if primary:
                results.append_jsonl(workdir / "metrics.jsonl", row)
                for k, v in row.items():
                    if k not in ("epoch", "step"):
                        writer.add_scalar(k, v, row["step"])
                writer.flush()
            epochs_bar.update()
            if not quiet:
                epochs_bar.write(_progress_line(row, run), file=sys.stdout)
                sys.stdout.flush()
            saved = (epoch + 1) % run.checkpoint_every_epochs == 0 or epoch + 1 == run.num_epochs
            if saved:
                checkpoints.save(manager, state, epoch + 1)
            if stop and epoch + 1 < run.num_epochs:  # After the last epoch, finishing is quicker.
                _stop(manager, state, epoch + 1, run, workdir, stop[0], saved)
    epochs_bar.close()
    if primary:
        writer.close()
    manager.wait_until_finished()

    result = {
        "name": workdir.name,
        "model": run.model_name,
        "dataset": run.info.name,
        "setting": run.setting,
        "width": run.width,
        "epochs": run.num_epochs,
        **results.report(history, run.act_start_step, run.smoothing_window),
        "w_bits": {n: s.w_bits for n, s in run.specs.items()},
        "a_bits": {n: s.a_bits for n, s in run.specs.items()},
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
        "seed": run.seed,
        "init_from": run.init_from,  # the run it was fine-tuned from ("" = from scratch)
        "distill_weight": run.distill_weight,
        # The float run it learned from (init_from, or the float run at the start of init_from's chain).
        "distill_teacher": str(checkpoints.teacher_source(run.init_from, run)) if run.distill_weight > 0 else "",
        "device": results.device_description(),
        "processes": jax.process_count(),
        **results.xla_flags_field(),
        "conv_impl": run.backend.impl,  # what model.conv_impl resolved to ("auto": per device)
        "versions": results.versions(),
        "commit": results.git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        **extra,
    }
    if [h["epoch"] for h in history] != list(range(1, run.num_epochs + 1)):
        raise TrainError(f"{workdir / 'metrics.jsonl'} does not hold each epoch once; no result written")
    if primary:
        results.atomic_write_json(workdir / "result.json", result)
    return result


def _stop(manager, state, epoch: int, run: RunSpec, workdir: Path, signum: int, saved: bool) -> None:
    """Saves a checkpoint at `epoch` (unless just saved) and raises Interrupted."""
    if not saved:
        checkpoints.save(manager, state, epoch)
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


def _progress_line(row: dict[str, Any], run: RunSpec) -> str:
    return (
        f"epoch {row['epoch']}/{run.num_epochs} loss {row['train_loss']:.3f} "
        f"train {row['train_top1']:.4f} eval {row['eval_top1']:.4f} {row['images_per_s']:,.0f} img/s"
    )
