"""`benchmarks.train_step`: the training-step benchmark harness, on a tiny model on the CPU."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from benchmarks import baselines, train_step
from benchmarks.plain_resnet import PlainResNet

CASE = train_step.Case("resnet8", 16, 8, "float32")
ROWS = (
    ("plain_flax", "float", "flax"),
    ("qresnet", "float", "qresnet"),
    ("qresnet", "w4a4_ends8", "qresnet"),
    ("qresnet", "w4a4_ends8", "switch"),
    ("aqt", "w8a8", "conv"),
    ("aqt", "w8a8", "im2col"),
    ("qwix", "w8", "weight_only"),
)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "rows.jsonl"
    train_step.run([CASE], ROWS, steps=2, warmup=2, out=out)
    return out, {(r["library"], r["setting"], r["path"]): r for r in train_step.read_rows(out)}


def test_every_row_is_recorded_with_the_issue_fields(rows):
    _, by_key = rows
    assert set(by_key) == set(ROWS)
    for r in by_key.values():
        for field in ("library", "model", "setting", "dtype", "batch", "device", "commit", "versions"):
            assert field in r, field
        assert r["step_ms"] > 0 and r["images_per_s"] == pytest.approx(8 / (r["step_ms"] / 1e3), rel=1e-2)


def test_plain_flax_is_the_float_qresnet_model(rows):
    # Same architecture, parameter names and initialisation: the same loss and stem gradient.
    _, by_key = rows
    plain, ours = by_key[("plain_flax", "float", "flax")], by_key[("qresnet", "float", "qresnet")]
    assert plain["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    assert plain["stem_grad_norm"] == pytest.approx(ours["stem_grad_norm"], rel=1e-4)


def test_rows_are_timed_beside_the_float_step(rows):
    _, by_key = rows
    for r in by_key.values():
        if "error" not in r:
            assert r["vs_float"] == pytest.approx(r["step_ms"] / r["float_step_ms"], rel=1e-2)


def test_a_conv_path_without_gradient_is_flagged(rows):
    _, by_key = rows
    aqt_conv = by_key[("aqt", "w8a8", "conv")]
    assert aqt_conv["stem_grad_norm"] == 0.0 and "zero gradient" in aqt_conv["error"]
    trains = [("aqt", "w8a8", "im2col"), ("qresnet", "w4a4_ends8", "qresnet"), ("qresnet", "w4a4_ends8", "switch")]
    for key in (*trains, ("qwix", "w8", "weight_only")):
        assert by_key[key]["stem_grad_norm"] > 0 and "error" not in by_key[key], key


def test_rerun_skips_recorded_rows_and_report_has_ratios(rows, capsys):
    out, _ = rows
    before = out.read_text()
    train_step.run([CASE], ROWS, steps=2, warmup=2, out=out)
    assert out.read_text() == before
    assert train_step.main(["--report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| qresnet | w4a4_ends8 |" in table and "1.00x" in table


def test_bad_arguments_are_named(capsys):
    assert train_step.main(["--case", "resnet8:16:8"]) == 2
    assert "MODEL:IMAGE_SIZE:BATCH:DTYPE" in capsys.readouterr().err
    assert train_step.main(["--case", "resnet8:16:8:int3"]) == 2
    assert "dtype must be one of" in capsys.readouterr().err
    assert train_step.main(["--case", "resnet8:16:8:float32", "--rows", "qresnet:w8a8:static"]) == 2
    assert "qresnet row's path is one of ['qresnet', 'switch']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown libraries"):
        train_step.run([CASE], libraries=["tensorrt"])
    with pytest.raises(ValueError, match="AQT setting"):
        baselines.aqt_model("resnet8", 10, "float32", "w2a2", "im2col")


def test_plain_resnet_has_the_parameters_of_qresnet():

    from qresnet import resnet

    def params(model):
        return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"])

    plain = params(PlainResNet("resnet50", 1000))
    ours = params(resnet.create_model("resnet50", num_classes=1000))
    assert jax.tree.structure(plain) == jax.tree.structure(ours)
    assert jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, plain, ours)) == [True] * len(
        jax.tree.leaves(ours)
    )
    assert tuple(resnet.kernel_paths(plain)) == resnet.layer_names("resnet50", 1.0, 1000, (224, 224, 3))


def test_scan_rows_time_the_trainers_epoch_program(rows, tmp_path):
    out, by_key = rows
    scan_rows = (("qresnet", "float", "qresnet"), ("qresnet", "w4a4_ends8", "qresnet"))
    done = train_step.run([CASE], scan_rows, steps=2, warmup=1, out=out, scan=3)
    scanned = {(r["library"], r["setting"], r["path"]): r for r in done if r.get("scan") == 3}
    assert set(scanned) == set(scan_rows)  # recorded beside, not instead of, the single-step rows
    assert len([r for r in done if not r.get("scan")]) == len(ROWS)
    for r in scanned.values():
        assert r["step_ms"] > 0 and r["vs_float"] == pytest.approx(r["step_ms"] / r["float_step_ms"], rel=1e-2)
        assert r["stem_grad_norm"] > 0 and "error" not in r
    assert "| 3 | qresnet | w4a4_ends8 |" in train_step.report(train_step.read_rows(out))


def test_alone_rows_time_no_float_step_and_are_kept_apart(tmp_path, capsys):
    out = tmp_path / "alone.jsonl"
    args = ["--case", "resnet8:8:2:float32", "--libraries", "qresnet", "--rows", "qresnet:w4a4_ends8:qresnet"]
    assert train_step.main([*args, "--steps", "1", "--warmup", "1", "--alone", "--out", str(out)]) == 0
    (alone,) = train_step.read_rows(out)
    assert alone["alone"] is True and "float_step_ms" not in alone and alone["step_ms"] > 0
    assert train_step.main([*args, "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    rows = train_step.read_rows(out)
    assert len(rows) == 2 and "float_step_ms" in rows[1]  # the interleaved row is not skipped as a duplicate


def test_benchmark_case_width():
    assert train_step.parse_case("resnet20:32:256:bfloat16").width == 1.0
    case = train_step.parse_case("resnet20:32:256:bfloat16:0.5")
    assert case.width == 0.5
    run = train_step.run_spec(case, "w4a4_ends8", act_start_step=0)
    assert (run.width, run.backend.channel_multiple) == (0.5, 8)  # padded as the sweep configs pad
    for bad in ("resnet20:32:256:bfloat16:0", "resnet20:32:256:bfloat16:x", "resnet20:32:256"):
        with pytest.raises(ValueError, match="resnet20:32:256"):
            train_step.parse_case(bad)


def test_benchmark_conv_options():
    from qresnet import conv_kernels

    case = dataclasses.replace(train_step.parse_case("resnet20:32:256:bfloat16"), conv_impl="pallas")
    run = train_step.run_spec(dataclasses.replace(case, pallas_max_channels=16), "w4a4_ends8", act_start_step=0)
    assert (run.backend.impl, run.backend.pallas_max_channels) == ("pallas", 16)
    tuning = train_step.parse_tuning("fwd_block=64,warps=8")
    assert tuning == dataclasses.replace(conv_kernels.Tuning(), fwd_block=64, warps=8)
    assert train_step.parse_tuning("") == conv_kernels.Tuning()
    for bad in ("block=64", "warps=0", "warps=x", "warps"):
        with pytest.raises(ValueError, match="--conv-tuning item"):
            train_step.parse_tuning(bad)
