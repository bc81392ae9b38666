"""Running an ONNX export (`qresnet.onnx_export`) in ONNX Runtime: `qresnet eval --onnx`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from qresnet import results
from qresnet.onnx_export import FORMAT, OnnxError, onnx_package


def read_header(path: str | Path) -> dict[str, Any]:
    """qresnet's header of an ONNX export, after `onnx.checker`; a clear error for anything else."""
    onnx = onnx_package()
    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"ONNX file {str(path)!r} does not exist; make one with qresnet export --format onnx")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError and others for a damaged file
        raise OnnxError(
            f"{path} is not a valid ONNX model ({type(e).__name__}: {str(e)[:200]}); export it again"
        ) from e
    props = {p.key: p.value for p in model.metadata_props}
    try:
        header = json.loads(props["qresnet"])
        assert header["format"] == FORMAT
    except (KeyError, ValueError, AssertionError, TypeError):
        raise OnnxError(
            f"{path} is an ONNX model but not one qresnet exported (no qresnet metadata): qresnet eval --onnx "
            "evaluates models written by qresnet export --format onnx, on their own dataset"
        ) from None
    return header


def session(path: str | Path, threads: int = 0, *, optimize: bool = True):
    """An ONNX Runtime CPU session of `path` (a file or serialized bytes). `optimize`: all of ONNX
    Runtime's graph optimizations, QDQ fusion into integer kernels included (which rounds each fused
    conv's bias to its int32 accumulator grid, as integer runtimes do); False runs the graph as
    written, in float with its own rounding."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxError('qresnet eval --onnx needs ONNX Runtime: pip install -e ".[onnx]"') from None
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise OnnxError(f"ONNX Runtime cannot load the model ({type(e).__name__}: {str(e)[:300]})") from e


def evaluate(
    path: str | Path, data_dir: str = "", *, compare: str | Path | None = None, optimize: bool = True
) -> dict[str, Any]:
    """Top-1 of an ONNX export in ONNX Runtime on its dataset's test split; with `compare` (the run's
    workdir), its agreement with the run's fake-quant model too; `optimize`: see `session`.

    Returns:
      {model, setting, dataset, n, top1_onnx, onnx_runtime}, with `compare` the fields of
      `export.agreement` too, then device, date, commit.
    """
    import onnxruntime as ort

    from qresnet import export

    header = read_header(path)
    sess = session(path, optimize=optimize)
    if compare is not None:
        batches = export.fake_quant_batches(compare, header, data_dir)
    else:
        batches = ((images, labels, None) for images, labels in export.test_batches(header, data_dir))
    l_onnx, l_fake, ys = [], [], []
    for images, labels, reference in batches:
        l_onnx.append(sess.run(["logits"], {"image": np.asarray(images, np.uint8)})[0])
        l_fake.append(reference)
        ys.append(labels)
    l_onnx, labels = np.concatenate(l_onnx), np.concatenate(ys)
    out = {
        "model": header["model"],
        "setting": header["setting"],
        "dataset": header["dataset"],
        "n": len(labels),
        "top1_onnx": float(np.mean(l_onnx.argmax(1) == labels)),
        "onnx_runtime": ort.__version__,
        "ort_optimized": optimize,
    }
    if compare is not None:
        out |= export.agreement(l_onnx, np.concatenate(l_fake), labels)
    return out | results.provenance()
