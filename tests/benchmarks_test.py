"""The training-step benchmark harness, on a tiny model on the CPU."""

import dataclasses
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
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


def test_profile_sums_device_time_per_instruction(tmp_path):
    from benchmarks import profile_step

    hlo = (
        "  %fusion.3 = f32[2]{0} fusion(f32[2]{0} %p), kind=kLoop, calls=%fused\n"
        '  ROOT %cc = (f32[2]{0}) custom-call(%fusion.3), custom_call_target="__cudnn$convForward"\n'
        "  %add.1 = f32[2]{0} add(%a, %b)\n"
    )
    assert profile_step.instruction_kinds(hlo) == {
        "fusion.3": "fusion:kLoop",
        "cc": "custom-call:__cudnn$convForward",
        "add.1": "add",
    }
    rc = profile_step.main(
        [
            "--case",
            "resnet8:16:8:float32",
            "--rows",
            "qresnet:w8a8:qresnet",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    (row,) = json.loads((tmp_path / "profile.json").read_text())
    assert row["device_ms"] > 0 and row["ops_ms"] and (tmp_path / f"{row['row']}.hlo.txt.gz").exists()
    assert sum(v for k, v in row["by_kind_ms"].items() if k.startswith("convolution")) > 0


def test_profile_of_the_integer_forward_passes(tmp_path, capsys):
    from benchmarks import profile_step

    args = ["--inference", "resnet20:32:4", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]
    assert profile_step.main([*args, "--rows", "bf16,int8"]) == 0
    rows = json.loads((tmp_path / "profile.json").read_text())
    assert [r["row"] for r in rows] == ["resnet20_32_4_bf16_forward", "resnet20_32_4_int8_forward"]
    assert all(r["device_ms"] > 0 and (tmp_path / f"{r['row']}.hlo.txt.gz").exists() for r in rows)
    # The integer program multiplies int8 codes: its HLO has s8 operands, the bf16 one none.
    import gzip

    texts = []
    for r in rows:
        with gzip.open(tmp_path / f"{r['row']}.hlo.txt.gz", "rt") as f:
            texts.append(f.read())
    assert "s8[" not in texts[0] and "s8[" in texts[1]
    assert profile_step.main([*args, "--rows", "int4"]) == 2
    assert "--rows ['int4'] with --inference" in capsys.readouterr().err


def test_input_pipeline_benchmark_times_the_streaming_train_batches(tmp_path, capsys):
    from benchmarks import input_pipeline

    out = tmp_path / "pipe.jsonl"
    # 8 warm-up + 3 timed batches of 4 in one epoch: 44 examples, cycling through 24 JPEGs.
    args = [
        "--workers",
        "0",
        "--examples",
        "24",
        "--batch",
        "4",
        "--warmup",
        "8",
        "--batches",
        "3",
        "--image-size",
        "32",
    ]
    window = ["window"] if input_pipeline._has_window() else []  # nvImageCodec installed (CI installs it)
    decodes = ",".join(["full", "draft", *window])
    assert input_pipeline.main([*args, "--decode", decodes, "--target", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # side by side, one row each
    assert [(r["decode"], r["backend"]) for r in rows] == [
        ("full", "opencv"),
        ("full", "pillow"),
        ("draft", "opencv"),
        ("draft", "pillow"),
        *[(w, "opencv") for w in window],  # not Pillow's
    ]
    for row in rows:
        assert row["workers"] == 0 and row["images_per_s"] > 0 and row["feeds_target"] is True
        assert row["warmup_batches"] == 8 and row["distinct_jpegs"] == 24
    assert input_pipeline.main(["--workers", "x"]) == 2
    assert "--workers 'x'" in capsys.readouterr().err
    assert input_pipeline.main(["--examples", "0"]) == 2
    assert "--batches, --decode-threads and --decode-per-call must be counts >= 1" in capsys.readouterr().err
    assert input_pipeline.main(["--decode", "fast"]) == 2
    assert "--decode 'fast'" in capsys.readouterr().err
    assert input_pipeline.main(["--backend", "pil"]) == 2
    assert "--backend 'pil'" in capsys.readouterr().err
    assert input_pipeline.main(["--placement", "gpu"]) == 2
    assert "--placement 'gpu' must be host, device or host,device" in capsys.readouterr().err
    assert input_pipeline.main(["--decode-threads", "two"]) == 2
    assert "--decode-threads and --decode-per-call must be counts >= 1" in capsys.readouterr().err
    assert input_pipeline.main(["--decode-per-call", "0"]) == 2
    assert "--decode-per-call must be counts >= 1" in capsys.readouterr().err
    assert input_pipeline.main(["--gpu-decoder", "dali"]) == 2
    assert "--gpu-decoder 'dali' must name some of torchvision, nvimgcodec" in capsys.readouterr().err
    assert input_pipeline.main(["--cpu-share", "1"]) == 2
    assert "--cpu-share '1' must be comma-separated shares in [0, 1)" in capsys.readouterr().err


def test_input_benchmark_per_image_compares_decodings_and_backends(tmp_path):
    from benchmarks import input_pipeline

    out = tmp_path / "per_image.jsonl"
    args = ["--examples", "6", "--per-image", "6", "--image-size", "64", "--out", str(out)]
    assert input_pipeline.main(args) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["images"] == 6
    window = ["opencv_window"] if input_pipeline._has_window() else []  # nvImageCodec installed (CI installs it)
    expected = ["opencv_draft", "opencv_full", *window, "pillow_array", "pillow_draft", "pillow_full"]
    assert sorted(row["ms_per_image"]) == expected
    assert min(row["ms_per_image"].values()) > 0 and row["opencv_vs_pillow_speedup"]["full"] > 0
    # 64-pixel crops of 300-600-pixel images: draft decoding applies to some of them
    assert 0 < row["share_of_crops_drafted"] <= 1


def test_synthetic_jpegs_decode_to_imagenet_sized_images(tmp_path):
    from benchmarks import input_pipeline

    input_pipeline.write_jpegs(tmp_path / "j.npz", 3)
    source = input_pipeline.JpegSource(tmp_path / "j.npz")
    from PIL import Image

    ex = source[2]
    image = np.asarray(Image.open(io.BytesIO(ex["image"])))  # bytes, as the streaming source hands them over
    assert len(source) == 3 and image.dtype == np.uint8 and image.shape[2] == 3
    assert 300 <= image.shape[0] <= 500 and 350 <= image.shape[1] <= 600
    import pickle

    assert len(pickle.dumps(source)) < 1000  # workers get the path, not the images


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


def test_vmapped_models_train_each_as_alone():
    """The vmapped multi-model epoch gives every model the state it gets trained alone (quantized: the
    same losses, and a rare weight code may round the other way)."""

    from benchmarks import multi_model

    case = train_step.Case("resnet8", 8, 2, "float32")
    for setting in ("w4a4_ends8",):
        run, states, images, labels, idx, keys = multi_model._setup(case, setting, 2, 2)
        epoch = multi_model._epoch_fn(run)
        vmapped = jax.jit(jax.vmap(epoch, in_axes=(0, None, None, 0, 0)))
        together, (losses, _) = vmapped(states, images, labels, idx, keys)
        for m in range(2):
            alone, (loss_m, _) = jax.jit(epoch)(
                jax.tree.map(lambda a, m=m: a[m], states), images, labels, idx[m], keys[m]
            )
            np.testing.assert_allclose(losses[m], loss_m, rtol=1e-5)
            close = np.isclose(together.params["stem"]["kernel"][m], alone.params["stem"]["kernel"], atol=1e-5)
            assert close.all() if setting == "float" else close.mean() > 0.99, setting
        assert not np.allclose(losses[0], losses[1])  # different seeds, different models


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


def test_multi_model_benchmark_times_vmap_and_processes(tmp_path, capsys):
    from benchmarks import multi_model

    out = tmp_path / "mm.jsonl"
    args = ["--case", "resnet8:8:2:float32:0.5", "--models", "2", "--steps", "1", "--calls", "1"]
    assert multi_model.main([*args, "--modes", "vmap,sequential", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["vmap", "sequential"] and all(r["images_per_s"] > 0 for r in rows)
    assert all(r["width"] == 0.5 for r in rows)
    assert multi_model.main([*args, "--modes", "threads"]) == 2
    assert "unknown modes ['threads']" in capsys.readouterr().err


def test_record_appends_so_a_second_run_keeps_the_first(tmp_path, capsys):
    from benchmarks import record

    out = tmp_path / "rows.jsonl"
    first, second = [], []
    record(first, {"run": 1}, out)
    record(second, {"run": 2}, out)  # a later invocation into the same file
    assert [json.loads(line)["run"] for line in out.read_text().splitlines()] == [1, 2]
    assert second == [{"run": 2}] and '{"run": 2}' in capsys.readouterr().out


def test_alone_rows_time_no_float_step_and_are_kept_apart(tmp_path, capsys):
    out = tmp_path / "alone.jsonl"
    args = ["--case", "resnet8:8:2:float32", "--libraries", "qresnet", "--rows", "qresnet:w4a4_ends8:qresnet"]
    assert train_step.main([*args, "--steps", "1", "--warmup", "1", "--alone", "--out", str(out)]) == 0
    (alone,) = train_step.read_rows(out)
    assert alone["alone"] is True and "float_step_ms" not in alone and alone["step_ms"] > 0
    assert train_step.main([*args, "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    rows = train_step.read_rows(out)
    assert len(rows) == 2 and "float_step_ms" in rows[1]  # the interleaved row is not skipped as a duplicate


def test_warm_up_calls_until_a_call_compiles_nothing():
    """The trainer's epoch program compiles twice when fed a state made outside its mesh (its
    output carries the mesh's sharding); timing from its second call timed a compilation."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import benchmarks

    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    for fn, calls in (
        (jax.jit(lambda x: jax.lax.with_sharding_constraint(x + 1, NamedSharding(mesh, P()))), 3),
        (jax.jit(lambda x: x + 1), 2),
    ):
        box = [jnp.ones(3)]

        def call(fn=fn, box=box):
            box[0] = fn(box[0])

        assert benchmarks.warm_up(fn, call) == calls  # the last of them compiled nothing
        programs = benchmarks.compiled_count(fn)
        call()
        benchmarks.check_compiled(fn, programs, "a timed call")
        fn(jnp.ones(4))  # a new shape compiles: the check must see it
        with pytest.raises(RuntimeError, match="a timed call included a compilation"):
            benchmarks.check_compiled(fn, programs, "a timed call")


def test_input_benchmark_feed_trains_on_the_pipelines_batches(tmp_path, capsys):
    from benchmarks import input_pipeline

    out = tmp_path / "fed.jsonl"
    common = ["--examples", "8", "--workers", "0", "--decode", "full", "--backend", "opencv"]
    args = [*common, "--feed", "resnet18:32:4:float32:0.125", "--warmup", "2", "--batches", "2", "--out", str(out)]
    assert input_pipeline.main([*args, "--profile", "2", "--sample-threads"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    main = row["thread_samples"]["MainThread"]  # the training loop, sampled while it trained
    assert main["samples"] > 0 and 0 < sum(share for _, share in main["top"]) <= 1.001  # shares are rounded
    assert row["mode"] == "fed" and row["backend"] == "opencv" and row["batches"] == 2
    assert row["fed_images_per_s"] > 0 and row["alone_images_per_s"] > 0
    assert row["fed_vs_alone"] == pytest.approx(row["fed_images_per_s"] / row["alone_images_per_s"])
    # fixed data timed as the fed steps are (none waited for), and the fed loop's wait for batches
    assert row["fed_vs_alone_async"] == pytest.approx(row["fed_images_per_s"] / row["alone_async_images_per_s"])
    assert 0 <= row["fed_wait_ms_per_step"] < 1e3 * 4 / row["fed_images_per_s"]
    for kind in ("alone_profile", "fed_profile"):  # a CPU profile has wall times and no kernels
        assert row[kind]["steps"] == 2 and row[kind]["wall_ms"] > 0 and row[kind]["gpu"] is False
    assert input_pipeline.main([*common, "--profile", "2"]) == 2
    assert "--profile and --sample-threads watch the training steps of --feed" in capsys.readouterr().err
    assert input_pipeline.main([*common, "--feed", "resnet18:32:4:float32:0.125", "--profile", "-1"]) == 2
    assert "--warmup and --profile >= 0" in capsys.readouterr().err
    assert input_pipeline.main([*common, "--feed", "resnet50:224"]) == 2
    assert "--feed: case 'resnet50:224' must look like" in capsys.readouterr().err
    assert input_pipeline.main(["--per-image", "2", "--backend", "nvjpeg"]) == 2
    assert "--per-image times the CPU backends" in capsys.readouterr().err


def test_input_benchmark_times_the_nvjpeg_host_side_with_a_stub_decoder(tmp_path, monkeypatch):
    from benchmarks import input_pipeline
    from qresnet import nvjpeg

    monkeypatch.setattr(nvjpeg, "check", nvjpeg.check)  # restored after the test
    monkeypatch.setattr(nvjpeg, "decode_batch", nvjpeg.decode_batch)
    out = tmp_path / "stub.jsonl"
    args = ["--examples", "24", "--workers", "0", "--decode", "full", "--backend", "nvjpeg", "--nvjpeg-stub"]
    args += [
        "--decode-threads",
        "1,2",
        "--placement",
        "host,device",
        "--decode-per-call",
        "1,2",
        "--cpu-share",
        "0,0.5",
    ]
    args += ["--batch", "4", "--warmup", "2", "--batches", "3", "--image-size", "32", "--out", str(out)]
    assert input_pipeline.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = [
        (r["decode_threads"], r["on_device"], r.get("batches_per_call", 1), r.get("cpu_decode_share", 0)) for r in rows
    ]
    assert got == [(t, place, k, c) for t in (1, 2) for place in (False, True) for k in (1, 2) for c in (0, 0.5)]
    assert all(r["backend"] == "nvjpeg" and r["images_per_s"] > 0 for r in rows)
    # the GPU decoder is a row setting too (the stub stands in for either)
    one = ["--examples", "24", "--workers", "0", "--decode", "full", "--backend", "nvjpeg", "--nvjpeg-stub"]
    one += ["--gpu-decoder", "torchvision,nvimgcodec", "--batch", "4", "--warmup", "2", "--batches", "3"]
    assert input_pipeline.main([*one, "--image-size", "32", "--out", str(tmp_path / "dec.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "dec.jsonl").read_text().splitlines()]
    assert [r.get("gpu_decoder", "torchvision") for r in rows] == ["torchvision", "nvimgcodec"]


_XSPACE = """
planes {
  id: 1
  name: "/device:GPU:0"
  lines {
    id: 1 name: "Stream #13(Compute)" timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 4000000 stats { metadata_id: 1 str_value: "fusion.1" } }
    events { metadata_id: 1 offset_ps: 10000000 duration_ps: 2000000 stats { metadata_id: 1 str_value: "fusion.2" } }
  }
  lines {
    id: 2 name: "Stream #20" timestamp_ns: 1000
    events { metadata_id: 2 offset_ps: 3000000 duration_ps: 3000000 }
  }
  lines {
    id: 3 name: "Launch Stats" timestamp_ns: 1000
    events { metadata_id: 2 offset_ps: 0 duration_ps: 99000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "xla_kernel" } }
  event_metadata { key: 2 value { id: 2 name: "torch_kernel" } }
  stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
}
"""


def test_stream_summary_splits_xla_and_other_kernels_and_counts_overlap_once(tmp_path):
    """Kernels of 4 and 2 us from XLA (hlo_op) on one stream, one of 3 us from another library on
    another stream overlapping the first by 1 us; the non-stream line is not counted."""
    from jax.profiler import ProfileData

    from benchmarks import profile_step

    path = tmp_path / "gpu.xplane.pb"
    path.write_bytes(ProfileData.text_proto_to_serialized_xspace(_XSPACE))
    got = profile_step.stream_summary(str(path))
    assert got == {"gpu": True, "xla_kernel_ns": 6000.0, "other_kernel_ns": 3000.0, "busy_ns": 8000.0}
    path.write_bytes(ProfileData.text_proto_to_serialized_xspace(_XSPACE.replace("/device:GPU:0", "/host:CPU")))
    assert profile_step.stream_summary(str(path)) == {"gpu": False}


def test_thread_sampler_finds_a_blocked_thread_on_its_line():
    """A thread waiting inside our code shows up under its pool's name, on the line that waits."""
    import threading
    import time

    from benchmarks.thread_sampler import ThreadSampler

    release = threading.Event()
    waiter = threading.Thread(target=lambda: release.wait(5), name="decode_7")
    waiter.start()
    try:
        with ThreadSampler(interval=0.002, ours=("tests",)) as sampler:
            time.sleep(0.2)
    finally:
        release.set()
        waiter.join()
    got = sampler.summary(top=1)["decode"]
    assert got["samples"] > 10
    ((where, share),) = got["top"]
    assert where.startswith("threading.py") and "benchmarks_test.py" in where and share > 0.9


def test_decode_phases_are_per_batch_ms_and_absent_without_nvjpeg(monkeypatch):
    from benchmarks import input_pipeline
    from qresnet import nvjpeg

    nvjpeg.phase_seconds(reset=True)
    assert input_pipeline._decode_phases() == {}  # the CPU backends decode nothing here
    monkeypatch.setattr(nvjpeg, "_phases", nvjpeg.collections.Counter({"batches": 4, "decode": 0.2, "sync": 0.04}))
    assert input_pipeline._decode_phases() == {"decode_ms_per_batch": {"decode": 50.0, "sync": 10.0}}
    assert nvjpeg.phase_seconds(reset=True)["batches"] == 4 and nvjpeg.phase_seconds() == {}


def test_shrink_jpeg_keeps_the_aspect_and_leaves_small_files_alone():
    from PIL import Image

    from benchmarks import input_pipeline

    rng = np.random.default_rng(0)
    data = input_pipeline.synthetic_jpeg(300, 500, rng)
    small = input_pipeline.shrink_jpeg(data, 320)
    assert Image.open(io.BytesIO(small)).size == (320, 192)  # (width, height): 500 -> 320, 300 -> 192
    assert len(small) < len(data)
    # The content survives: the shrunk image, resized back, is close to the original.
    back = np.asarray(Image.open(io.BytesIO(small)).convert("RGB").resize((500, 300), Image.BICUBIC), np.float32)
    orig = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    assert np.abs(back - orig).mean() < 12
    assert input_pipeline.shrink_jpeg(data, 500) is data  # no larger than max_side: the same bytes
    grey = input_pipeline.shrink_jpeg(input_pipeline.synthetic_jpeg(400, 200, rng, grey=True), 100)
    assert Image.open(io.BytesIO(grey)).size == (50, 100)
    with pytest.raises(ValueError, match="max_side"):
        input_pipeline.shrink_jpeg(data, 0)
    with pytest.raises(ValueError, match="quality"):
        input_pipeline.shrink_jpeg(data, 320, quality=101)


def test_imagenet_projection_scales_with_speed_and_the_sweeps_macs(capsys):
    from benchmarks import imagenet_dry_run

    a, b = imagenet_dry_run.projection(6000.0), imagenet_dry_run.projection(3000.0)
    assert b["paper_run_gpu_hours"] == pytest.approx(2 * a["paper_run_gpu_hours"], rel=0.01)
    hours = 250 * 1_281_167 / 6000 / 3600
    assert a["paper_run_gpu_hours"] == pytest.approx(hours, abs=0.05)
    assert a["paper_run_hours_on_8_gpus"] == pytest.approx(hours / 8, abs=0.01)
    # 36 runs: 4 settings at 9 widths, the wider ones costing more than width 1, the narrower less.
    assert 36 * hours * 0.5 < a["sweep_gpu_hours"] < 36 * hours * 4
    assert imagenet_dry_run.main(["--project", "6000"]) == 0
    assert json.loads(capsys.readouterr().out)["images_per_s"] == 6000
    with pytest.raises(SystemExit):
        imagenet_dry_run.main(["--root", "x", "--act-start-epoch", "5", "--epochs", "4"])


def test_onnx_cpu_benchmark_times_the_qdq_and_float32_models(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from benchmarks import onnx_cpu

    out = tmp_path / "onnx.jsonl"
    assert (
        onnx_cpu.main(["--case", "resnet8:16:4", "--setting", "w8a8_deploy", "--rounds", "1", "--out", str(out)]) == 0
    )
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == "resnet8" and row["setting"] == "w8a8_deploy" and row["weights"] == "random"
    for key in ("qdq", "qdq_integer_kernels", "float32"):
        assert row[f"{key}_images_per_s"] > 0
    assert row["qdq_vs_float32"] == pytest.approx(row["qdq_images_per_s"] / row["float32_images_per_s"])
    assert {"device", "date", "commit", "cpu", "threads", "onnx_runtime"} <= set(row)


def test_sweep_backends_benchmark_reports_both_backends_side_by_side(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from benchmarks import sweep_backends
    from qresnet import sweep

    calls = []
    monkeypatch.setattr(sweep, "run_sweep", lambda config, root, backend="local": calls.append(backend) or 0)
    out = tmp_path / "b.jsonl"
    assert sweep_backends.main(["--repeats", "2", "--out", str(out)]) == 0
    assert calls == ["local", "ray", "local", "ray"]  # alternated
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(row["local_s"]) == len(row["ray_s"]) == 2 and row["ray_vs_local"] > 0 and row["runs"] == 2


def test_mixed_precision_budgets_are_the_uniform_settings_costs(tmp_path):
    """The experiment's 4 budgets at a width: uniform w2a2_ends8, w3a3_ends8, w4a4_ends8 and the w3/w4 midpoint."""
    from benchmarks import mixed_precision
    from configs import settings
    from qresnet import config_lib, run_spec

    cfg = config_lib.load_config("configs/cifar10/sweep_mixed_float.py", ["--config.model.width=0.5"])
    sens = tmp_path / "s.json"
    sens.write_text(json.dumps({"config": config_lib.to_json(cfg)}))
    labels = mixed_precision.budgets(sens, "memory").split(",")
    assert labels[0::3] == ["w2a2_ends8", "w4a4_ends8"] and labels[1] == "w3a3_ends8"

    def cost(s):
        cfg.quant.rules = settings.SETTINGS[s]
        return run_spec.config_cost(cfg)["ratio"]["memory"]

    assert float(labels[2]) == pytest.approx((cost("w3a3_ends8") + cost("w4a4_ends8")) / 2, rel=1e-4)


def test_mixed_precision_trains_the_first_runs_of_every_seed_before_the_rest(tmp_path, monkeypatch):
    """Floats, then (search files already in configs/cifar10/mixed/) each seed's --first runs, then each
    seed's whole sweep (its finished runs skipped), then one Pareto report over the seeds."""
    from benchmarks import mixed_precision

    assert any(mixed_precision.MIXED.glob("*.py"))  # the searches are committed, so none is recomputed
    calls = []
    monkeypatch.setattr(mixed_precision, "qresnet", lambda *args: calls.append(args))
    assert mixed_precision.main(["--root", str(tmp_path), "--seeds", "0,1", "--first", "width1$", "--jobs", "3"]) == 0
    roots = [(c[4], c[c.index("--only") + 1] if "--only" in c else None) for c in calls[1:-1]]
    assert [Path(r).name for r, _ in roots] == ["mixed_seed0", "mixed_seed1"] * 2
    assert [only for _, only in roots] == ["width1$", "width1$", None, None]
    assert calls[0][:2] == ("sweep", "--config") and calls[0][-2:] == ("--jobs", "3")
    assert calls[-1][0] == "pareto" and calls[-1].count("--root") == 2
