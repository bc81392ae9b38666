"""Export to integers and integer inference, on a small trained model on the CPU."""

import json
import math
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import settings
from qresnet import cli, config_lib, cost, data, export, resnet, train
from qresnet.quant import resolve_specs

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"
DEPLOY = [f"--config.quant.rules={settings.SETTINGS['w4a4_ends8_deploy']!r}", "--config.setting=w4a4_ends8_deploy"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = config_lib.load_config(SMOKE, DEPLOY)
    train.train_and_evaluate(cfg, tmp / "run", quiet=True)
    path = export.export_run(tmp / "run", tmp / "model.qrx")
    return tmp / "run", path


def test_pack_int4_round_trip():
    codes = np.array([-8, -7, -1, 0, 1, 7, 3], np.int8)
    packed = export.pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.size == 4
    np.testing.assert_array_equal(export.unpack_int4(packed, codes.shape), codes)


def test_integer_model_matches_fake_quant(exported):
    workdir, path = exported
    eq = export.equivalence(workdir, path)
    assert eq["prediction_agreement"] == 1.0
    # Per-tensor layers multiply codes in both models, so the logits agree to the bit.
    assert eq["max_rel_logit_err"] == 0.0 and eq["rel_logit_err"] == 0.0
    assert abs(eq["top1_int"] - eq["top1_fake"]) <= 1e-9


def test_bf16_integer_model_is_close_to_the_float32_one(exported, capsys):
    """bf16 between the integer products rounds what gets quantized: close, not bit-exact."""
    workdir, path = exported
    eq = export.equivalence(workdir, path, dtype="bfloat16")
    assert eq["dtype"] == "bfloat16" and 0.0 < eq["rel_logit_err"] < 0.1  # 0.027 on this tiny, untrained model
    assert cli.main(["eval", "--export", str(path), "--dtype", "bfloat16"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["dtype"] == "bfloat16" and 0.0 <= row["top1_int"] <= 1.0
    assert {"device", "date", "commit"} <= set(row) and {"device", "date", "commit"} <= set(eq)
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        export.int_model(export.read(path)[0], dtype="int4")


def test_learned_lsq_bounds_export_and_match_to_the_bit(tmp_path):
    """LSQ bounds are a start (quant_stats) plus a learned offset (params): export adds them as the
    layer does and the integer model agrees to the bit; also on the full-range kernel grid (codes
    -8..7 at 4 bits, -128..127 at 8, in int4 and int8 storage), and with the 4-bit kernels standardized
    (`w_standardize`: their codes are those of the standardized kernel)."""
    rules = [
        (p, w, a, {**o, "w_grid": "full", **({"w_standardize": True} if w == 4 else {})})
        for p, w, a, o in settings.SETTINGS["w4a4_ends8_lsq_deploy"]
    ]
    cfg = config_lib.load_config(SMOKE, [f"--config.quant.rules={rules!r}", "--config.setting=w4a4_ends8_lsq_deploy"])
    train.train_and_evaluate(cfg, tmp_path / "run", quiet=True)
    path = export.export_run(tmp_path / "run", tmp_path / "model.qrx")
    _, variables = export.read(path)
    assert variables["quant_stats"]["stage0_block0"]["conv1"]["act_bound"].shape == ()
    assert np.min(variables["params"]["stage0_block0"]["conv1"]["kernel_int"]) >= -8
    eq = export.equivalence(tmp_path / "run", path)
    assert eq["prediction_agreement"] == 1.0 and eq["max_rel_logit_err"] == 0.0


def test_export_stores_integers_at_their_bit_width(exported):
    workdir, path = exported
    header, variables = export.read(path)
    arrays = header["arrays"]
    assert arrays["params/stage1_block0/conv2/kernel_int"]["packed"]  # 4-bit: two per byte
    assert not arrays["params/stem/kernel_int"]["packed"]  # 8-bit
    assert variables["params"]["stem"]["kernel_int"].dtype == np.int8
    # Kernel payload = the memory cost (weights x bits), up to one padding nibble per 4-bit layer.
    result = json.loads((workdir / "result.json").read_text())
    stored = {k: (math.prod(m["shape"]) + 1) // 2 if m["packed"] else math.prod(m["shape"]) for k, m in arrays.items()}
    payload = sum(n for k, n in stored.items() if k.endswith("kernel_int"))
    memory_bytes = result["cost"]["total"]["memory"] / 8
    assert memory_bytes <= payload <= memory_bytes + len(arrays)


def test_cli_export_and_eval(exported, tmp_path, capsys):
    workdir, _ = exported
    out = tmp_path / "m.qrx"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert cli.main(["eval", "--export", str(out), "--compare", str(workdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[-1])["prediction_agreement"] == 1.0


def test_truncated_and_damaged_files_are_refused(exported, tmp_path):
    _, path = exported
    data = path.read_bytes()
    (tmp_path / "cut.qrx").write_bytes(data[: len(data) // 2])
    with pytest.raises(export.ExportError, match="damaged or truncated"):
        export.read(tmp_path / "cut.qrx")
    (tmp_path / "stub.qrx").write_bytes(data[:10])
    with pytest.raises(export.ExportError, match="truncated or not a qresnet export"):
        export.read(tmp_path / "stub.qrx")
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 1  # one bit of the payload
    (tmp_path / "bad.qrx").write_bytes(bytes(flipped))
    with pytest.raises(export.ExportError, match="fails its checksum"):
        export.read(tmp_path / "bad.qrx")
    (tmp_path / "other.qrx").write_bytes(b"not an export at all" * 10)
    with pytest.raises(export.ExportError, match="not a qresnet export"):
        export.read(tmp_path / "other.qrx")


def test_other_format_versions_are_refused(exported, tmp_path):
    _, path = exported
    data = bytearray(path.read_bytes())
    data[len(export.MAGIC) : len(export.MAGIC) + 4] = struct.pack("<I", 3)
    (tmp_path / "v3.qrx").write_bytes(bytes(data))
    with pytest.raises(export.ExportError, match="format version 3; this qresnet reads version 2"):
        export.read(tmp_path / "v3.qrx")
    assert cli.main(["eval", "--export", str(tmp_path / "v3.qrx")]) == 1
    with zipfile.ZipFile(tmp_path / "v1.qrx", "w") as z:  # version 1 was an npz (a zip)
        z.writestr("__header__.npy", b"")
    with pytest.raises(export.ExportError, match="version-1 export.*export the run again"):
        export.read(tmp_path / "v1.qrx")


def test_file_size_is_the_memory_cost_plus_scales_and_bn(exported):
    workdir, path = exported
    result = json.loads((workdir / "result.json").read_text())
    size = export.size_check(path, result["cost"]["total"]["memory"])
    assert size["file_bytes"] == path.stat().st_size
    # The smoke model is tiny (a few kB), so the fixed header weighs more than in a real model.
    assert 1.0 <= size["ratio"] <= 1.5


def test_resnet20_deploy_exports_are_within_5_percent_of_their_memory_cost(tmp_path):
    for setting in ("w8a8_deploy", "w4a4_ends8_deploy"):
        names = resnet.layer_names("resnet20", 1.0, 10, (32, 32, 3))
        specs = resolve_specs(settings.SETTINGS[setting], names, resnet.signed_layers(names))
        model = resnet.create_model("resnet20", num_classes=10, specs=specs)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        variables["quant_stats"] = jax.tree.map(lambda b: b + 1.0, variables["quant_stats"])
        header = {"model": "resnet20", "width": 1.0, "num_classes": 10, "input_shape": [32, 32, 3]}
        header |= {"dataset": "cifar10_jpeg", "setting": setting}
        path = export.write(tmp_path / f"{setting}.qrx", header, export.integer_variables(variables, specs), specs)
        memory = cost.model_cost("resnet20", width=1.0, num_classes=10, input_shape=(32, 32, 3), specs=specs)
        memory = memory["total"]["memory"]
        size = export.size_check(path, memory)
        assert 1.0 <= size["ratio"] <= 1.05, (setting, size)


def test_per_channel_activation_scales_are_refused_with_the_fix():
    names = resnet.layer_names("resnet20", 0.25, 10, (16, 16, 3))
    specs = resolve_specs(settings.SETTINGS["w4a4_ends8"], names, resnet.signed_layers(names))
    model = resnet.create_model("resnet20", num_classes=10, width=0.25, specs=specs)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(export.ExportError, match="per-input-channel activation scales.*a_granularity='per_tensor'"):
        export.integer_variables(variables, specs)


def test_unsigned_8bit_shift_is_exact():
    from qresnet.quant import QuantSpec, int_layers, ops

    spec = QuantSpec(w_bits=8, a_bits=8, a_signed=False, a_granularity="per_tensor")
    x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 4), maxval=2.0)
    k = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    q, s = int_layers.kernel_codes(k, spec)
    v = {"params": {"kernel_int": q, "w_scale": s}, "quant_stats": {"act_bound": jnp.float32(1.7)}}
    y = int_layers.IntConv(5, (3, 3), padding=((1, 1), (1, 1)), spec=spec).apply(v, x)
    ref = jax.lax.conv_general_dilated(
        ops.fake_quant_unsigned(x, 8, 1.7),
        ops.fake_quant_weight(k, 8),
        (1, 1),
        [(1, 1), (1, 1)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert cost.linear_bits(8, 8) == 8


def test_bench_int_reports_both_paths(tmp_path, capsys):
    from benchmarks import inference

    out = tmp_path / "bench.jsonl"
    assert inference.main(["--case", "resnet20:32:4", "--iters", "1", "--warmup", "1", "--out", str(out)]) == 0
    row, fused_row = (json.loads(line) for line in out.read_text().splitlines())
    assert fused_row["setting"] == "w8a8_fused_pow2" and fused_row["bf16_ms"] == row["bf16_ms"]
    assert fused_row["int8_fused_stem"] == "float" and "float_stem_speedup" not in fused_row  # a CIFAR stem
    assert fused_row["int8_fused_ms"] > 0 and fused_row["bf16_folded_ms"] > 0
    assert fused_row["int8_fused_rounding"] == "explicit"  # on the CPU
    assert fused_row["speedup"] == pytest.approx(fused_row["bf16_ms"] / fused_row["int8_fused_ms"])
    assert row["model"] == "resnet20" and row["batch"] == 4 and row["setting"] == "w8a8_deploy"
    assert row["bf16_images_per_s"] > 0 and row["int8_images_per_s"] > 0
    assert row["int8_conv_ms"] > 0 and row["int8_narrow_int_ms"] > 0 and row["int8_bf16_ms"] > 0
    assert row["speedup"] == pytest.approx(row["int8_images_per_s"] / row["bf16_images_per_s"])
    with pytest.raises(SystemExit):
        inference.main(["--case", "resnet20-32"])
    assert "must look like MODEL:IMAGE_SIZE:BATCH" in capsys.readouterr().err


def test_bench_int_keeps_every_argument_on_the_device():
    """Numpy weights would be copied from the host at every timed call."""
    from benchmarks import inference

    fns = inference.forward_functions("resnet20", 32, 2)
    assert set(fns) == {"bf16", "int8", "int8_conv", "int8_narrow_int", "int8_bf16", "bf16_folded", "int8_fused"}
    for key, (_, args) in fns.items():
        leaves = jax.tree.leaves(args)
        assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves), key


@pytest.mark.parametrize("a_signed", [True, False])
def test_narrow_stem_as_float_products_equals_the_int8_conv(a_signed):
    from qresnet.quant import QuantSpec, int_layers

    spec = QuantSpec(w_bits=8, a_bits=8, a_signed=a_signed, a_granularity="per_tensor")
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3)) * 2.0
    k = jax.random.normal(jax.random.key(1), (7, 7, 3, 6))
    q, s = int_layers.kernel_codes(k, spec)
    v = {"params": {"kernel_int": q, "w_scale": s}, "quant_stats": {"act_bound": jnp.float32(3.0)}}

    def run(narrow):
        conv = int_layers.IntConv(
            6, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), spec=spec, narrow_as_float=narrow
        )
        text = jax.jit(conv.apply).lower(v, x).as_text()
        return conv.apply(v, x), [line for line in text.splitlines() if "convolution" in line]

    (y_float, conv_float), (y_int, conv_int) = run(True), run(False)
    assert len(conv_float) == 1 and "xi8>" not in conv_float[0] and "x3xf32>" in conv_float[0]
    assert len(conv_int) == 1 and "xi8>" in conv_int[0]
    np.testing.assert_array_equal(y_float, y_int)  # exact integer sums either way


def test_narrow_as_float_only_where_float32_sums_stay_exact():
    from qresnet.quant import QuantSpec, int_layers

    unsigned8 = QuantSpec(w_bits=8, a_bits=8, a_signed=False)
    assert int_layers.exact_in_float(unsigned8, 7 * 7 * 3)  # 147 * 255 * 127 < 2^24
    assert not int_layers.exact_in_float(unsigned8, 9 * 9 * 7)  # 567 * 255 * 127 > 2^24
    assert int_layers.exact_in_float(QuantSpec(w_bits=4, a_bits=4, a_signed=False), 9 * 9 * 7)


def test_test_batches_limit_is_the_subset_training_evaluated():
    """`eval --compare` on a run with dataset.test_subset sees the examples the run evaluated."""
    import numpy as np

    got = np.concatenate([y for _, y in data.test_batches("synthetic", limit=50, batch=16)])
    want = data.subset(data.load("synthetic", "", (512, 256)), 0, 50).test_labels
    np.testing.assert_array_equal(got, want)
    assert len(got) == 50


def test_bench_int_times_the_settings_configs_name():
    from benchmarks import inference
    from configs import settings

    assert settings.SETTINGS["w8a8_deploy"] == inference.W8A8_DEPLOY
    assert settings.SETTINGS[inference.FUSED_SETTING] == inference.W8A8_FUSED
