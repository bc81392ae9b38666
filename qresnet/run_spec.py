"""A run's settings, read once from its ConfigDict: the only training module that reads one.

`make_run_spec` turns a config (with the size of its training set) into a frozen
`RunSpec`, `data_spec` and `stream_spec` into the dataset's settings; everything
below them (steps, feeds, checkpoints, the loop) takes these dataclasses.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from qresnet import cost, data, imagenet_input, resnet
from qresnet.quant import specs as specs_lib
from qresnet.quant.layers import CONV_IMPLS, ConvBackend


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a run needs, resolved once from the config (no ConfigDict below here)."""

    model_name: str
    width: float
    dtype: str
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
    backend: ConvBackend = ConvBackend()  # how convs run on the device ("auto" resolved per device)
    fold_bn: bool = False  # the BN-folded network for fused integer deployment (resnet.ResNet)
    replica_size: int = 0  # BN and bound statistics per replica of this many examples (0: whole batch)
    grad_accum_steps: int = 1  # micro-batches per update
    seed: int = 0
    setting: str = ""  # the label records and plots carry
    init_from: str = ""  # the run this one starts from ("" = from scratch)
    checkpoint_every_epochs: int = 1
    smoothing_window: int = 5  # eval points in the reported top-1's triangular smoothing
    eval_batch_size: int = 1000
    compile_float_first: bool = False

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which in-memory dataset to load, from where, and which subsets."""

    name: str
    data_dir: str = ""
    synthetic_size: tuple[int, int] = (0, 0)
    via_tfds: bool = False
    tfds_dir: str = ""
    train_subset: int = 0
    test_subset: int = 0


def resolve_specs(config: ml_collections.ConfigDict) -> Mapping[str, specs_lib.QuantSpec]:
    """The config's rules resolved against its model's layers (`resnet.resolve_specs`)."""
    info = data.dataset_info(config.dataset.name)
    return resnet.resolve_specs(
        config.quant.rules,
        config.model.name,
        width=float(config.model.width),
        num_classes=info.num_classes,
        input_shape=info.image_shape,
    )


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


def data_spec(config: ml_collections.ConfigDict) -> DataSpec:
    """The in-memory dataset's settings from a config."""
    d = config.dataset
    return DataSpec(
        name=d.name,
        data_dir=d.data_dir,
        synthetic_size=(d.synthetic_train, d.synthetic_test),
        via_tfds=bool(d.via_tfds),
        tfds_dir=d.tfds_dir,
        train_subset=d.train_subset,
        test_subset=d.test_subset,
    )


def make_run_spec(config: ml_collections.ConfigDict, num_train: int, specs=None) -> RunSpec:
    """The RunSpec of a config whose training set has `num_train` examples; TrainError on values
    that cannot train."""
    # Each field's own range is checked when the config is loaded (config_lib.RANGES); here, what
    # depends on the devices, the data or other fields.
    o = config.optim
    if o.batch_size % jax.device_count():
        raise TrainError(
            f"optim.batch_size={o.batch_size} must be a positive multiple of the {jax.device_count()} device(s)"
        )
    accum, replica = int(o.get("grad_accum_steps", 1)), int(config.model.get("replica_size", 0))
    micro = o.batch_size // accum
    if o.batch_size % accum or micro % jax.device_count() or (replica and micro % replica):
        raise TrainError(
            f"optim.batch_size={o.batch_size} does not split into {accum} micro-batch(es) (optim.grad_accum_steps) "
            f"of a multiple of the {jax.device_count()} device(s)"
            + (f" and of model.replica_size={replica}" if replica else "")
            + "; choose sizes that divide"
        )
    steps_per_epoch = num_train // o.batch_size
    if steps_per_epoch < 1:
        raise TrainError(
            f"optim.batch_size={o.batch_size} exceeds the {num_train} training examples; use a smaller batch"
        )
    total = o.num_epochs * steps_per_epoch
    distill = config.get("distill") or {"weight": 0.0, "temperature": 1.0}  # absent in older records
    if distill["weight"] > 0 and not config.get("init_from"):
        raise TrainError(
            f"distill.weight={distill['weight']} needs a teacher: name a finished float run with "
            "--config.init_from=RUN (the student starts from it and learns from its outputs)"
        )
    start = config.quant.act_start_step
    if start < 0 and config.quant.get("act_start_epoch", -1.0) >= 0:
        start = int(round(config.quant.act_start_epoch * steps_per_epoch))
    elif start < 0:
        start = int(round(config.quant.act_start_frac * total))
    specs = resolve_specs(config) if specs is None else specs
    if start >= total and any(s.a_bits is not None for s in specs.values()):
        raise TrainError(
            f"activation quantization would start at step {start}, at or after the run's last step ({total}: "
            f"{o.num_epochs} epochs of {steps_per_epoch}); the run would be recorded as quantized and never "
            "quantize its activations: lower --config.quant.act_start_step or act_start_frac"
        )
    model = config.model
    return RunSpec(
        model_name=model.name,
        width=float(model.width),
        dtype=model.dtype,
        info=data.dataset_info(config.dataset.name),
        specs=specs,
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
        # Records of older runs lack some of these keys; they ran with the defaults given here.
        backend=conv_backend(
            str(model.get("conv_impl", "xla")),
            int(model.get("channel_multiple", 0)),
            int(model.get("pallas_max_channels", 32)),
        ),
        fold_bn=bool(model.get("fold_bn", False)),
        replica_size=replica,
        grad_accum_steps=accum,
        seed=int(config.seed),
        setting=setting_label(str(config.setting), specs),
        init_from=resolve_init_from(
            str(config.get("init_from", "") or ""), model.name, float(model.width), config.dataset.name, config.seed
        ),
        checkpoint_every_epochs=int(config.checkpoint_every_epochs),
        smoothing_window=int(config.smoothing_window),
        eval_batch_size=int(config.eval_batch_size),
        compile_float_first=bool(config.get("compile_float_first", False)),
    )


def resolve_init_from(source: str, model: str, width: float, dataset: str, seed: int) -> str:
    """config.init_from as a run's workdir: `source` itself where it is one (or is not a folder: the
    error comes when it is read), else the finished run of this model, width and dataset in the folder
    `source` (a sweep root; of several seeds, this run's), the float one where the folder also holds
    quantized runs. So one sweep over widths fine-tunes each width from its own float run
    (--config.init_from=FLOAT_ROOT), and a progressive fine-tune starts each run from the one run of
    its seed in the previous stage's root (--config.init_from=W3_ROOT)."""
    import json
    from pathlib import Path

    root = Path(source)
    if not source or (root / "config.json").is_file() or not root.is_dir():
        return source
    found = []
    for result in sorted(root.glob("*/result.json")):
        try:
            r = json.loads(result.read_text())
        except (OSError, ValueError):
            continue
        bits = [*r.get("w_bits", {}).values(), *r.get("a_bits", {}).values()]
        if (r.get("model"), r.get("dataset")) == (model, dataset) and r.get("width") == width:
            found.append((r.get("seed"), str(result.parent), not any(bits)))
    found = [f for f in found if f[2]] or found
    if len(found) > 1:
        found = [f for f in found if f[0] == seed] or found
    if len(found) != 1:
        which = "no" if not found else f"{len(found)} ({', '.join(Path(f[1]).name for f in found)})"
        kind = "float " if any(f[2] for f in found) else ""
        raise TrainError(
            f"config.init_from={source!r} is not a run's workdir, and it holds {which} finished {kind}run(s) of "
            f"{model} width {width:g} on {dataset} (seed {seed}): give one run's workdir"
        )
    return found[0][1]


def setting_label(setting: str, specs: Mapping[str, specs_lib.QuantSpec]) -> str:
    """The label records and plots carry: `setting` where its bits agree with the rules', else the
    label the rules' bits give (`quant.specs.bits_label`): a 4-bit run is never recorded as float."""
    if specs_lib.label_agrees(setting, specs):
        return setting
    derived = specs_lib.bits_label(specs)
    print(
        f"qresnet: setting {setting!r} does not match the quantization rules; recorded as {derived!r} "
        "(set --config.setting to name it otherwise)",
        file=sys.stderr,
    )
    return derived


def conv_backend(impl: str, channel_multiple: int = 0, pallas_max_channels: int = 32) -> ConvBackend:
    """The ConvBackend of model.conv_impl / channel_multiple / pallas_max_channels: `impl` "auto" is
    "pallas" on one CUDA GPU of compute capability 8.0 or newer (the Triton kernels are GPU-only,
    their bf16 dots need Ampere or newer, and a pallas_call does not split over a sharded batch),
    else "xla"."""
    if impl not in ("auto", *CONV_IMPLS):
        raise TrainError(f"model.conv_impl={impl!r} must be auto, xla or pallas (e.g. --config.model.conv_impl=auto)")
    if impl == "auto":
        devices = jax.devices()
        impl = "pallas" if len(devices) == 1 and _triton_bf16_gpu(devices[0]) else "xla"
    try:
        return ConvBackend(impl, channel_multiple, pallas_max_channels)
    except ValueError as e:
        raise TrainError(f"model: {e}") from e


def _triton_bf16_gpu(device) -> bool:
    """Whether `device` is a CUDA GPU of compute capability >= 8.0 (ROCm GPUs report no "major.minor")."""
    if device.platform != "gpu":
        return False
    try:
        return int(str(getattr(device, "compute_capability", "")).split(".")[0]) >= 8
    except ValueError:
        return False


def stream_spec(config: ml_collections.ConfigDict) -> imagenet_input.StreamSpec:
    """The streaming input's settings from a config."""
    info = data.dataset_info(config.dataset.name)
    d = config.dataset
    spec = imagenet_input.StreamSpec(
        tfds_name=d.tfds_name or info.name,
        data_dir=d.tfds_dir,
        image_size=d.image_size or info.image_shape[0],
        batch_size=config.optim.batch_size,
        eval_batch_size=config.eval_batch_size,
        workers=d.workers,
        # Absent in older records, which ran with these.
        jpeg_draft=bool(d.get("jpeg_draft", True)),
        jpeg_window=bool(d.get("jpeg_window", False)),
        image_backend=d.get("image_backend", "pillow"),
        decode_threads=d.get("decode_threads", 1),
        decode_batches_per_call=d.get("decode_batches_per_call", 1),
        cpu_decode_share=d.get("cpu_decode_share", 0.0),
        gpu_decoder=d.get("gpu_decoder", "torchvision"),
    )
    from qresnet import nvjpeg  # its GPU libraries are imported only when it decodes

    if spec.gpu_decoder not in nvjpeg.GPU_DECODERS:
        raise TrainError(f"dataset.gpu_decoder={spec.gpu_decoder!r} is not one of {nvjpeg.GPU_DECODERS}")
    imagenet_input.check_backend(spec.image_backend, spec.gpu_decoder)
    if spec.jpeg_window:
        imagenet_input.check_window(spec.image_backend)
    return spec


def finished_run_spec(config: ml_collections.ConfigDict) -> RunSpec:
    """The RunSpec of a run from its recorded config (`config.json`): for restoring its checkpoints."""
    info = data.dataset_info(config.dataset.name)
    n_train = config.dataset.synthetic_train if info.name == "synthetic" else info.num_train
    return make_run_spec(config, config.dataset.train_subset or n_train)
