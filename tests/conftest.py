"""Shared test helpers."""

import gzip
import os
import shutil
import tempfile

# Imported now, before any test: pytest imports it on the first unraisable exception (e.g. an
# object of a worker pool collected late), and if that happens while TFDS's lazy imports (etils)
# have patched `import` in another thread, it gets a lazy stand-in whose import then fails and
# turns the warning into a test error (seen once in CI).
import tracemalloc  # noqa: F401

import numpy as np
import pytest

# One persistent XLA compilation cache for the whole test session and the `qresnet train`
# processes its sweep and reliability tests start (they inherit the variable): many tests compile
# the same small programs again, and on CI's two cores compiling is most of the test time. Set
# before anything imports JAX, which reads it once.
# The tests' models are tiny: compiling is most of their time and running them little, so XLA skips most
# optimization passes (as Flax's example tests do); the processes the tests start inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
# Every program, also those that compile in under a second (JAX caches only slower ones by default): the
# tests compile hundreds of small ones again and again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="qresnet-tests-xla-cache-")


# Test files that take the longest (seconds of CPU on two cores, measured with --durations), started first:
# pytest-xdist hands each worker whole files (--dist loadfile) in collection order (--no-loadscope-reorder),
# so the long ones do not end up last on one worker while the other has nothing left (its default order, by
# test count, puts files of few long tests such as distributed_test.py at the end). Files not named keep
# their order after these.
SLOW_FIRST = (
    "fused_test.py",
    "train_test.py",
    "benchmarks_train_step_test.py",
    "imagenet_input_test.py",
    "records_test.py",
    "distributed_test.py",
    "quant_layers_test.py",
    "benchmarks_test.py",
    "ray_backend_test.py",
    "export_test.py",
    "sweep_test.py",
    "reliability_test.py",
    "onnx_export_test.py",
    "bn_reestimate_test.py",
    "search_test.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay in one piece


@pytest.fixture
def write_idx():
    """Writes an array as a gzip IDX file (the Fashion-MNIST format)."""

    def write(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    return write


@pytest.fixture
def write_fashion(write_idx):
    """Writes random Fashion-MNIST IDX files (n_train, n_test examples) into a folder."""
    from qresnet import data

    def write(folder, n_train, n_test):
        rng = np.random.default_rng(0)
        for split, n in (("train", n_train), ("test", n_test)):
            img, lbl = data.FASHION_FILES[split]
            write_idx(folder / img, rng.integers(0, 256, (n, 28, 28)))
            write_idx(folder / lbl, rng.integers(0, 10, (n,)))

    return write


@pytest.fixture
def result_record():
    """Builds a result.json object as `qresnet train` writes it (the fields the index and the Pareto
    analysis read); keyword arguments add or replace fields."""

    def make(name, setting, top1, train, **extra):
        return {
            "name": name,
            "model": "resnet20",
            "dataset": "cifar10_jpeg",
            "setting": setting,
            "width": 1.0,
            "epochs": 60,
            "top1": top1,
            "top1_last": top1 - 0.001,
            "train_top1_at_best": train,
            "cost": {
                "total": {"linear": 10, "quadratic": 100, "memory": 5},
                "ratio": {"linear": 0.25, "quadratic": 0.06, "memory": 0.27},
            },
            "w_bits": {
                "stem": 8,
                "stage1/block0/conv1": 4,
                "stage1/block0/conv2": 4,
                "stage1/block1/conv1": 4,
                "head": 8,
            },
            "a_bits": {
                "stem": 8,
                "stage1/block0/conv1": 4,
                "stage1/block0/conv2": 4,
                "stage1/block1/conv1": 4,
                "head": 8,
            },
            "images_per_s": 1000.0,
            "wall_s": 60.0,
            "device": "cpu",
            "versions": {},
            "commit": "abc",
            **extra,
        }

    return make


def pytest_sessionfinish(session, exitstatus):
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def photo_jpeg():
    """Makes JPEG bytes (quality 90) of smooth colour fields plus a little noise: photo-like, unlike pure noise."""
    import io

    from PIL import Image

    def make(h, w, grey=False):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([np.sin(x / (9 + 5 * c) + c) * 60 + np.cos(y / (13 + 3 * c)) * 60 + 128 for c in range(3)], -1)
        img = (img + np.random.default_rng(0).normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if grey else img).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    return make


@pytest.fixture
def fresh_window_decoder():
    """The crop-window decoder imported and made anew in the test and after it (cached per process
    and thread)."""
    from qresnet import jpeg_decode

    jpeg_decode._nvimgcodec.cache_clear()
    jpeg_decode._WINDOW.__dict__.clear()
    yield
    jpeg_decode._nvimgcodec.cache_clear()
    jpeg_decode._WINDOW.__dict__.clear()
