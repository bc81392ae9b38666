"""Streaming input: a tiny ImageNet-shaped TFDS dataset (JPEG images of mixed sizes, 1000 classes) made here."""

import dataclasses
import io
import json
import random
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from qresnet import config_lib, data, imagenet_input, train

ROOT = Path(__file__).resolve().parent.parent
NAME = "tiny_imagenet_qresnet_test"


class TinyImagenetQresnetTest(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """imagenet2012's features (a JPEG `image`, a 1000-class `label`) on 40 + 10 small random images."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(encoding_format="jpeg"), "label": tfds.features.ClassLabel(num_classes=1000)}
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 40), "validation": self._generate_examples(1, 10)}

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(24, 72, 2))
            shape = (h, w) if i == 3 else (h, w, 3)  # one greyscale image, as ImageNet has
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, "JPEG")
            yield i, {"image": buf.getvalue(), "label": int(rng.integers(0, 1000))}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    TinyImagenetQresnetTest(data_dir=str(root), file_format="array_record").download_and_prepare()
    return str(root)


def spec(tfds_dir, workers=0, batch=8):
    return imagenet_input.StreamSpec(NAME, tfds_dir, 32, batch, 4, workers=workers)


def test_window_decoding_without_nvimgcodec_is_a_clear_error(
    tfds_dir, tmp_path, capsys, monkeypatch, fresh_window_decoder
):
    from qresnet import cli

    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # as if it were not installed
    with pytest.raises(imagenet_input.InputError, match=r"pip install nvidia-nvimgcodec-cu12.*jpeg_window=False"):
        imagenet_input.check_window()
    args = ["train", "--config", str(ROOT / "configs/imagenet/base.py"), "--workdir", str(tmp_path / "run")]
    assert cli.main([*args, *stream_overrides(tfds_dir, "--config.dataset.jpeg_window=True")]) == 1
    assert "dataset.jpeg_window needs nvImageCodec" in capsys.readouterr().err
    pillow = ("--config.dataset.jpeg_window=True", "--config.dataset.image_backend=pillow")
    assert cli.main([*args, *stream_overrides(tfds_dir, *pillow)]) == 1
    assert "image_backend 'pillow' would ignore it" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


_PRIORITIES = []  # the stream priorities the stand-in decoder was asked for
_CALL_SIZES = []  # the images of each call to the stand-in decoder (train and eval)
_DECODERS = []  # the GPU decoders the stand-in was asked for


def _cpu_decode_batch(jpegs, boxes, flips, size, on_device=False, priority=0, decoder="torchvision"):
    """nvjpeg.decode_batch's contract, on the CPU with OpenCV (the GPU path's stand-in in tests)."""
    _PRIORITIES.append(priority)
    _DECODERS.append(decoder)
    _CALL_SIZES.append(len(jpegs))
    time.sleep(random.random() / 100)  # several decoding threads then finish out of order
    out = []
    for jpeg, box, flip in zip(jpegs, boxes, flips):
        crop = tuple(int(v) for v in box)
        data = bytes(jpeg)  # the pipeline hands over numpy views of the collated batch
        image = imagenet_input.decode_crop_resize(data, lambda h, w, crop=crop: crop, size, False)
        out.append(image[:, ::-1] if flip else image)
    out = np.stack(out)
    return jax.device_put(out) if on_device else out


def test_every_decoding_thread_gets_a_batch_at_once(monkeypatch):
    """With more decoding threads than the default look-ahead, all of them decode at the same time
    (each stand-in decode waits at a barrier for the others: with fewer at once it breaks)."""
    from qresnet import nvjpeg

    threads = 5
    barrier = threading.Barrier(threads, timeout=5)

    def decode(jpegs, boxes, flips, size, on_device=False, priority=0, decoder="torchvision"):
        barrier.wait()
        return np.zeros((len(boxes), size, size, 3), np.uint8)

    monkeypatch.setattr(nvjpeg, "decode_batch", decode)
    plans = {"jpeg": np.zeros(4, np.uint8), "offsets": np.array([0, 2, 4]), "box": np.zeros((2, 4), int)}
    batches = [plans | {"flip": np.zeros(2, bool), "label": np.full(2, i)} for i in range(2 * threads)]
    got = list(imagenet_input._gpu_batches(iter(batches), 8, threads=threads))
    assert [int(b["label"][0]) for b in got] == list(range(2 * threads))


@pytest.fixture
def cpu_nvjpeg(monkeypatch):
    from qresnet import nvjpeg

    monkeypatch.setattr(nvjpeg, "check", lambda decoder="torchvision": None)
    monkeypatch.setattr(nvjpeg, "decode_batch", _cpu_decode_batch)


@pytest.mark.parametrize(
    "workers,threads,on_device,priority,per_call,cpu_share,decoder",
    [
        (0, 1, False, 0, 1, 0.0, "torchvision"),
        (2, 1, False, 0, 1, 0.0, "torchvision"),
        (0, 3, False, 0, 1, 0.0, "torchvision"),
        (0, 2, True, -1, 1, 0.0, "torchvision"),
        (0, 2, True, 0, 2, 0.0, "torchvision"),
        (2, 1, False, 0, 3, 0.0, "torchvision"),
        (2, 2, True, 0, 2, 0.3, "torchvision"),
        (0, 1, False, 0, 1, 0.3, "nvimgcodec"),
    ],
)
def test_gpu_decoding_gets_the_same_crops_flips_order_and_batches(
    tfds_dir, cpu_nvjpeg, workers, threads, on_device, priority, per_call, cpu_share, decoder
):
    """With image_backend nvjpeg the host plans (bytes, crop box, flip) with the CPU path's draws and
    the decoder gets whole batches, `decode_batches_per_call` train batches at a time (the last
    call shorter): with OpenCV standing in for nvJPEG the batches equal the opencv backend's
    (full-size decoding), train and eval, with worker processes or without, in order when several
    threads decode (finishing in any order), with train batches left on the device, and with a
    share of each train batch decoded in the workers instead (`cpu_decode_share`: the GPU then
    gets the rest); the decoder is asked for the spec's stream priority and GPU decoder."""
    cpu = imagenet_input.StreamSpec(NAME, tfds_dir, 32, 8, 4, workers=0, jpeg_draft=False)
    gpu = dataclasses.replace(
        cpu,
        workers=workers,
        image_backend="nvjpeg",
        decode_threads=threads,
        decode_on_device=on_device,
        decode_priority=priority,
        decode_batches_per_call=per_call,
        cpu_decode_share=cpu_share,
        gpu_decoder=decoder,
    )
    _PRIORITIES.clear()
    _CALL_SIZES.clear()
    _DECODERS.clear()
    src = imagenet_input.open_source(cpu, "train")
    want = list(imagenet_input.train_batches(cpu, src, seed=3, epoch=1))
    got = list(imagenet_input.train_batches(gpu, src, seed=3, epoch=1))
    assert len(got) == len(want) == 5
    on_gpu = 8 - round(8 * cpu_share)  # images of each train batch the GPU decodes
    calls = [on_gpu * per_call] * (5 // per_call) + [on_gpu * (5 % per_call)] * (5 % per_call > 0)
    assert sorted(_CALL_SIZES, reverse=True) == calls
    for g, w in zip(got, want):
        assert isinstance(g["image"], jax.Array) == on_device
        np.testing.assert_array_equal(g["image"], w["image"])
        np.testing.assert_array_equal(g["label"], w["label"])
    val = imagenet_input.open_source(cpu, "validation")
    for g, w in zip(imagenet_input.eval_batches(gpu, val), imagenet_input.eval_batches(cpu, val), strict=True):
        for k in ("image", "label", "mask"):
            np.testing.assert_array_equal(g[k], w[k])
    assert set(_PRIORITIES) == {priority}  # the decoding threads are this process's, workers or not
    assert set(_DECODERS) == {decoder}


def test_a_gpu_decoding_error_reaches_the_consumer(tfds_dir, monkeypatch):
    from qresnet import nvjpeg

    def broken(*args, **kwargs):
        raise ValueError("bad batch")

    monkeypatch.setattr(nvjpeg, "decode_batch", broken)
    spec = imagenet_input.StreamSpec(NAME, tfds_dir, 32, 8, 4, image_backend="nvjpeg")
    with pytest.raises(ValueError, match="bad batch"):
        next(imagenet_input.train_batches(spec, imagenet_input.open_source(spec, "train"), seed=0, epoch=0))


def test_the_gpu_backend_does_not_prepare_single_images(photo_jpeg):
    with pytest.raises(imagenet_input.InputError, match="'nvjpeg' does not prepare single images"):
        imagenet_input.decode_crop_resize(photo_jpeg(40, 50), lambda h, w: (0, 0, 40, 40), 32, False, "nvjpeg")


def test_unknown_or_missing_image_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(imagenet_input.InputError, match="image_backend 'pil' is not one of"):
        imagenet_input.check_backend("pil")
    imagenet_input.check_backend("pillow")
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(imagenet_input.InputError, match="pip install opencv-python-headless.*image_backend=pillow"):
        imagenet_input.check_backend("opencv")
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without PyTorch
    with pytest.raises(imagenet_input.InputError, match=r"qresnet\[nvjpeg\].*image_backend=opencv"):
        imagenet_input.check_backend("nvjpeg")


def test_unknown_or_missing_gpu_decoder_is_a_clear_error(monkeypatch, fresh_window_decoder):
    from qresnet import nvjpeg

    monkeypatch.setattr(nvjpeg, "_torch", lambda: (None, None))  # as where PyTorch sees a GPU
    with pytest.raises(imagenet_input.InputError, match="gpu_decoder 'dali' is not one of"):
        imagenet_input.check_backend("nvjpeg", "dali")
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # as if nvImageCodec were not installed
    with pytest.raises(imagenet_input.InputError, match=r"'nvimgcodec' needs it.*nvidia-nvimgcodec.*gpu_decoder=torch"):
        imagenet_input.check_backend("nvjpeg", "nvimgcodec")
    imagenet_input.check_backend("nvjpeg", "torchvision")


def test_train_batches_are_uint8_full_and_a_function_of_seed_and_epoch(tfds_dir):
    s = spec(tfds_dir)
    src = imagenet_input.open_source(s, "train")
    assert len(src) == 40
    a = list(imagenet_input.train_batches(s, src, seed=0, epoch=0))
    assert len(a) == 5 and a[0]["image"].shape == (8, 32, 32, 3) and a[0]["image"].dtype == np.uint8
    assert a[0]["label"].dtype == np.int32
    b = list(imagenet_input.train_batches(s, src, seed=0, epoch=0))
    c = list(imagenet_input.train_batches(s, src, seed=0, epoch=1))
    assert all((x["image"] == y["image"]).all() for x, y in zip(a, b))
    assert not all((x["label"] == y["label"]).all() for x, y in zip(a, c))
    # Every example once per epoch.
    assert sorted(np.concatenate([x["label"] for x in a])) == sorted(src[i]["label"] for i in range(40))


def test_window_decoding_streams_the_same_batches(tfds_dir, fresh_window_decoder, photo_jpeg):
    """With `jpeg_window` the train and eval batches (worker processes, a greyscale image among
    them) are those without it, to the bit; also when this process decoded before the workers
    started (a decoder does not survive a fork)."""
    pytest.importorskip("nvidia.nvimgcodec")
    assert imagenet_input.decode_window(photo_jpeg(40, 50), (0, 0, 8, 8)).shape == (8, 8, 3)
    src = imagenet_input.open_source(spec(tfds_dir), "train")
    on = dataclasses.replace(spec(tfds_dir, workers=2), jpeg_window=True)
    for a, b in zip(
        imagenet_input.train_batches(spec(tfds_dir), src, seed=1, epoch=0),
        imagenet_input.train_batches(on, src, seed=1, epoch=0),
        strict=True,
    ):
        np.testing.assert_array_equal(a["image"], b["image"])
    val = imagenet_input.open_source(spec(tfds_dir), "validation")
    for a, b in zip(
        imagenet_input.eval_batches(spec(tfds_dir), val), imagenet_input.eval_batches(on, val), strict=True
    ):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_worker_processes_give_the_same_batches(tfds_dir):
    src = imagenet_input.open_source(spec(tfds_dir), "train")
    inline = list(imagenet_input.train_batches(spec(tfds_dir), src, seed=3, epoch=2))
    workers = list(imagenet_input.train_batches(spec(tfds_dir, workers=2), src, seed=3, epoch=2))
    assert len(inline) == len(workers)
    assert all((x["image"] == y["image"]).all() for x, y in zip(inline, workers))


def test_eval_batches_cover_the_split_once_with_a_mask(tfds_dir):
    s = spec(tfds_dir)
    src = imagenet_input.open_source(s, "validation")
    batches = list(imagenet_input.eval_batches(s, src))
    assert [b["mask"].sum() for b in batches] == [4, 4, 2]
    assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
    first = imagenet_input.eval_example(src[0], 32)["image"]
    np.testing.assert_array_equal(batches[0]["image"][0], first)


def test_processes_read_their_rows_of_each_batch_as_one_process_makes_them(tfds_dir):
    """A multi-process run: process p of 2 gets rows [4p, 4p+4) of each batch of 8 (train, the same
    examples and crops) and of 4 (eval, with their masks)."""
    s = spec(tfds_dir)
    src = imagenet_input.open_source(s, "train")
    whole = list(imagenet_input.train_batches(s, src, seed=2, epoch=1))
    parts = [list(imagenet_input.train_batches(s, src, seed=2, epoch=1, process=(p, 2))) for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 5
    for w, a, b in zip(whole, *parts):
        assert a["image"].shape == (4, 32, 32, 3)
        for k in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k])
    val = imagenet_input.open_source(s, "validation")
    whole = list(imagenet_input.eval_batches(s, val))
    parts = [list(imagenet_input.eval_batches(s, val, (p, 2))) for p in range(2)]
    for w, a, b in zip(whole, *parts, strict=True):
        for k in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k])


def test_missing_dataset_names_what_to_prepare(tmp_path):
    with pytest.raises(imagenet_input.InputError, match="tfds build imagenet2012 --file_format=array_record"):
        imagenet_input.open_source(imagenet_input.StreamSpec("imagenet2012", str(tmp_path), 224, 8, 8), "train")


def stream_overrides(tfds_dir, *extra):
    """A tiny ResNet-18 on the tiny dataset, read as imagenet2012 (32 px crops, batch 8, in-process decoding)."""
    return [
        "--config.dataset.name=imagenet2012",
        f"--config.dataset.tfds_name={NAME}",
        f"--config.dataset.tfds_dir={tfds_dir}",
        "--config.dataset.image_size=32",
        "--config.dataset.workers=0",
        "--config.model.name=resnet18",
        "--config.model.width=0.125",
        "--config.model.dtype=float32",
        "--config.optim.batch_size=8",
        "--config.model.replica_size=4",  # the paper's statistics per replica, at this batch's scale
        "--config.quant.act_start_epoch=0.5",
        "--config.eval_batch_size=4",
        *extra,
    ]


def test_train_streams_an_imagenet_shaped_dataset(tfds_dir, tmp_path):
    overrides = stream_overrides(
        tfds_dir,
        "--config.optim.num_epochs=2",
        "--config.optim.warmup_epochs=0.5",
        "--config.optim.cooldown_epochs=0.0",
        "--config.quant.act_start_step=5",
        "--config.checkpoint_every_epochs=1",
    )
    config = config_lib.load_config(ROOT / "configs/imagenet/resnet50_w4a4_ends8.py", overrides)
    result = train.train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert result["dataset"] == "imagenet2012" and result["epochs"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10]  # 40 examples / batch 8
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["eval_top1"] <= 1 for r in rows)
    assert data.dataset_info("imagenet2012").streaming and not data.dataset_info("cifar10").streaming
    # Re-running resumes: the finished run is returned, not retrained.
    assert train.train_and_evaluate(config, tmp_path / "run", quiet=True)["wall_s"] == result["wall_s"]


def test_a_bad_image_backend_fails_before_anything_is_written(tfds_dir, tmp_path, capsys):
    from qresnet import cli

    args = ["train", "--config", str(ROOT / "configs/imagenet/base.py"), "--workdir", str(tmp_path / "run")]
    assert cli.main([*args, *stream_overrides(tfds_dir, "--config.dataset.image_backend=cv")]) == 1
    assert "image_backend 'cv' is not one of ('opencv', 'pillow', 'nvjpeg')" in capsys.readouterr().err
    assert cli.main([*args, *stream_overrides(tfds_dir, "--config.dataset.decode_threads=0")]) == 1
    assert "--config.dataset.decode_threads=0 is out of range" in capsys.readouterr().err
    assert cli.main([*args, *stream_overrides(tfds_dir, "--config.dataset.decode_batches_per_call=0")]) == 1
    assert "--config.dataset.decode_batches_per_call=0 is out of range" in capsys.readouterr().err
    assert cli.main([*args, *stream_overrides(tfds_dir, "--config.dataset.cpu_decode_share=1.0")]) == 1
    assert "--config.dataset.cpu_decode_share=1.0 is out of range" in capsys.readouterr().err
    assert cli.main([*args, *stream_overrides(tfds_dir, "--config.dataset.gpu_decoder=dali")]) == 1
    assert "dataset.gpu_decoder='dali' is not one of ('torchvision', 'nvimgcodec')" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_compile_float_first_is_refused_for_streaming_data(tfds_dir, tmp_path):
    overrides = stream_overrides(tfds_dir, "--config.compile_float_first=True")
    config = config_lib.load_config(ROOT / "configs/imagenet/base.py", overrides)
    with pytest.raises(train.TrainError, match="compile_float_first applies to in-memory datasets"):
        train.train_and_evaluate(config, tmp_path / "run", quiet=True)


def test_export_and_integer_eval_stream_the_test_split(tfds_dir, tmp_path):
    from configs import settings
    from qresnet import cli, export

    rules = settings.SETTINGS["w4a4_ends8_deploy"]
    overrides = stream_overrides(
        tfds_dir,
        "--config.optim.num_epochs=1",
        "--config.quant.act_start_step=2",
        f"--config.quant.rules={rules!r}",
        "--config.setting=w4a4_ends8_deploy",
    )
    config = config_lib.load_config(ROOT / "configs/imagenet/base.py", overrides)
    train.train_and_evaluate(config, tmp_path / "run", quiet=True)
    path = export.export_run(tmp_path / "run", tmp_path / "m.qrx")
    eq = export.equivalence(tmp_path / "run", path)
    assert eq["n"] == 10 and eq["prediction_agreement"] == 1.0 and eq["max_rel_logit_err"] == 0.0
    header, variables = export.read(path)
    assert header["tfds_name"] == NAME and header["image_size"] == 32
    assert export.evaluate(header, variables, tfds_dir)["top1_int"] == eq["top1_int"]
    assert cli.main(["eval", "--export", str(path), "--data-dir", tfds_dir]) == 0
