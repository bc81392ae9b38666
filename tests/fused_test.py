"""The BN-folded network (resnet fold_bn) and its fused integer model (qresnet.fused), on the CPU."""

import json
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import settings
from qresnet import checkpoints, config_lib, export, fused, resnet, run_spec, steps, train
from qresnet.quant import layers

ROOT = Path(__file__).resolve().parent.parent
UNSIGNED_W8A8 = [(".*", 8, 8, {"a_granularity": "per_tensor", "w_granularity": "per_tensor", "a_signed": False})]


def _specs(rules, name, width, shape, classes=10):
    return resnet.resolve_specs(rules, name, width=width, num_classes=classes, input_shape=shape)


@pytest.mark.parametrize("name,width", [("resnet8", 1.0), ("resnet50", 0.125)])
def test_folding_bn_gives_the_same_function(name, width):
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    bn = resnet.create_model(name, num_classes=10, width=width)
    v = bn.init(jax.random.key(1), x)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v["params"])
    stats = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(3), a.shape), v["batch_stats"])
    folded = resnet.create_model(name, num_classes=10, width=width, fold_bn=True)
    fparams = resnet.fold_batch_norm(params, stats)
    assert jax.tree.structure(fparams) == jax.tree.structure(folded.init(jax.random.key(1), x)["params"])
    y_bn = bn.apply({"params": params, "batch_stats": stats}, x)
    y_fold = folded.apply({"params": fparams}, x)
    np.testing.assert_allclose(y_fold, y_bn, rtol=1e-4, atol=1e-4 * float(jnp.abs(y_bn).max()))
    assert float(jnp.abs(y_bn).max()) > 0.1  # not a vacuous comparison


def test_fold_specs_are_checked_with_the_fix():
    per_channel = _specs(settings.SETTINGS["w8a8_deploy"], "resnet8", 1.0, (32, 32, 3))
    with pytest.raises(ValueError, match="per_tensor for both"):
        resnet.create_model("resnet8", num_classes=10, specs=per_channel, fold_bn=True)
    mixed = _specs(
        [("stage1/block0/proj", 8, 4, {"a_granularity": "per_tensor", "w_granularity": "per_tensor"})]
        + settings.SETTINGS["w8a8_fused"],
        "resnet8",
        1.0,
        (32, 32, 3),
    )
    with pytest.raises(ValueError, match="reads the codes of its block's conv1"):
        resnet.create_model("resnet8", num_classes=10, specs=mixed, fold_bn=True)
    resnet.create_model("resnet8", num_classes=10, specs=per_channel)  # fine with BN


def test_output_codes_use_all_of_int8_and_round_half_up():
    q, s = layers.output_codes(jnp.array([-5.0, -1.0, 0.5 / 127, 1.5 / 127, 1.0, 3.0]), 1.0)
    np.testing.assert_array_equal(q, [-128, -127, 1, 2, 127, 127])
    assert float(s) == 127.0
    q0, s0 = layers.output_codes(jnp.array([1.0]), 0.0)  # no bound yet: zero codes, scale 1
    assert float(q0[0]) == 0.0 and float(s0) == 1.0


def _fused_case(rules, name, width, shape=(32, 32, 3), n=8):
    """A fold_bn fake-quant model with bounds calibrated on random data, its export and the fused model."""
    specs = _specs(rules, name, width, shape)
    fake = resnet.create_model(name, num_classes=10, width=width, specs=specs, fold_bn=True)
    x = jax.random.normal(jax.random.key(5), (n, *shape))
    v = fake.init(jax.random.key(1), x[:1])
    _, stats = fake.apply(v, x, train=True, act_quant=False, mutable=["quant_stats"])
    v = {**v, **stats}
    header = {"model": name, "num_classes": 10, "width": width, "fold_bn": True}
    header["specs"] = {k: s.to_dict() for k, s in specs.items()}
    int_vars = export.integer_variables(v, specs)
    return fake, v, x, export.int_model(header, int_vars), int_vars


def _header(model, name="resnet50", width=0.125):
    header = {"model": name, "num_classes": 10, "width": width, "fold_bn": True}
    return header | {"specs": {k: s.to_dict() for k, s in model.specs.items()}}


@pytest.mark.parametrize(
    "rules,name,width",
    [
        (settings.SETTINGS["w8a8_fused"], "resnet8", 1.0),  # signed 8-bit codes
        (settings.SETTINGS["w4a4_ends8_fused"], "resnet8", 1.0),  # 4-bit codes inside
        (UNSIGNED_W8A8, "resnet8", 1.0),  # 0..255 stored shifted, explicit padding
        (settings.SETTINGS["w8a8_fused"], "resnet50", 0.125),  # bottlenecks, max-pool
        (settings.SETTINGS["w8a8_fused_pow2"], "resnet8", 1.0),  # power-of-two scales, biases on the grid
        (settings.SETTINGS["w4a4_ends8_fused_pow2"], "resnet8", 1.0),
    ],
)
def test_fused_model_equals_the_fake_quant_model_to_the_bit(rules, name, width):
    fake, v, x, model, int_vars = _fused_case(rules, name, width)
    assert isinstance(model, fused.FusedResNet) and model.rounding == "explicit"  # CPU
    logits_fake = fake.apply(v, x, act_quant=True)
    logits_int = model.apply(int_vars, x)
    np.testing.assert_array_equal(np.asarray(logits_int), np.asarray(logits_fake))
    assert float(jnp.std(logits_fake)) > 0


def _hlo_ops_after_clamp(model, int_vars, grid, out, relu, side=None):
    x = jnp.zeros((1, 8, 8, 16), jnp.int8)
    path = next(iter(model.w_scale))
    a = {"params": {path[0]: {"kernel_int": jnp.zeros((3, 3, 16, 16), jnp.int8), "bias": jnp.zeros((16,))}}}
    model.w_scale[path[:1]], model.pow2[path[:1]] = 0.01, False
    text = jax.jit(lambda a, x: model._fused(a, x, grid, path[:1], 1, out, side=side, relu=relu)).lower(a, x)
    text = text.as_text(dialect="hlo").split("ENTRY", 1)[1]
    root = re.search(r"ROOT \S+ = (\S+) (\w+)\(", text)
    clamp = re.search(r"clamp\((\S+), \S+, (\S+)\)", text)
    consts = dict(re.findall(r"(\S+) = f32\[\] constant\((-?\d+)\)", text))
    bcasts = dict(re.findall(r"(\S+) = f32\[[\d,]+\]\{[\d,]+\} broadcast\((\S+)\)", text))
    bounds = tuple(consts.get(bcasts.get(b, b)) for b in clamp.groups()) if clamp else None
    return root.groups(), bounds, text


def test_cudnn_rounding_writes_the_idiom_xla_fuses():
    """XLA fuses a conv into one int8 -> int8 cuDNN call only if its output is convert<s8>(clamp(-128, .., 127))
    with nothing after the convert (an op after it gets folded into the clamp, and the conv stays unfused)."""
    _, _, _, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet8", 1.0, n=2)
    model.rounding = "cudnn"
    g8 = fused.Grid.of(8, 4.0, True)
    for out, relu, side in [
        (g8, True, None),  # conv1 -> ReLU -> signed 8-bit codes
        (fused.Grid.output(4.0), False, None),  # a projection's output
        (g8, True, (jnp.zeros((1, 8, 8, 16), jnp.int8), g8)),  # with the residual as side input
        (fused.Grid.of(8, 4.0, False), True, None),  # unsigned 8-bit, stored shifted
    ]:
        (dtype, op), bounds, text = _hlo_ops_after_clamp(model, int_vars, g8, out, relu, side)
        assert (dtype.split("[")[0], op, bounds) == ("s8", "convert", ("-128", "127")), text
        assert "round" not in text and "floor" not in text  # cuDNN's epilogue rounds
    # 4-bit codes need a clip after the conv, which keeps XLA from fusing it: that conv rounds in the graph
    (dtype, op), _, text = _hlo_ops_after_clamp(model, int_vars, g8, fused.Grid.of(4, 4.0, False), True)
    assert "floor" in text  # the in-graph rounding
    assert not fused._fusable(fused.Grid.of(4, 4.0, False), True) and fused._fusable(g8, True)
    assert not fused._fusable(g8, False) and fused._fusable(fused.Grid.output(4.0), False)
    four = _fused_case(settings.SETTINGS["w4a4_ends8_fused"], "resnet8", 1.0, n=2)[3]
    assert four.expected_fused == 2  # the two projections only: every other conv gives 4-bit codes


def test_compile_forward_rounds_explicitly_where_xla_fused_nothing():
    _, _, x, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet8", 1.0, n=2)
    explicit = np.asarray(model.apply(int_vars, x))
    model.rounding = "cudnn"  # as on a GPU; the CPU compiler fuses no conv into cuDNN
    with pytest.warns(UserWarning, match=r"XLA fused 0 of \d+ integer convs"):
        compiled, rounding = fused.compile_forward(model, int_vars, x)
    assert rounding == "explicit" == model.rounding
    np.testing.assert_array_equal(np.asarray(compiled(int_vars, x)), explicit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused.compile_forward(model, int_vars, x)  # already explicit: no check, no warning


def test_compile_forward_refuses_convs_that_truncate(monkeypatch):
    """Were XLA to report the convs fused but their int8 output truncated (what the CPU's convert does),
    the first batch's logits give it away."""
    _, _, x, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet8", 1.0, n=4)
    explicit = np.asarray(model.apply(int_vars, x))
    model.rounding = "cudnn"
    monkeypatch.setattr(model, "fused_convs", lambda hlo: model.expected_fused)
    with pytest.warns(UserWarning, match="off the in-graph rounding's on the first batch"):
        compiled, rounding = fused.compile_forward(model, int_vars, x)
    assert rounding == "explicit" and model.check["first_batch_rel_diff"] > fused.CHECK_TOLERANCE
    np.testing.assert_array_equal(np.asarray(compiled(int_vars, x)), explicit)


def test_fused_rejects_float_layers_and_bad_rounding():
    _, _, _, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet8", 1.0, n=2)
    header = _header(model, "resnet8", 1.0)
    with pytest.raises(fused.FusedError, match="rounding must be one of"):
        fused.FusedResNet(header, int_vars, rounding="nearest")
    header["specs"]["stem"] = {"w_bits": None, "a_bits": None}
    with pytest.raises(fused.FusedError, match="'stem' is float"):
        fused.FusedResNet(header, int_vars)
    with pytest.raises(export.ExportError, match="pass them"):
        export.int_model({**header, "specs": {}})


@pytest.mark.parametrize("setting", ["w8a8_fused", "w8a8_fused_pow2"])
def test_a_fused_run_fine_tunes_from_a_float_run_exports_and_matches(tmp_path, capsys, setting):
    """Smoke runs: a float run with BN, then a fused setting started from it (its BN folded in)."""
    smoke = ROOT / "configs/smoke.py"
    r8 = "--config.model.name=resnet8"  # the smallest ResNet: the test is about the path, not the model
    float_cfg = config_lib.load_config(
        smoke, [r8, "--config.setting=bf16", "--config.quant.rules=[('.*', None, None)]"]
    )
    train.train_and_evaluate(float_cfg, tmp_path / "float", quiet=True)
    args = [
        r8,
        f"--config.setting={setting}",
        f"--config.quant.rules={settings.SETTINGS[setting]!r}",
        "--config.model.fold_bn=True",
        f"--config.init_from={tmp_path / 'float'}",
    ]
    cfg = config_lib.load_config(smoke, args)
    run = run_spec.make_run_spec(cfg, cfg.dataset.synthetic_train)
    sample = jnp.zeros((2, 32, 32, 3))
    state = checkpoints.warm_start(steps.create_train_state(run, jax.random.key(0), sample), tmp_path / "float", run)
    src = checkpoints.restore_final(run_spec.finished_run_spec(float_cfg), tmp_path / "float")
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    y_float = steps.create_model(run_spec.make_run_spec(float_cfg, 64)).apply(src.variables(), x)
    y_folded = steps.create_model(run).apply(state.variables(), x, act_quant=False)  # weights quantized only
    assert float(jnp.abs(y_folded - y_float).max()) < 0.1 * float(jnp.abs(y_float).max())
    train.train_and_evaluate(cfg, tmp_path / "fused", quiet=True)
    from qresnet import cli

    assert cli.main(["export", "--workdir", str(tmp_path / "fused"), "--out", str(tmp_path / "fused.qrx")]) == 0
    exact = setting.endswith("_pow2")
    # Without power-of-two scales, the export is not bit-exact on cuDNN: a note names the fix.
    assert ("train with a *_fused_pow2 setting" in capsys.readouterr().err) is not exact
    path = tmp_path / "fused.qrx"
    header, _ = export.read(path)
    assert export.exact_on_cudnn(header) is exact
    assert not export.exact_on_cudnn({**header, "fold_bn": False})
    assert header["fold_bn"] is True and header["setting"] == setting
    eq = export.equivalence(tmp_path / "fused", path)
    assert eq["prediction_agreement"] == 1.0 and eq["max_rel_logit_err"] == 0.0
    assert eq["int_rounding"] == "explicit"  # on the CPU
    assert cli.main(["eval", "--export", str(path)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["setting"] == setting and 0.0 <= row["top1_int"] <= 1.0 and row["n"] > 0
    # --rounding cudnn asks for cuDNN's fused convs; the CPU fuses none, so the check falls back, with a warning.
    with pytest.warns(UserWarning, match=r"XLA fused 0 of \d+ integer convs"):
        assert cli.main(["eval", "--export", str(path), "--rounding", "cudnn"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["int_rounding"] == "explicit"
    with pytest.raises(export.ExportError, match="rounding 'explicit' applies to BN-folded exports"):
        export.int_model({**header, "fold_bn": False}, rounding="explicit")


@pytest.mark.parametrize("size", [32, 35])
def test_space_to_depth_stem_gives_the_same_codes(size):
    _, _, _, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet50", 0.125, n=2)
    x = jax.random.normal(jax.random.key(7), (2, size, size, 3))
    q = jax.random.randint(jax.random.key(8), (2, size, size, 3), -127, 128).astype(jnp.int8)
    w = int_vars["params"]["stem"]["kernel_int"]
    direct = fused._conv(q.astype(jnp.float32), jnp.asarray(w, jnp.float32), 2, [(3, 3), (3, 3)])
    np.testing.assert_array_equal(np.asarray(fused._space_to_depth_conv(q, jnp.asarray(w))), np.asarray(direct))
    assert model.stem == "s2d"  # the default ("auto") for a 7x7 stem with 8-bit codes
    plain = fused.FusedResNet(_header(model), int_vars, stem="float")
    assert model.expected_fused == plain.expected_fused + 1
    np.testing.assert_array_equal(np.asarray(model.apply(int_vars, x)), np.asarray(plain.apply(int_vars, x)))


def test_space_to_depth_stem_needs_the_imagenet_stem():
    _, _, _, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet8", 1.0, n=2)
    assert model.stem == "float"  # "auto" on a CIFAR stem
    with pytest.raises(fused.FusedError, match="needs the 7x7 ImageNet stem"):
        fused.FusedResNet(_header(model, "resnet8", 1.0), int_vars, stem="s2d")
    with pytest.raises(fused.FusedError, match="stem must be one of"):
        fused.FusedResNet(_header(model, "resnet8", 1.0), int_vars, stem="int4")


def test_bench_int_times_the_float32_stem_beside_the_default_on_imagenet_models():
    from benchmarks import inference

    shape = (32, 32, 3)
    report = {}
    x = jax.random.normal(jax.random.key(0), (1, *shape))
    fns = inference._fused_functions("resnet18", 1000, shape, x, report)
    assert set(fns) == {"bf16_folded", "int8_fused", "int8_fused_float_stem"} and report["int8_fused_stem"] == "s2d"
    assert report["int8_fused_rounding"] == report["int8_fused_float_stem_rounding"] == "explicit"  # CPU
    (f, args), (g, gargs) = fns["int8_fused"], fns["int8_fused_float_stem"]
    np.testing.assert_array_equal(np.asarray(f(*args)), np.asarray(g(*gargs)))


def _cudnn_like(v):
    """What cuDNN's fused int8 output does (measured on an H200): clamp, then round half to even."""
    return jnp.round(jnp.clip(v, -128, 127)).astype(jnp.int8)


def _epilogue_margin(monkeypatch, rules, name, width):
    """Runs the cuDNN path's float32 formula on the CPU, rounded as cuDNN rounds; returns the fake-quant and fused
    logits and the smallest distance of a pre-rounding value (inside int8's range) from a rounding boundary."""
    seen = []

    def record(v):
        seen.append(np.asarray(v).ravel())
        return _cudnn_like(v)

    monkeypatch.setattr(fused, "_to_int8", record)
    fake, v, x, model, int_vars = _fused_case(rules, name, width, n=8)
    model.rounding = "cudnn"
    logits_int = np.asarray(model.apply(int_vars, x))
    assert len(seen) == model.expected_fused > 0
    values = np.concatenate(seen)
    values = values[(values > -128) & (values < 127)]
    margin = float(np.min(np.abs(values - (np.floor(values) + 0.5))))
    return np.asarray(fake.apply(v, x, act_quant=True)), logits_int, margin, model


@pytest.mark.parametrize("name,width", [("resnet8", 1.0), ("resnet50", 0.125)])
def test_with_power_of_two_scales_cudnns_rounding_gives_the_fake_quant_codes(monkeypatch, name, width):
    """With pow2_scale the fused epilogue (alpha * sums + bias + beta * residual) is exact in float32 and stays far
    from every rounding boundary, so cuDNN's rounding gives the fake-quant model's codes whatever the order of its
    float operations; without it, values fall within float32 rounding of a boundary (or on one), where another
    order of operations (cuDNN's, on the GPU) can round the other way."""
    logits_fake, logits_int, margin, model = _epilogue_margin(
        monkeypatch, settings.SETTINGS["w8a8_fused_pow2"], name, width
    )
    np.testing.assert_array_equal(logits_int, logits_fake)
    assert float(np.std(logits_fake)) > 0
    ulp = float(np.spacing(np.float32(128)))  # float32's step near int8's largest values
    assert margin >= 64 * ulp  # half a grid step of the sums, 2^-10 here: far beyond any float32 reordering
    assert all(np.frexp(g.scale)[0] == 0.5 for g in model.act.values())  # the scales are powers of two
    assert all(np.frexp(s)[0] == 0.5 for s in model.w_scale.values())
    _, _, margin_plain, _ = _epilogue_margin(monkeypatch, settings.SETTINGS["w8a8_fused"], name, width)
    assert margin_plain <= ulp  # the same network without: values within one float32 step of a boundary


def _conv_channels(model, int_vars, x) -> set[int]:
    """Output channels of every conv in the model's traced forward pass."""
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(int_vars, x)
    return {e.outvars[0].aval.shape[-1] for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"}


@pytest.mark.parametrize(
    "rules,name,width",
    [
        (settings.SETTINGS["w8a8_fused_pow2"], "resnet8", 0.5),  # 8/16/32 channels
        (UNSIGNED_W8A8, "resnet8", 1.0),  # padding with the stored code of 0, -128
        (settings.SETTINGS["w4a4_ends8_fused"], "resnet8", 1.0),  # 4-bit codes, rounded in the graph
        (settings.SETTINGS["w8a8_fused"], "resnet50", 0.125),  # bottlenecks, the space-to-depth stem
    ],
)
def test_channels_padded_to_a_multiple_of_32_give_the_same_logits(monkeypatch, rules, name, width):
    """cuDNN's int8 -> int8 convs are slow below 32 channels; padding them with zero weights and the codes of 0
    changes nothing, in the graph's rounding and in cuDNN's (emulated: clamp, then round half to even)."""
    _, _, x, model, int_vars = _fused_case(rules, name, width, n=4)
    padded = fused.FusedResNet(_header(model, name, width), int_vars, channel_multiple=32)
    assert model.channel_multiple == 1  # "auto" on the CPU: no padding
    assert min(_conv_channels(model, int_vars, x)) < 32 and all(
        c % 32 == 0 for c in _conv_channels(padded, int_vars, x)
    )
    np.testing.assert_array_equal(np.asarray(padded.apply(int_vars, x)), np.asarray(model.apply(int_vars, x)))
    assert float(jnp.std(model.apply(int_vars, x))) > 0
    monkeypatch.setattr(fused, "_to_int8", _cudnn_like)
    model.rounding = padded.rounding = "cudnn"
    np.testing.assert_array_equal(np.asarray(padded.apply(int_vars, x)), np.asarray(model.apply(int_vars, x)))


def test_the_last_conv_is_kept_apart_from_its_epilogue():
    """XLA would fuse the float32-output last conv with its residual into a cuDNN call that runs on a slow generic
    engine; a barrier after the conv leaves it a plain int8 conv (and nothing else is held apart). Basic blocks
    only, where it was measured."""
    _, _, x, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused_pow2"], "resnet8", 1.0, n=2)
    for rounding in ("explicit", "cudnn"):
        model.rounding = rounding
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(int_vars, x)
        barriers = [e for e in jaxpr.eqns if e.primitive.name == "optimization_barrier"]
        assert len(barriers) == 1 and barriers[0].invars[0].aval.dtype == jnp.float32
    _, _, x, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused_pow2"], "resnet50", 0.125, n=2)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(int_vars, x)
    assert "optimization_barrier" not in {e.primitive.name for e in jaxpr.eqns}  # bottlenecks: as timed


def test_channel_padding_is_on_where_cudnn_fuses_8_bit_codes():
    _, _, _, model, int_vars = _fused_case(settings.SETTINGS["w8a8_fused"], "resnet8", 1.0, n=2)
    header = _header(model, "resnet8", 1.0)
    assert fused.FusedResNet(header, int_vars, rounding="cudnn").channel_multiple == fused.FUSED_CHANNEL_MULTIPLE
    assert fused.FusedResNet(header, int_vars, rounding="explicit").channel_multiple == 1
    _, _, _, four, four_vars = _fused_case(settings.SETTINGS["w4a4_ends8_fused"], "resnet8", 1.0, n=2)
    assert fused.FusedResNet(_header(four, "resnet8", 1.0), four_vars, rounding="cudnn").channel_multiple == 1
    for bad in (0, "32", 2.0):
        with pytest.raises(fused.FusedError, match="channel_multiple must be 'auto' or an int >= 1"):
            fused.FusedResNet(header, int_vars, channel_multiple=bad)
