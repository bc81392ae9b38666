"""ONNX (QDQ) export and its evaluation in ONNX Runtime, on small trained models on the CPU."""

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from configs import settings  # noqa: E402
from qresnet import cli, config_lib, export, onnx_eval, onnx_export, resnet, train  # noqa: E402
from qresnet.quant import ops  # noqa: E402
from qresnet.quant import specs as specs_lib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"


def _train(tmp, setting, extra=()):
    rules = settings.SETTINGS[setting]
    cfg = config_lib.load_config(SMOKE, [f"--config.quant.rules={rules!r}", f"--config.setting={setting}", *extra])
    train.train_and_evaluate(cfg, tmp / setting, quiet=True)
    return tmp / setting


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    return {s: _train(tmp, s) for s in ("w8a8_deploy", "w4a4_ends8_deploy")}


@pytest.mark.parametrize("setting", ["w8a8_deploy", "w4a4_ends8_deploy"])
def test_onnx_runtime_gives_the_fake_quant_predictions(runs, tmp_path, setting):
    path = onnx_export.export_run(runs[setting], tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    r = onnx_eval.evaluate(path, compare=runs[setting])
    assert r["n"] == 32 and r["prediction_agreement"] == 1.0 and r["top1_onnx"] == r["top1_fake"]
    # The trained codes: only float32 rounding (x / scale against x * s, BN folded) moves the logits.
    assert r["rel_logit_err"] < 1e-5 and r["ort_optimized"]
    assert {"device", "date", "commit", "onnx_runtime"} <= set(r)


def test_integer_kernel_graph_fuses_and_is_exact_as_written(runs, tmp_path):
    """With integer_kernels, ONNX Runtime runs each block's conv1 as QLinearConv (and rounds its bias
    to the int32 grid); as written, the graph still gives the trained codes."""
    import onnxruntime as ort

    run = runs["w8a8_deploy"]
    path = onnx_export.export_run(run, tmp_path / "m.onnx", integer_kernels=True)
    exact = onnx_eval.evaluate(path, compare=run, optimize=False)
    assert exact["prediction_agreement"] == 1.0 and exact["rel_logit_err"] < 1e-5
    fused = onnx_eval.evaluate(path, compare=run)
    assert fused["prediction_agreement"] >= 0.9 and fused["rel_logit_err"] < 0.05
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    plain = [n.op_type for n in onnx.load(str(onnx_export.export_run(run, tmp_path / "p.onnx"))).graph.node]
    blocks = sum(1 for name in resnet.layer_names("resnet8", 0.25) if name.endswith("conv1"))
    assert optimized.count("QLinearConv") == blocks and "QLinearConv" not in plain


def test_graph_is_qdq_with_integer_kernels(runs, tmp_path):
    model = onnx.load(str(onnx_export.export_run(runs["w4a4_ends8_deploy"], tmp_path / "m.onnx")))
    ops = [n.op_type for n in model.graph.node]
    layers = resnet.layer_names("resnet8", 0.25)  # the smoke config's model
    assert ops.count("Conv") == len(layers) - 1 and ops.count("MatMul") == 1
    inits = {t.name: t for t in model.graph.initializer}
    tp = onnx.TensorProto
    assert inits["stem/w_q"].data_type == tp.INT8  # 8-bit stem
    assert inits["stage0/block0/conv1/w_q"].data_type == tp.INT4  # 4-bit layers as INT4
    assert inits["head/w_q"].data_type == tp.INT8
    assert not any(n.endswith("/kernel") or n.endswith("/w") for n in inits)  # no float kernel anywhere
    # Every conv and the head read their input through QuantizeLinear -> DequantizeLinear.
    assert ops.count("QuantizeLinear") == ops.count("Conv") + 1
    meta = json.loads({p.key: p.value for p in model.metadata_props}["qresnet"])
    assert meta["setting"] == "w4a4_ends8_deploy" and meta["format"] == onnx_export.FORMAT


def test_int8_storage_of_4bit_codes_gives_the_same_model(runs, tmp_path):
    a = onnx_export.export_run(runs["w4a4_ends8_deploy"], tmp_path / "int4.onnx")
    b = onnx_export.export_run(runs["w4a4_ends8_deploy"], tmp_path / "int8.onnx", int4_weights=False)
    assert a.stat().st_size < b.stat().st_size
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)  # synthetic: 16x16
    outs = [onnx_eval.session(p).run(["logits"], {"image": images})[0] for p in (a, b)]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize(
    "bits,signed,x,codes",
    [
        (8, True, [-200.0, -1.6, -0.4, 0.6, 1.49, 2.51, 127.4, 300.0], [-127, -2, 0, 1, 1, 3, 127, 127]),
        (4, True, [-9.0, -7.2, 3.51, 6.6, 9.0], [-7, -7, 4, 7, 7]),
        # Unsigned codes floor; 0, the exact integer ReLU gives most, keeps its code.
        (8, False, [-3.0, 0.0, 0.99, 1.01, 2.5, 2.7, 254.9, 300.0], [0, 0, 0, 1, 2, 2, 254, 255]),
        (4, False, [0.0, 0.5, 1.2, 14.99, 15.2, 99.0], [0, 0, 1, 14, 15, 15]),
    ],
)
def test_activation_qdq_gives_the_trained_codes(bits, signed, x, codes):
    """Named cases on the code grid (scale 1): the Clip and the unsigned half-step shift make
    QuantizeLinear's rounding and saturation give the trained quantizer's codes."""
    got = _qdq_codes(bits, signed, x)
    want, _ = ops.int_codes(np.asarray(x, np.float32), bits, np.float32(ops.scale_numerator(bits, signed)), signed)
    np.testing.assert_array_equal(np.asarray(want), codes)  # the cases are the trained quantizer's
    np.testing.assert_array_equal(got, codes)


def test_ties_round_half_to_even_in_onnx():
    """The documented difference: where training's rounding meets a tie of QuantizeLinear's (a signed
    input exactly halfway between codes, an unsigned one exactly on an odd code), ONNX rounds to even."""
    x = [-1.5, 0.5, 2.5]
    want, _ = ops.int_codes(np.asarray(x, np.float32), 8, np.float32(127), True)
    np.testing.assert_array_equal(np.asarray(want), [-1, 1, 3])
    np.testing.assert_array_equal(_qdq_codes(8, True, x), [-2, 0, 2])
    x = [1.0, 2.0, 3.0]
    want, _ = ops.int_codes(np.asarray(x, np.float32), 8, np.float32(256), False)
    np.testing.assert_array_equal(np.asarray(want), [1, 2, 3])
    np.testing.assert_array_equal(_qdq_codes(8, False, x), [0, 2, 2])


def _qdq_codes(bits, signed, x):
    import onnxruntime as ort

    spec = specs_lib.QuantSpec(w_bits=8, a_bits=bits, a_signed=signed, a_granularity="per_tensor")
    g = onnx_export._Graph()
    onnx_export._act_qdq(g, "x", spec, np.float32(ops.scale_numerator(bits, signed)), "t")  # s = 1
    h = onnx.helper
    graph = h.make_graph(
        g.nodes,
        "t",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
        [h.make_tensor_value_info("t/x_dq", onnx.TensorProto.FLOAT, [None])],
        g.inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)], ir_version=onnx_export.IR_VERSION)
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.asarray(x, np.float32)})[0]


@pytest.mark.parametrize(
    "setting,tol",
    [("w8a8_fused_pow2", 0.0), ("w4a4_ends8_fused_pow2", 1e-2), ("w8a8_fused", 1e-2), ("w4a4_ends8_fused", 1e-2)],
)
def test_bn_folded_networks_export_their_fake_quant_model(setting, tol):
    """A BN-folded (fused) ResNet-8, its bounds calibrated on random images: the graph as written
    gives the fake-quant model's predictions (power-of-two w8a8: its logits to the bit)."""
    import jax
    import jax.numpy as jnp

    from qresnet import data

    shape = (32, 32, 3)
    specs = resnet.resolve_specs(settings.SETTINGS[setting], "resnet8", num_classes=10, input_shape=shape)
    fake = resnet.create_model("resnet8", num_classes=10, specs=specs, fold_bn=True)
    images = np.random.default_rng(0).integers(0, 256, (16, *shape), dtype=np.uint8)
    x = data.normalize(jnp.asarray(images), data.dataset_info("cifar10_jpeg"))
    v = fake.init(jax.random.key(1), x[:1])
    v = {**v, **fake.apply(v, x, train=True, act_quant=False, mutable=["quant_stats"])[1]}
    header = {"model": "resnet8", "num_classes": 10, "width": 1.0, "fold_bn": True, "input_shape": list(shape)}
    header |= {"dataset": "cifar10_jpeg", "setting": setting, "specs": {k: s.to_dict() for k, s in specs.items()}}
    model = onnx_export.build(header, export.integer_variables(v, specs))
    got = onnx_eval.session(model.SerializeToString(), optimize=False).run(["logits"], {"image": images})[0]
    want = np.asarray(fake.apply(v, x, act_quant=True))
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
    ops_ = [n.op_type for n in model.graph.node]
    # One quantizer per layer input, except a projection's, which reads conv1's codes; one per projection output.
    assert "BatchNormalization" not in ops_ and ops_.count("QuantizeLinear") == len(specs)


def test_per_channel_activation_runs_are_refused_with_the_fix(tmp_path):
    run = _train(tmp_path, "w8a8")
    with pytest.raises(export.ExportError, match="per-input-channel activation scales.*a_granularity='per_tensor'"):
        onnx_export.export_run(run, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_and_eval_onnx(runs, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--workdir", str(runs["w8a8_deploy"]), "--out", str(out)]) == 0
    assert "QDQ" in capsys.readouterr().out
    assert cli.main(["eval", "--onnx", str(out), "--compare", str(runs["w8a8_deploy"])]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prediction_agreement"] == 1.0 and row["n"] == 32
    before = out.read_bytes()
    assert cli.main(["export", "--workdir", str(runs["w8a8_deploy"]), "--out", str(out), "--format", "onnx"]) == 1
    assert "never overwrites" in capsys.readouterr().err and out.read_bytes() == before
    # An export compared with another run is refused.
    assert cli.main(["eval", "--onnx", str(out), "--compare", str(runs["w4a4_ends8_deploy"])]) == 1
    assert "compare an export with the run it was exported from" in capsys.readouterr().err


def test_corrupt_and_foreign_onnx_files_are_clear_errors(runs, tmp_path, capsys):
    good = onnx_export.export_run(runs["w8a8_deploy"], tmp_path / "good.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:5000])
    h = onnx.helper
    node = h.make_node("Relu", ["x"], ["y"])
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", 1, [1])], [h.make_tensor_value_info("y", 1, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(h.make_model(g, ir_version=onnx_export.IR_VERSION), str(foreign))
    for path, message in (
        (cut, "is not a valid ONNX model"),
        (foreign, "not one qresnet exported"),
        (tmp_path / "missing.onnx", "does not exist"),
    ):
        assert cli.main(["eval", "--onnx", str(path)]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
