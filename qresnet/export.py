"""`qresnet export` / `qresnet eval`: a trained QAT run as integers, and inference with them.

File format (version 2), little-endian:
  b"QRESNETX" | uint32 version | uint32 n | n bytes of zlib-compressed JSON
  header | payload | SHA-256 of everything before it (32 bytes).
The header is {"format": "qresnet-export", "version": 2, model, width,
num_classes, input_shape, dataset, setting, specs, arrays: {name: {shape,
dtype, packed, offset}}}; the payload holds the arrays back to back, so the file
is the weights at their bit width plus scales and BN and a few kB. Quantized
kernels are int8 codes, packed two per byte at 4 bits and fewer; `w_scale`
holds the per-output-channel scales; `act_bound` the frozen activation bounds;
BN and float layers stay float32. The loader checks the magic, the version, the
checksum, and every array's range, shape and dtype.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from qresnet import data, fused, resnet, results
from qresnet.quant import int_layers, ops
from qresnet.quant import specs as specs_lib

FORMAT = "qresnet-export"
VERSION = 2
MAGIC = b"QRESNETX"


class ExportError(ValueError):
    """An export that cannot be written or read; the message names the fix."""


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Two signed 4-bit codes (-8..7) per byte, low nibble first."""
    flat = codes.astype(np.int8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = (flat.astype(np.uint8) & 0xF).reshape(-1, 2)
    return (nibbles[:, 0] | (nibbles[:, 1] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_int4`."""
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=1).ravel().astype(np.int8)
    nibbles = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)
    return nibbles[: int(np.prod(shape))].reshape(shape)


def integer_variables(variables: Mapping[str, Any], specs: Mapping[str, specs_lib.QuantSpec]) -> dict[str, Any]:
    """The IntConv/IntDense variables of a trained fake-quant model.

    Args:
      variables: {"params", "batch_stats", "quant_stats"} of the trained model.
      specs: the run's per-layer specs.

    Returns:
      Variables for `resnet.create_model(..., int_model=True)`: integer kernels,
      scales and frozen activation bounds; BN and float layers unchanged.

    Raises:
      ExportError: a layer with integer weights and inputs has per-input-channel
        activation scales, which no integer conv can apply exactly.
    """
    params = flax.core.unfreeze(jax.device_get(variables["params"]))
    stats = flax.core.unfreeze(jax.device_get(variables.get("quant_stats", {})))
    out_params, out_stats = params, {}
    for name, path in resnet.kernel_paths(params).items():
        spec = specs[name]
        layer = _get(out_params, path)
        layer_stats = _get(stats, path, {})
        if "out_bound" in layer_stats:  # a BN-folded projection's output quantizer
            _set(out_stats, path, {"out_bound": np.asarray(layer_stats["out_bound"], np.float32)})
        if spec.a_bits is not None and (spec.a_bound == "fixed" or "act_bound" in layer_stats):
            if spec.a_bound == "fixed":
                bound = np.float32(spec.a_fixed_bound)
            else:
                bound = np.asarray(layer_stats["act_bound"], np.float32)
            if spec.a_bound == "lsq":  # the float32 value the layer computes
                bound = np.asarray(ops.learned_bound(bound, layer.pop("act_bound_offset")))
            if spec.w_bits is not None and np.ndim(bound):
                raise ExportError(
                    f"layer {name!r} has per-input-channel activation scales, which an integer conv cannot apply "
                    "exactly; train for deployment with a_granularity='per_tensor' (e.g. setting "
                    "w8a8_deploy or w4a4_ends8_deploy in configs/settings.py)"
                )
            _set(out_stats, path, {"act_bound": np.asarray(bound, np.float32)})
        elif spec.a_bits is not None and "out_bound" not in layer_stats:
            raise ExportError(f"layer {name!r} quantizes its input but the run has no bound for it (quant_stats)")
        if spec.w_bits is not None:
            lsq = spec.w_bound == "lsq"  # a learned bound, else max|W|
            w_bound = ops.learned_bound(layer_stats["kernel_bound"], layer.pop("kernel_bound_offset")) if lsq else None
            q, s = int_layers.kernel_codes(jnp.asarray(layer.pop("kernel")), spec, w_bound)
            layer["kernel_int"], layer["w_scale"] = np.asarray(q), np.asarray(s)
    batch_stats = jax.device_get(variables.get("batch_stats", {}))
    return {"params": out_params, "batch_stats": batch_stats, "quant_stats": out_stats}


def _get(tree, path, default=None):
    """tree[p0][p1]...; `default` (if given) where the path is not there."""
    for p in path:
        if default is not None and (not isinstance(tree, Mapping) or p not in tree):
            return default
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _layout(variables: Mapping[str, Any], specs: Mapping[str, specs_lib.QuantSpec]):
    """(header array table, payload bytes): every array as stored, in one contiguous blob."""
    flat = flax.traverse_util.flatten_dict(variables, sep="/")
    w_bits = {re.sub(r"stage(\d+)/block(\d+)", r"stage\1_block\2", n): sp.w_bits for n, sp in specs.items()}
    table, chunks, offset = {}, [], 0
    for key, value in flat.items():
        value = np.asarray(value)
        layer = key.split("/", 1)[1].rsplit("/", 1)[0]
        packed = key.endswith("/kernel_int") and (w_bits.get(layer) or 8) <= 4
        stored = np.ascontiguousarray(pack_int4(value) if packed else value)
        blob = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
        table[key] = {"shape": list(value.shape), "dtype": str(value.dtype), "packed": packed, "offset": offset}
        chunks.append(blob)
        offset += len(blob)
    return table, b"".join(chunks)


def write(
    path: str | Path, header: Mapping[str, Any], variables: Mapping[str, Any], specs: Mapping[str, specs_lib.QuantSpec]
) -> Path:
    """Writes an export file atomically; returns its path.

    Args:
      path: the file to write.
      header: model, width, num_classes, input_shape, dataset, setting.
      variables: integer variables (`integer_variables`).
      specs: the per-layer QuantSpecs.

    Returns:
      `path`.
    """
    table, payload = _layout(variables, specs)
    header = {"format": FORMAT, "version": VERSION, **header, "specs": specs_lib.specs_to_json(specs), "arrays": table}
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    body = MAGIC + struct.pack("<II", VERSION, len(head)) + head + payload
    try:
        results.atomic_write_bytes(path, body + hashlib.sha256(body).digest(), overwrite=False)
    except FileExistsError:
        raise ExportError(f"{path} exists; qresnet never overwrites a file: choose another path or remove it") from None
    return Path(path)


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads and checks an export file: format, version, checksum, every array's range, shape and dtype.

    Args:
      path: a file written by `write`.

    Returns:
      (header, variables), kernels unpacked to int8.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"export file {str(path)!r} does not exist; make one with qresnet export")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04":
        raise ExportError(
            f"{path} is a version-1 export (npz); this qresnet reads version {VERSION}: export the run again"
        )
    fixed = len(MAGIC) + 8
    if len(raw) < fixed + 32 or raw[: len(MAGIC)] != MAGIC:
        raise ExportError(f"{path} is truncated or not a qresnet export; export it again")
    version, head_len = struct.unpack("<II", raw[len(MAGIC) : fixed])
    if version != VERSION:
        raise ExportError(
            f"{path} is export format version {version}; this qresnet reads version {VERSION}: "
            "export the run again with this version"
        )
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ExportError(f"{path} fails its checksum: the file is damaged or truncated; export it again")
    try:
        header = json.loads(zlib.decompress(body[fixed : fixed + head_len]))
    except (zlib.error, ValueError) as e:
        raise ExportError(f"{path} has no readable header ({e}); it is not a qresnet export") from e
    if header.get("format") != FORMAT:
        raise ExportError(f"{path} is not a qresnet export (format {header.get('format')!r})")
    payload = body[fixed + head_len :]
    flat = {}
    for key, meta in header["arrays"].items():
        shape = tuple(meta["shape"])
        dtype = np.dtype(np.uint8 if meta["packed"] else meta["dtype"]).newbyteorder("<")
        count = (math.prod(shape) + 1) // 2 if meta["packed"] else math.prod(shape)
        start, stop = meta["offset"], meta["offset"] + count * dtype.itemsize
        if stop > len(payload):
            raise ExportError(f"{path}: array {key!r} runs past the end of the file; export it again")
        stored = np.frombuffer(payload, dtype, count, start)
        value = unpack_int4(stored, shape) if meta["packed"] else stored.astype(meta["dtype"]).reshape(shape)
        flat[tuple(key.split("/"))] = value
    return header, flax.traverse_util.unflatten_dict(flat)


def size_check(path: str | Path, memory_bits: float) -> dict[str, Any]:
    """The export's size against the memory cost (weights x bits) plus every non-kernel array (scales, BN, bounds).

    Args:
      path: an export file.
      memory_bits: the model's memory cost in bits (`cost.model_cost(...)["total"]["memory"]`).

    Returns:
      {file_bytes, expected_bytes, ratio}: ratio = file_bytes / expected_bytes.
    """
    header, variables = read(path)
    flat = flax.traverse_util.flatten_dict(variables, sep="/")
    other = sum(np.asarray(v).nbytes for k, v in flat.items() if not k.endswith("/kernel_int"))
    expected = memory_bits / 8 + other
    size = Path(path).stat().st_size
    return {"file_bytes": size, "expected_bytes": int(round(expected)), "ratio": size / expected}


def int_model(
    header: Mapping[str, Any],
    variables: Mapping[str, Any] | None = None,
    *,
    pointwise_as_dot: bool = True,
    narrow_as_float: bool = True,
    dtype: str = "float32",
    rounding: str = "auto",
):
    """The integer inference model an export describes (`pointwise_as_dot`, `narrow_as_float`: see `IntConv`).

    `dtype` is that of everything between the integer products (rescaled outputs, BN, ReLU,
    residual adds, pooling): "bfloat16" halves their memory traffic; the codes and the integer
    products are the same, the values that get quantized are rounded to bf16 first.

    A BN-folded export (header "fold_bn") gives `fused.FusedResNet`, int8 codes from conv to
    conv; it holds the export's scales, so it needs `variables`, and takes `rounding` ("auto",
    "cudnn" or "explicit": `fused.FusedResNet`) and no other option.
    """
    if header.get("fold_bn"):
        if variables is None:
            raise ExportError("a BN-folded export's integer model is built from its variables: pass them")
        if dtype != "float32":
            raise ExportError(f"a BN-folded export runs on int8 codes between layers; dtype {dtype!r} does not apply")
        return fused.FusedResNet(header, variables, rounding=rounding)
    if rounding != "auto":
        raise ExportError(
            f"rounding {rounding!r} applies to BN-folded exports (model.fold_bn) only; this one rounds in its layers"
        )
    if dtype not in resnet.DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(resnet.DTYPES)}")
    specs = specs_lib.specs_from_json(header["specs"])
    return resnet.ResNet(
        arch=resnet.get_arch(header["model"]),
        num_classes=header["num_classes"],
        width=header["width"],
        specs=specs,
        dtype=resnet.DTYPES[dtype],
        conv_cls=functools.partial(
            int_layers.IntConv, pointwise_as_dot=pointwise_as_dot, narrow_as_float=narrow_as_float
        ),
        dense_cls=int_layers.IntDense,
    )


def exact_on_cudnn(header: Mapping[str, Any]) -> bool:
    """Whether a BN-folded export's fused model gives its fake-quant model's codes to the bit on cuDNN's
    fused convs too: every quantized layer has power-of-two scales (`QuantSpec.pow2_scale`)."""
    specs = specs_lib.specs_from_json(header["specs"])
    return bool(header.get("fold_bn")) and all(s.pow2_scale for s in specs.values() if not s.is_float)


def run_variables(workdir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, integer variables) of a finished `qresnet train` workdir's final checkpoint: what
    `export_run` writes, and what the ONNX export builds from."""
    from qresnet import checkpoints, run_spec

    workdir = Path(workdir)
    if results.read_result(workdir) is None:
        raise ExportError(f"{workdir} has no result.json: finish the run (re-run qresnet train) before exporting")
    config = checkpoints.run_config(workdir)
    run = run_spec.finished_run_spec(config)
    state, specs, info = checkpoints.restore_final(run, workdir), run.specs, run.info
    header = {"model": run.model_name, "width": run.width, "num_classes": info.num_classes}
    header |= {"input_shape": list(info.image_shape), "dataset": info.name, "setting": run.setting}
    header |= {"fold_bn": run.fold_bn, "run_id": results.recorded_identity(workdir)}
    header |= {"specs": specs_lib.specs_to_json(specs)}
    if info.streaming:
        header |= {
            "tfds_name": config.dataset.tfds_name,
            "image_size": config.dataset.image_size,
            "image_backend": config.dataset.get("image_backend", "pillow"),  # absent in older records
        }
    return header, integer_variables(state.variables(), specs)


def export_run(workdir: str | Path, out: str | Path) -> Path:
    """Exports the final checkpoint of a finished `qresnet train` workdir.

    Args:
      workdir: a run folder with config.json, ckpt/ and result.json.
      out: the export file to write.

    Returns:
      The path written.
    """
    out = Path(out)
    if out.exists():
        raise ExportError(f"--out {out} exists; qresnet never overwrites a file: choose another path or remove it")
    header, variables = run_variables(workdir)
    return write(out, header, variables, specs_lib.specs_from_json(header.pop("specs")))


def _apply_fn(model, info, **kw):
    def fn(v, x):
        return model.apply(v, data.normalize(x, info), train=False, **kw)

    if not isinstance(model, fused.FusedResNet):
        return jax.jit(fn)
    jitted = []

    def checked(v, x):  # the first batch checks that XLA fused the integer convs (fused.compile_forward)
        if not jitted:
            jitted.append(fused.compile_forward(model, v, x, fn)[0])
        return jitted[0](v, x)

    return checked


def evaluate(
    header: Mapping[str, Any],
    variables: Mapping[str, Any],
    data_dir: str = "",
    *,
    dtype: str = "float32",
    rounding: str = "auto",
) -> dict[str, Any]:
    """Top-1 of the integer model (`int_model(header, dtype=dtype, rounding=rounding)`) on the export's
    dataset's test split.

    Returns:
      {model, setting, dataset, dtype, n, top1_int, device, date, commit}.
    """
    model = int_model(header, variables, dtype=dtype, rounding=rounding)
    fn = _apply_fn(model, data.dataset_info(header["dataset"]))
    variables = jax.device_put(variables)  # once: numpy arguments would be copied to the GPU every batch
    correct = n = 0
    for images, labels in test_batches(header, data_dir):
        correct += int(np.sum(np.asarray(fn(variables, images)).argmax(1) == labels))
        n += len(labels)
    return {
        "model": header["model"],
        "setting": header["setting"],
        "dataset": header["dataset"],
        "dtype": dtype,
        "n": n,
        "top1_int": correct / max(n, 1),
        **_fused_fields(model),
        **results.provenance(),
    }


def _check_same_run(header: Mapping[str, Any], workdir: Path, run) -> None:
    """Raises ExportError unless the export was made from the run in `workdir` (its run identity;
    for exports that carry none, its model, width, setting and specs)."""
    mine = results.recorded_identity(workdir)
    if header.get("run_id"):
        same = header["run_id"] == mine
    else:
        theirs = (header["model"], float(header["width"]), header["setting"], header["specs"])
        same = theirs == (run.model_name, run.width, run.setting, specs_lib.specs_to_json(run.specs))
    if not same:
        raise ExportError(
            f"the export is of run {header.get('run_id') or header['model']}, not of {workdir} (run {mine}); "
            "compare an export with the run it was exported from"
        )


def _fused_fields(model) -> dict[str, Any]:
    """How a fused integer model rounded (`fused.compile_forward`); nothing for the others."""
    if not isinstance(model, fused.FusedResNet):
        return {}
    return {"int_rounding": model.rounding, **{f"int_{k}": v for k, v in model.check.items()}}


def test_batches(header: Mapping[str, Any], data_dir: str = ""):
    """`data.test_batches` of the dataset an export's header names, decoded as the run trained."""
    return data.test_batches(
        header["dataset"],
        data_dir=data_dir,
        tfds_name=header.get("tfds_name", ""),
        image_size=header.get("image_size", 0),
        image_backend=header.get("image_backend", "pillow"),  # exports before it was recorded used Pillow
    )


def fake_quant_batches(workdir: str | Path, header: Mapping[str, Any], data_dir: str = ""):
    """Yields (uint8 images, labels, float32 fake-quant logits) of a finished run's test split, in
    order: the reference an export is compared with. Raises ExportError unless the export's
    `header` was made from this run."""
    from qresnet import checkpoints, run_spec

    config = checkpoints.run_config(workdir)
    run = run_spec.finished_run_spec(config)
    _check_same_run(header, Path(workdir), run)
    state, info = checkpoints.restore_final(run, workdir), data.dataset_info(config.dataset.name)
    fake = resnet.create_model(
        config.model.name,
        num_classes=info.num_classes,
        width=float(config.model.width),
        specs=run.specs,
        dtype="float32",
        fold_bn=bool(config.model.get("fold_bn", False)),
    )
    fake_fn = _apply_fn(fake, info, act_quant=True)
    batches = data.test_batches(
        config.dataset.name,
        data_dir=data_dir or (config.dataset.tfds_dir if info.streaming else config.dataset.data_dir),
        tfds_name=config.dataset.tfds_name,
        image_size=config.dataset.image_size,
        image_backend=config.dataset.get("image_backend", "pillow"),
        limit=config.dataset.test_subset,
        synthetic=(config.dataset.synthetic_train, config.dataset.synthetic_test),
    )
    for images, labels in batches:
        # Full float32 convolutions: GPUs otherwise round float32 conv inputs to TF32 (10-bit
        # mantissa), which moves fake-quant values across rounding boundaries.
        with jax.default_matmul_precision("highest"):
            logits = np.asarray(fake_fn(state.variables(), images))
        yield images, labels, logits


def agreement(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{prediction_agreement, top1_fake, max/median_rel_logit_err (per image ||l - l_ref|| / ||l_ref||),
    rel_logit_err (the same over the whole set)} of `logits` against the fake-quant `reference`."""
    rel = np.linalg.norm(logits - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    return {
        "prediction_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
        "top1_fake": float(np.mean(reference.argmax(1) == labels)),
        "max_rel_logit_err": float(rel.max()),
        "median_rel_logit_err": float(np.median(rel)),
        "rel_logit_err": float(np.linalg.norm(logits - reference) / max(np.linalg.norm(reference), 1e-12)),
    }


def equivalence(
    workdir: str | Path, export_path: str | Path, data_dir: str = "", *, dtype: str = "float32", rounding: str = "auto"
) -> dict[str, Any]:
    """Integer model (`int_model(header, dtype=dtype, rounding=rounding)`) against the run's fake-quant
    model (always float32, the reference) on the test split.

    Returns:
      {model, setting, dataset, dtype, n, top1_int, the fields of `agreement`,
      file_bytes, expected_bytes, size_ratio (see `size_check`), device, date, commit}.
    """
    from qresnet import checkpoints, run_spec

    header, variables = read(export_path)
    int_net = int_model(header, variables, dtype=dtype, rounding=rounding)
    int_fn = _apply_fn(int_net, data.dataset_info(header["dataset"]))
    variables = jax.device_put(variables)  # once, not with every batch
    l_fake, l_int, ys = [], [], []
    for images, labels, logits in fake_quant_batches(workdir, header, data_dir):
        with jax.default_matmul_precision("highest"):
            l_int.append(np.asarray(int_fn(variables, images)))
        l_fake.append(logits)
        ys.append(labels)
    l_fake, l_int, labels = np.concatenate(l_fake), np.concatenate(l_int), np.concatenate(ys)
    config = checkpoints.run_config(workdir)
    size = size_check(export_path, run_spec.config_cost(config)["total"]["memory"])
    return {
        "model": header["model"],
        "setting": header["setting"],
        "dataset": header["dataset"],
        "dtype": dtype,
        "n": len(labels),
        "top1_int": float(np.mean(l_int.argmax(1) == labels)),
        **agreement(l_int, l_fake, labels),
        "file_bytes": size["file_bytes"],
        "expected_bytes": size["expected_bytes"],
        "size_ratio": size["ratio"],
        **_fused_fields(int_net),
        **results.provenance(),
    }
