"""Per-layer sensitivity to quantization (`qresnet sensitivity`), the damage `qresnet search` minimises.

Weights (HAWQ-V2's measure): Omega_l(b) = tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2, with H_l the Hessian
of the training loss in layer l's kernel (n_l weights) and Q_b the layer's weight quantizer at b
bits. tr(H_l) is estimated by Hutchinson's method: for Rademacher vectors v over all kernels,
E[v_l . (H v)_l] = tr(H_ll); H v is a forward-mode derivative of the gradient (`jax.jvp` of
`jax.grad`), one per probe and batch.

A negative trace estimate counts as 0 in Omega (the raw estimate is recorded as "trace").

Activations: the measured increase of the loss when layer l's input alone is fake-quantized at b
bits (one bound per tensor; signed where the model reads a signed input).

Both use the quantizer the searched runs will train with (`quantizer`): "lsq" (learned step sizes,
`w_bound`/`a_bound` "lsq": bounds at LSQ's start, step 2 mean|x| / sqrt(qmax)), "lsq_full" (learned
step sizes as the best uniform settings of docs/results.md: kernels on the full grid, `w_grid="full"`;
bounds at the paper's max where their side has 3 or more bits, at LSQ's start at 2) or "max_abs" (the
paper's max|W| per channel and the batch's max|x|).

With `measure_bits`, each layer's weights alone are also quantized and the test top-1 measured: the
drop against the float model is what Omega predicts, and the Spearman rank correlation of the two
over the layers says how well it does.

The loss is the run's training loss (cross-entropy, BN in inference mode, activations as the run
evaluates them) on training batches without augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qresnet import resnet, search
from qresnet.quant import ops


def hutchinson_traces(loss_fn: Callable, params, batches: Sequence, key: jax.Array, probes: int) -> dict:
    """{kernel path: tr(H) estimate} of `loss_fn(params, batch)`'s Hessian blocks, one per array
    of `params`, averaged over `probes` Rademacher vectors and `batches`."""
    grad = jax.grad(loss_fn)

    @jax.jit
    def vhv(params, batch, key):
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        v = tree.unflatten([jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
        _, hv = jax.jvp(lambda p: grad(p, batch), (params,), (v,))
        return jax.tree.map(lambda a, b: jnp.sum(a * b), v, hv)

    total, n = None, 0
    for batch in batches:
        for _ in range(probes):
            key, sub = jax.random.split(key)
            est = vhv(params, batch, sub)
            total = est if total is None else jax.tree.map(jnp.add, total, est)
            n += 1
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(total))
    return {path: float(value) / n for path, value in flat.items()}


QUANTIZERS = ("lsq", "lsq_full", "max_abs")


def quantize_weight(kernel: jax.Array, bits: int, quantizer: str = "max_abs") -> jax.Array:
    """A kernel fake-quantized per output channel as a run starts quantizing it: max|W| ("max_abs") or
    LSQ's start (step 2 mean|W| / sqrt(qmax), "lsq"); "lsq_full" on the full grid (`ops.int_range`) from
    max|W| at 3 or more bits, from LSQ's start at fewer."""
    w = jnp.asarray(kernel, jnp.float32)
    if quantizer == "max_abs":
        return ops.fake_quant_weight(w, bits, "per_channel")
    axes = ops.reduction_axes(w.ndim, "per_channel")
    bound = ops.weight_bound(w) if search.starts_at_max(quantizer, bits) else ops.lsq_init_bound(w, bits, True, axes)
    q, s = ops.int_codes(w, bits, bound, True, full=quantizer == "lsq_full" and bits >= 2)
    return q / s


def _input_bound(x: jax.Array, bits: int, signed: bool, quantizer: str) -> jax.Array:
    if search.starts_at_max(quantizer, bits):
        return jnp.max(jnp.abs(x.astype(jnp.float32)))
    return ops.lsq_init_bound(x, bits, signed, tuple(range(x.ndim)))


def weight_damage(kernel: np.ndarray, trace: float, bits: int, quantizer: str = "max_abs") -> float:
    """tr(H)/n * ||Q_b(W) - W||^2 (module doc). A negative trace estimate (a Hessian that is not
    positive semi-definite where the run stopped, or too few probes) is taken as 0 by the caller."""
    w = jnp.asarray(kernel, jnp.float32)
    err = quantize_weight(w, bits, quantizer) - w
    return float(trace / w.size * jnp.sum(err * err))


def _quantize_one_input(
    index: Mapping[tuple, tuple[int, str]], target: jax.Array, bits: int, signed: set[str], quantizer: str
):
    """A Flax interceptor that fake-quantizes at `bits` the input of the layer whose position in
    `index` ({module path: (position, layer name)}) equals `target` (a traced int: one compiled
    program serves every layer)."""

    def interceptor(next_fun, args, kwargs, context):
        i, name = index.get(tuple(context.module.scope.path), (None, None))
        if context.method_name == "__call__" and i is not None:
            x = args[0]
            bound = _input_bound(x, bits, name in signed, quantizer)
            q = ops.fake_quant(x, bits, bound, name in signed).astype(x.dtype)
            args = (jnp.where(target == i, q, x), *args[1:])
        return next_fun(*args, **kwargs)

    return interceptor


def sensitivities(
    model,
    variables: Mapping[str, Any],
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    normalize: Callable,
    bits: Sequence[int],
    *,
    probes: int = 4,
    seed: int = 0,
    quantizer: str = "lsq",
) -> dict[str, Any]:
    """Per-layer weight and activation sensitivities of a trained model (module doc).

    Args:
      model: the run's Flax model.
      variables: its trained variables.
      batches: [(uint8 images, labels)] training batches.
      normalize: images -> model input (`data.normalize` with the dataset's statistics).
      bits: candidate bit widths.
      probes: Rademacher probes per batch.
      seed: the probes' seed.
      quantizer: "lsq", "lsq_full" or "max_abs", the quantizer the damages are computed for (module doc).

    Returns:
      {"loss": the unquantized loss, "layers": {layer: {"weights", "trace", "w": {bits: Omega},
      "a": {bits: loss increase}}}}.
    """
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(p, batch, interceptor=None):
        images, labels = batch
        apply = lambda: model.apply({"params": p, **rest}, normalize(images), train=False)  # noqa: E731
        if interceptor is None:
            logits = apply()
        else:
            with flax.linen.intercept_methods(interceptor):
                logits = apply()
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))

    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
    traces = hutchinson_traces(loss, params, batches, jax.random.key(seed), probes)
    base = float(np.mean([loss(params, b) for b in batches]))
    names = resnet.kernel_paths(params)
    signed = set(resnet.signed_layers(tuple(names)))
    index = {tuple(path): (i, name) for i, (name, path) in enumerate(names.items())}
    a_damage = {name: {} for name in names}
    for b in bits:
        hooked = jax.jit(lambda p, batch, t, b=b: loss(p, batch, _quantize_one_input(index, t, b, signed, quantizer)))
        for i, name in index.values():
            a_damage[name][b] = float(np.mean([hooked(params, batch, i) for batch in batches])) - base
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    layers = {}
    for name, path in names.items():
        kernel, trace = np.asarray(flat[(*path, "kernel")]), traces[(*path, "kernel")]
        layers[name] = {
            "weights": int(kernel.size),
            "trace": trace,
            "w": {b: weight_damage(kernel, max(trace, 0.0), b, quantizer) for b in bits},
            "a": a_damage[name],
        }
    return {"loss": base, "layers": layers}


def measured_drops(
    model, variables, batches, normalize: Callable, bits: Sequence[int], quantizer: str = "max_abs"
) -> tuple[float, dict[str, dict[int, float]]]:
    """(float top-1, {layer: {bits: top-1 drop}}) over `batches` (test images), each layer's weights
    alone quantized (`quantize_weight`) and everything else float. One compiled program: the
    kernels are arguments."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def correct(p, images, labels):
        logits = model.apply({"params": p, **rest}, normalize(images), train=False)
        return jnp.sum(jnp.argmax(logits, -1) == labels)

    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]  # on the device once
    n = sum(len(y) for _, y in batches)

    def top1(p):  # one transfer a layer, not one a batch
        return int(sum(correct(p, x, y) for x, y in batches)) / n

    base = top1(params)
    names = resnet.kernel_paths(params)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    drops = {}
    for name, path in names.items():
        drops[name] = {}
        for b in bits:
            kernel = flat[(*path, "kernel")]
            changed = dict(flat)
            changed[(*path, "kernel")] = quantize_weight(kernel, b, quantizer).astype(kernel.dtype)
            drops[name][b] = base - top1(flax.traverse_util.unflatten_dict(changed))
    return base, drops


def spearman(sens_layers: Mapping[str, Any], drops: Mapping[str, Mapping[int, float]], bits: int) -> float:
    """Spearman's rank correlation over the layers of the predicted Omega at `bits` and the measured drop."""
    from scipy import stats

    names = sorted(drops)
    rho = stats.spearmanr([sens_layers[n]["w"][bits] for n in names], [drops[n][bits] for n in names]).statistic
    return float(rho)


def run_sensitivity(
    workdir,
    bits: Sequence[int],
    *,
    batches: int = 4,
    batch_size: int = 256,
    probes: int = 4,
    seed: int = 0,
    quantizer: str = "lsq",
    measure_bits: Sequence[int] = (),
) -> dict[str, Any]:
    """`sensitivities` of a finished run's final checkpoint on `batches` training batches of the run's
    dataset (the first examples of a fixed shuffle); the JSON object `qresnet sensitivity` writes.
    With `measure_bits`, also each layer's measured test top-1 drop (`measured_drops`) and its
    Spearman correlation with Omega at each of those widths."""
    import time

    from qresnet import checkpoints, config_lib, data, feeds, results, run_spec

    bits = search.check_bits(bits)
    measure_bits = search.check_bits(measure_bits) if measure_bits else ()
    if quantizer not in QUANTIZERS:
        raise search.SearchError(f"--quantizer {quantizer!r}: choose one of {', '.join(QUANTIZERS)}")
    if set(measure_bits) - set(bits):
        raise search.SearchError(f"--measure-bits {list(measure_bits)} must be among --bits {list(bits)}")
    if min(batches, batch_size, probes) < 1:
        raise search.SearchError(
            f"--batches {batches}, --batch-size {batch_size}, --probes {probes}: each must be >= 1"
        )
    config = checkpoints.run_config(workdir)
    run = run_spec.finished_run_spec(config)
    if run.info.streaming:
        raise search.SearchError(
            f"{workdir} trained on streamed {run.info.name}: sensitivity reads in-memory datasets only for now"
        )
    state = checkpoints.restore_final(run, workdir)
    arrays = feeds.load_arrays(run_spec.data_spec(config))
    order = np.random.default_rng(seed).permutation(len(arrays.train_labels))[: batches * batch_size]
    chosen = [
        (arrays.train_images[idx], arrays.train_labels[idx].astype(np.int32)) for idx in np.array_split(order, batches)
    ]
    model = resnet.create_model(
        config.model.name, num_classes=run.info.num_classes, width=run.width, specs=run.specs, dtype="float32"
    )
    t0 = time.perf_counter()
    normalize = lambda x: data.normalize(x, run.info)  # noqa: E731
    out = sensitivities(
        model, state.variables(), chosen, normalize, bits, probes=probes, seed=seed, quantizer=quantizer
    )
    seconds = round(time.perf_counter() - t0, 2)
    if measure_bits:
        step = int(config.eval_batch_size)
        test = [
            (arrays.test_images[i : i + step], arrays.test_labels[i : i + step].astype(np.int32))
            for i in range(0, len(arrays.test_labels), step)
        ]
        top1, drops = measured_drops(model, state.variables(), test, normalize, measure_bits, quantizer)
        out["measured"] = {"top1": top1, "drop": drops}
        out["spearman"] = {b: spearman(out["layers"], drops, b) for b in measure_bits}
    return {
        "workdir": str(workdir),
        "run_id": results.recorded_identity(workdir),
        "model": run.model_name,
        "width": run.width,
        "setting": run.setting,
        "bits": list(bits),
        "batches": batches,
        "batch_size": batch_size,
        "probes": probes,
        "seed": seed,
        "quantizer": quantizer,
        "seconds": seconds,
        "config": config_lib.to_json(config),
        **out,
        **results.provenance(),
    }
