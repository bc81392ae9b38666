"""A run's workdir and checkpoints: the config check on resume, Orbax save and restore, and
starting from another run (fine-tuning, a distillation teacher).

A workdir holds config.json (the resolved config and per-layer specs), metrics.jsonl,
tb/ (TensorBoard), ckpt/ (Orbax, the two newest epochs) and, once finished, result.json.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from qresnet import resnet, results
from qresnet.run_spec import RunSpec, TrainError, finished_run_spec
from qresnet.steps import TrainState, create_train_state


def check_workdir(workdir: Path, record: dict[str, Any], run_id: str) -> None:
    """Refuses a workdir whose records are of another run than `run_id`, or that holds a run's
    state (result.json, checkpoints, metrics) without the config.json that says which run it is.

    Raises:
      TrainError: naming the record that differs and the fix.
    """
    fix = f"use another --workdir, or move {workdir} away to start fresh"
    path = workdir / "config.json"
    if path.exists():
        old = results.read_json(path)
        if old.get("config") != record["config"] or results.recorded_identity(workdir) != run_id:
            diff = results.config_diff(old.get("config", {}), record["config"])
            raise TrainError(
                f"workdir {workdir} holds a run of a different config (differs at: {', '.join(diff[:8]) or 'specs'}); "
                + fix
            )
    result = workdir / "result.json"
    if result.exists():
        other = results.read_json(result).get("run_id")
        if other != run_id and not (other is None and path.exists()):  # older results carry no run_id
            what = f"run {other}" if other else "a run of unrecorded identity"
            raise TrainError(f"{result} is the result of {what}, not of this config (run {run_id}); {fix}")
    state = [p.name for p in (workdir / "ckpt", workdir / "metrics.jsonl") if p.exists() and any(_entries(p))]
    if state and not path.exists():
        raise TrainError(
            f"workdir {workdir} holds {' and '.join(state)} but no config.json, so nothing says which config "
            f"trained them; {fix}"
        )


def _entries(path: Path):
    """The folder's entries, or a file's lines: whether there is anything in it."""
    if path.is_dir():
        return path.iterdir()
    return (line for line in path.read_text().splitlines() if line.strip())


def manager(workdir: Path):
    """The Orbax CheckpointManager of a workdir (ckpt/, the two newest kept)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(workdir / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def epochs_saved(workdir: str | Path) -> int:
    """The epochs a workdir's newest checkpoint holds (its ckpt/ folder's step names), 0 without one."""
    steps = [int(p.name) for p in (Path(workdir) / "ckpt").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def save(mgr, state: TrainState, epoch: int) -> None:
    """Saves `state` as the checkpoint of `epoch` (asynchronously; `mgr.wait_until_finished`)."""
    import orbax.checkpoint as ocp

    mgr.save(epoch, args=ocp.args.StandardSave(_to_tree(state)))


def restore(mgr, state: TrainState) -> tuple[TrainState, int]:
    """The newest readable checkpoint and its epoch, or (`state`, 0); a corrupt one is reported
    and skipped."""
    import orbax.checkpoint as ocp

    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            tree = mgr.restore(step, args=ocp.args.StandardRestore(_to_tree(state)))
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to an older one
            print(
                f"checkpoint {step} is unreadable ({type(e).__name__}: {str(e)[:200]}); trying an older one",
                file=sys.stderr,
            )
            continue
        return TrainState(**tree), int(step)
    return state, 0


def _to_tree(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "quant_stats": state.quant_stats,
        "opt_state": state.opt_state,
    }


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a workdir's run trained with (its `config.json`)."""
    return ml_collections.ConfigDict(results.read_json(Path(workdir) / "config.json")["config"])


def restore_final(run: RunSpec, workdir: str | Path) -> TrainState:
    """The newest readable checkpoint of the run `run` in `workdir` (for export, fine-tuning)."""
    sample = jnp.zeros((run.batch_size, *run.info.image_shape), jnp.float32)
    abstract = jax.eval_shape(functools.partial(create_train_state, run), jax.random.key(0), sample)
    # Onto this process's first device, whatever devices (and processes) the run trained on.
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
    import orbax.checkpoint as ocp

    state, epoch = restore(ocp.CheckpointManager(Path(workdir).resolve() / "ckpt"), abstract)
    if epoch == 0:
        raise TrainError(f"{workdir} has no readable checkpoint")
    return state


def warm_start(state: TrainState, source: str | Path, run: RunSpec) -> TrainState:
    """`state` with the weights and BN statistics of another run's newest checkpoint (fine-tuning).

    Every `params` and `batch_stats` leaf that the source run has is copied (cast to this run's
    dtype), except learned (LSQ) bound offsets: those, like leaves the source lacks, keep their
    initial values. The step, the optimizer and the quantizers' state (`quant_stats`) start fresh:
    bounds are calibrated again on the new weights before activation quantization starts, and a
    learned bound learns from there (an offset belongs to its own run's start and bit width: a
    3-bit run's offsets would be wrong for a 2-bit run started from it). A BN-folded
    run (model.fold_bn) started from a run with BN gets its weights with BN folded in
    (`resnet.fold_batch_norm`): the same function in inference mode.

    Args:
      state: a freshly initialised state of this run.
      source: the source run's workdir (config.json and a checkpoint), same model and width.
      run: this run's RunSpec.

    Returns:
      The new state.
    """
    src_run = source_run(source, run)
    src_state = restore_final(src_run, source)
    src_params, src_stats = src_state.params, src_state.batch_stats
    if run.fold_bn and not src_run.fold_bn:
        src_params, src_stats = resnet.fold_batch_norm(src_params, src_stats), {}
    elif src_run.fold_bn and not run.fold_bn:
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
        if theirs is None or path.endswith("_bound_offset"):
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


def source_run(source: str | Path, run: RunSpec, *, teacher: bool = False) -> RunSpec:
    """The RunSpec of the run at `source` (config.init_from), checked to be a run of `run`'s model,
    width and dataset and, for a distillation `teacher`, float in every layer."""
    source = Path(source)
    if not (source / "config.json").is_file():
        raise TrainError(
            f"config.init_from={str(source)!r} is not a run's workdir (no config.json there); "
            "train that run first, or give the path of one"
        )
    src = finished_run_spec(run_config(source))
    mine = {"model.name": run.model_name, "model.width": run.width, "dataset.name": run.info.name}
    theirs = {"model.name": src.model_name, "model.width": src.width, "dataset.name": src.info.name}
    if mine != theirs:
        key = next(k for k in mine if mine[k] != theirs[k])
        raise TrainError(
            f"config.init_from={str(source)!r} is a run of {key}={theirs[key]!r}, this run has {mine[key]!r}; "
            "start from a run of the same model, width and dataset"
        )
    quantized = sorted(name for name, spec in src.specs.items() if not spec.is_float) if teacher else []
    if quantized:
        more = " ..." if len(quantized) > 3 else ""
        raise TrainError(
            f"config.init_from={str(source)!r} quantizes {', '.join(quantized[:3])}{more}; "
            "distillation needs a float teacher: start from a bf16 run"
        )
    return src


def teacher_source(source: str | Path, run: RunSpec) -> Path:
    """The distillation teacher of a run started from `source` (config.init_from): `source` itself where
    it is a float run, else the float run at the start of its chain of init_from sources. A quantized run
    fine-tuned from a float one (itself distilled or not) hands that float run on, so a progressive
    fine-tune (float -> 4 -> 3 -> 2 bits, each from the last) learns from the float run throughout.

    Raises:
      TrainError: a source that is not a run of this model, width and dataset, or a chain that ends in
        a quantized run trained from scratch (nothing float to learn from).
    """
    path = Path(source)
    for _ in range(32):  # a chain of fine-tunes; more means a loop of records
        src = source_run(path, run)
        if all(spec.is_float for spec in src.specs.values()):
            return path
        if not src.init_from:
            raise TrainError(
                f"config.init_from={str(source)!r}: distillation needs a float teacher, and {str(path)!r} is a "
                "quantized run trained from scratch; start from a bf16 run, or from a run fine-tuned from one"
            )
        path = Path(src.init_from)
    raise TrainError(f"config.init_from={str(source)!r}: its chain of init_from sources does not end")


def load_teacher(source: str | Path, run: RunSpec) -> dict[str, Any]:
    """The distillation teacher's variables: the final weights and BN statistics of a float run.

    Args:
      source: the student's config.init_from (`teacher_source` finds the float run from it): same model,
        width and dataset.
      run: the student's RunSpec.

    Returns:
      {"params", "batch_stats"} for `steps.teacher_model(run)`.
    """
    # Same model, width and dataset (checked), so the same parameter shapes: channel padding
    # (model.channel_multiple) happens inside the layers, not in the parameters.
    teacher = teacher_source(source, run)
    src_state = restore_final(source_run(teacher, run, teacher=True), teacher)
    return {"params": src_state.params, "batch_stats": src_state.batch_stats}
