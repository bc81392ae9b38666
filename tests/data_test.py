"""Offline data sources on small generated files, and on-device augmentation."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from qresnet import data


def test_fashion_mnist_from_idx_files(tmp_path, write_fashion):
    write_fashion(tmp_path, 6, 4)
    arrays = data.load("fashion_mnist", str(tmp_path))
    assert arrays.train_images.shape == (6, 28, 28, 1) and arrays.test_labels.shape == (4,)
    assert arrays.train_labels.dtype == np.int32


def test_corrupt_idx_file_names_the_fix(tmp_path):
    for split in ("train", "test"):
        for f in data.FASHION_FILES[split]:
            (tmp_path / f).write_bytes(b"not gzip")
    with pytest.raises(data.DataError, match="apt-get install --reinstall dataset-fashion-mnist"):
        data.load("fashion_mnist", str(tmp_path))


def test_cifar10_jpeg_pack(tmp_path):
    rng = np.random.default_rng(0)
    parts = {"classes": np.array(["airplane", "automobile"])}
    for split, n in (("train", 5), ("test", 3)):
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
            blobs.append(buf.getvalue())
        parts[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
        parts[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        parts[f"{split}_labels"] = rng.integers(0, 2, n).astype(np.uint8)
    np.savez(tmp_path / "cifar10_jpeg.npz", **parts)
    arrays = data.load("cifar10_jpeg", str(tmp_path))
    assert arrays.train_images.shape == (5, 32, 32, 3) and arrays.test_images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(arrays.train_labels, parts["train_labels"])
    assert (tmp_path / "cifar10_jpeg.decoded.npz").exists()  # decoded once, cached
    again = data.load("cifar10_jpeg", str(tmp_path))
    np.testing.assert_array_equal(again.test_images, arrays.test_images)


def test_missing_cifar_pack_says_where(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_DEFAULT_DIRS", ())
    monkeypatch.delenv("QRESNET_DATA", raising=False)
    with pytest.raises(data.DataError, match="cifar10_jpeg.npz not found.*copy shared/data/cifar10_jpeg.npz"):
        data.load("cifar10_jpeg", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown dataset 'cifar11'"):
        data.dataset_info("cifar11")


def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = data.load("synthetic", synthetic_size=(8, 4)), data.load("synthetic", synthetic_size=(8, 4))
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.train_images.shape == (8, 16, 16, 3)


def test_augment_crops_and_flips_on_device():
    images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.uint8).reshape(2, 4, 4, 1)
    out = jax.jit(lambda k, x: data.augment(k, x, 1, True))(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    same = data.augment(jax.random.key(0), images, 0, False)
    np.testing.assert_array_equal(same, images)
    x = data.normalize(images, data.dataset_info("fashion_mnist"))
    assert x.dtype == jnp.float32


def test_subsets_of_a_class_sorted_dataset_hold_every_class():
    """cifar10_jpeg is stored by class: a subset is a fixed random draw, not the first n."""
    import numpy as np

    labels = np.repeat(np.arange(10, dtype=np.int32), 100)  # sorted by class, like cifar10_jpeg
    images = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1, 1)
    arrays = data.Arrays(images, labels, images[:500], labels[::2])
    sub = data.subset(arrays, 200, 50)
    assert len(sub.train_labels) == 200 and len(sub.test_labels) == 50
    assert set(sub.train_labels) == set(range(10)) and set(sub.test_labels) == set(range(10))
    assert np.all(np.diff(sub.train_labels) >= 0)  # stored order kept
    again = data.subset(arrays, 200, 50)
    np.testing.assert_array_equal(sub.train_images, again.train_images)  # the same draw every time
    assert data.subset(arrays, 0, 0).train_labels is labels
