"""`benchmarks.input_pipeline`, `input_feed` and `synthetic_jpegs`: the ImageNet input benchmarks on
small synthetic JPEGs on the CPU (nvJPEG through a stub decoder)."""

import io
import json

import numpy as np
import pytest

from benchmarks import input_feed, input_pipeline, synthetic_jpegs


def test_input_pipeline_benchmark_times_the_streaming_train_batches(tmp_path, capsys):
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


def test_input_benchmark_feed_trains_on_the_pipelines_batches(tmp_path, capsys):
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


def test_decode_phases_are_per_batch_ms_and_absent_without_nvjpeg(monkeypatch):
    from qresnet import nvjpeg

    nvjpeg.phase_seconds(reset=True)
    assert input_feed.decode_phases() == {}  # the CPU backends decode nothing here
    monkeypatch.setattr(nvjpeg, "_phases", nvjpeg.collections.Counter({"batches": 4, "decode": 0.2, "sync": 0.04}))
    assert input_feed.decode_phases() == {"decode_ms_per_batch": {"decode": 50.0, "sync": 10.0}}
    assert nvjpeg.phase_seconds(reset=True)["batches"] == 4 and nvjpeg.phase_seconds() == {}


def test_synthetic_jpegs_decode_to_imagenet_sized_images(tmp_path):
    synthetic_jpegs.write_jpegs(tmp_path / "j.npz", 3)
    source = synthetic_jpegs.JpegSource(tmp_path / "j.npz")
    from PIL import Image

    ex = source[2]
    image = np.asarray(Image.open(io.BytesIO(ex["image"])))  # bytes, as the streaming source hands them over
    assert len(source) == 3 and image.dtype == np.uint8 and image.shape[2] == 3
    assert 300 <= image.shape[0] <= 500 and 350 <= image.shape[1] <= 600
    import pickle

    assert len(pickle.dumps(source)) < 1000  # workers get the path, not the images


def test_shrink_jpeg_keeps_the_aspect_and_leaves_small_files_alone():
    from PIL import Image

    rng = np.random.default_rng(0)
    data = synthetic_jpegs.synthetic_jpeg(300, 500, rng)
    small = synthetic_jpegs.shrink_jpeg(data, 320)
    assert Image.open(io.BytesIO(small)).size == (320, 192)  # (width, height): 500 -> 320, 300 -> 192
    assert len(small) < len(data)
    # The content survives: the shrunk image, resized back, is close to the original.
    back = np.asarray(Image.open(io.BytesIO(small)).convert("RGB").resize((500, 300), Image.BICUBIC), np.float32)
    orig = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    assert np.abs(back - orig).mean() < 12
    assert synthetic_jpegs.shrink_jpeg(data, 500) is data  # no larger than max_side: the same bytes
    grey = synthetic_jpegs.shrink_jpeg(synthetic_jpegs.synthetic_jpeg(400, 200, rng, grey=True), 100)
    assert Image.open(io.BytesIO(grey)).size == (50, 100)
    with pytest.raises(ValueError, match="max_side"):
        synthetic_jpegs.shrink_jpeg(data, 0)
    with pytest.raises(ValueError, match="quality"):
        synthetic_jpegs.shrink_jpeg(data, 320, quality=101)
