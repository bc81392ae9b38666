"""How much of a run's test top-1 its BatchNorm running statistics cost: the final checkpoint's test
top-1 as trained, and again after the statistics are re-estimated with its final (quantized) weights
over training batches, augmented as in training. At low bits, weights that flip between two grid
points leave running averages of networks that no longer exist (Nagel et al. 2022, "Overcoming
Oscillations in Quantization-Aware Training"); the re-estimate is their average over `--batches`
batches, not an exponential one.

    python -m benchmarks.bn_reestimate --workdir RUN [--workdir RUN2 ...] [--batches 100] [--out F.jsonl]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import record
from qresnet import checkpoints, data, feeds, resnet, results, run_spec, steps


def top1_on_test(run, arrays: data.Arrays):
    """A function of a state giving its test top-1 as the trainer evaluates it: the batches and the
    compiled evaluation are made once, for every state it is called with."""
    batches = feeds.eval_batches(arrays.test_images, arrays.test_labels.astype(np.int32), run.eval_batch_size)
    evaluate = jax.jit(functools.partial(steps.evaluate_all, run))
    return lambda state: float(evaluate(state, *batches)[1]) / len(arrays.test_labels)


def reestimated_stats(run, state, images: np.ndarray, batches: int, seed: int = 0):
    """The mean over `batches` training batches (run.batch_size each, augmented as in training) of
    each BatchNorm's batch mean and variance under `state`'s weights, with inputs quantized: running
    statistics for the network as it is."""
    if not jax.tree.leaves(state.batch_stats):
        raise ValueError("the run has no BatchNorm statistics (model.fold_bn folds BN into the convs)")
    if batches < 1 or batches * run.batch_size > len(images):
        raise ValueError(
            f"--batches {batches}: need 1 to {len(images) // run.batch_size} batches of {run.batch_size} examples"
        )
    model = steps.create_model(run)
    zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)

    @jax.jit
    def batch_stats(batch, key):
        x = data.normalize(data.augment(key, batch, run.crop_pad, run.flip), run.info)
        variables = {**state.variables(), "batch_stats": zeros}
        _, new = model.apply(variables, x, train=True, act_quant=True, mutable=["batch_stats", "quant_stats"])
        # From zero running averages, one update leaves (1 - momentum) * the batch's statistics.
        return jax.tree.map(lambda v: v / (1 - resnet.BN_MOMENTUM), new["batch_stats"])

    order = np.random.default_rng(seed).permutation(len(images))[: batches * run.batch_size]
    keys = jax.random.split(jax.random.key(seed), batches)
    total = None
    for i, idx in enumerate(np.split(order, batches)):
        one = batch_stats(jnp.asarray(images[np.sort(idx)]), keys[i])
        total = one if total is None else jax.tree.map(jnp.add, total, one)
    return jax.tree.map(lambda t: t / batches, total)


def bn_reestimate(workdir, batches: int = 100, seed: int = 0) -> dict:
    """The row of one run: test top-1 with its running statistics and with re-estimated ones."""
    config = checkpoints.run_config(workdir)
    run = run_spec.finished_run_spec(config)
    state = checkpoints.restore_final(run, workdir)
    arrays = feeds.load_arrays(run_spec.data_spec(config))
    top1 = top1_on_test(run, arrays)
    before = top1(state)
    after = top1(state.replace(batch_stats=reestimated_stats(run, state, arrays.train_images, batches, seed)))
    return {
        "workdir": str(workdir),
        "setting": config.setting,
        "seed": int(config.seed),
        "batches": batches,
        "batch_size": run.batch_size,
        "top1": before,
        "top1_reestimated": after,
        "gain": after - before,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", action="append", required=True)
    p.add_argument("--batches", type=int, default=100, help="training batches to average (default 100)")
    p.add_argument("--out", help="append each row to this JSONL file")
    ns = p.parse_args(argv)
    rows = []
    for w in ns.workdir:
        record(rows, {"benchmark": "bn_reestimate", **bn_reestimate(w, ns.batches), **results.provenance()}, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
